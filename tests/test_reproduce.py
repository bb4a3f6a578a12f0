"""reproduce.py's bookkeeping: the claims are judged on the right numbers, and the README's results section is the
only part of the README it rewrites."""
import pytest

import reproduce

Lc, Lt = reproduce.Lc, reproduce.Lt


def summary(**over):
    """A plausible result: the base breaks past Lc, PoSE extends it, and so on; `over` changes one model."""
    lengths = [Lc, 2 * Lc, 4 * Lc, Lt]
    flat = {L: 0.0 for L in lengths[1:]}
    s = {"base": ([50, 60, 80, 100], flat), "plain": ([48, 60, 90, 120], flat),
         "pose": ([47, 46, 45, 44], {L: 0.95 for L in lengths[1:]}), "randpos": ([90, 90, 90, 90], flat),
         "full": ([46, 44, 43, 42], {L: 1.0 for L in lengths[1:]})}
    s |= over
    return {n: {"ppl": dict(zip(lengths, p)), "beyond": {Lc: None} | far} for n, (p, far) in s.items()}


COSTS = {"pose": {"tok_s": 5000, "mem_gib": 0.7}, "full": {"tok_s": 4000, "mem_gib": 2.7}}


def verdicts(s, costs=COSTS):
    return [line.split(" | ")[1] for line in reproduce.checks(s, costs).splitlines()[2:]]


def test_every_claim_passes_on_a_result_that_shows_it():
    assert verdicts(summary()) == ["PASS"] * 8


@pytest.mark.parametrize("over,failing", [
    ({"base": ([50, 55, 60, 70], {L: 0.0 for L in (256, 512, 1024)})}, 0),    # degrades by less than 1.5x
    ({"pose": ([47, 46, 45, 44.2 * 1.06], {L: 0.95 for L in (256, 512, 1024)})}, 2),  # 1.06x Full-length
    ({"pose": ([40, 41, 42, 43], {L: 0.95 for L in (256, 512, 1024)})}, 3),  # worse at 8·Lc than at Lc
    ({"randpos": ([90, 40, 90, 90], {L: 0.0 for L in (256, 512, 1024)})}, 4),  # better than PoSE at one length
    ({"pose": ([47, 46, 45, 44], {256: 1.0, 512: 1.0, 1024: 0.85})}, 5),  # retrieval at 8·Lc only
    ({"plain": ([48, 60, 90, 120], {256: 0.0, 512: 0.0, 1024: 0.2})}, 6),
])
def test_each_claim_fails_on_the_numbers_it_is_about(over, failing):
    v = verdicts(summary(**over))
    assert v[failing] == "FAIL" and v.count("FAIL") == 1, v


def test_memory_claim():
    assert verdicts(summary(), COSTS | {"pose": {"tok_s": 1, "mem_gib": 3.0}})[7] == "FAIL"


def test_the_readme_changes_only_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{reproduce.MARKS[0]}\nold numbers\n{reproduce.MARKS[1]}\nnotes\n")
    reproduce.write_readme(readme, "new numbers\n")
    assert readme.read_text() == f"intro\n{reproduce.MARKS[0]}\nnew numbers\n{reproduce.MARKS[1]}\nnotes\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- results"):
        reproduce.write_readme(readme, "x")


def test_a_run_without_full_length_marks_its_claims_not_run():
    s = summary()
    del s["full"]
    v = verdicts(s, {"pose": COSTS["pose"]})
    assert v[2] == v[7] == "not run" and v.count("not run") == 2 and v.count("PASS") == 6
