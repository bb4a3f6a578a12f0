"""reproduce.py's bookkeeping: spreads and intervals, claims judged on the right numbers with them, run folders
reused or refused but never overwritten, and the README's results section the only part of the README it rewrites."""
import math
import os

import pytest
import torch

import reproduce
from reproduce import (
    FULL,
    PLAIN,
    POSE,
    POSE64,
    POSE_NONE,
    RANDPOS,
    SCALED,
    Est,
    Lc,
    Lt,
    Lt64,
)

LENGTHS = [Lc, 2 * Lc, 4 * Lc, Lt]
DISTANCE = {L: {0.0: L - 40, 1.0: 41} for L in LENGTHS}  # depth 0: far back; depth 1: near the question


def seed_eval(ppl, far=0.9, near=1.0, trials=40, lengths=LENGTHS):
    """One evaluation as read_eval returns it: `far` of the keys beyond Lc found, `near` of those inside it."""
    e = {"ppl": dict(zip(lengths, ppl)), "position": [4.0] * 8, "windows": 3}
    if lengths == LENGTHS:  # the 64·Lc evaluation has no passkeys
        e |= {"trials": trials, "distance": DISTANCE,
              "passkey": {L: {0.0: near if L <= Lc else far, 1.0: near} for L in lengths}}
    return e


def plausible(**over):
    """Evaluations in which PoSE does what the paper says, three seeds where reproduce.py runs three; `over`
    replaces one model's."""
    def seeds(ppl, far=0.9, n=3, jitter=0.3):  # a one-seed run gets as many trials as three seeds
        return [seed_eval([p + jitter * (i - (n - 1) / 2) for p in ppl], far, trials=120 // n) for i in range(n)]
    e = {"base": [seed_eval([50, 60, 80, 100], far=0.0, trials=100)],
         PLAIN: seeds([48, 60, 90, 120], far=0.0), POSE_NONE: seeds([47, 48, 55, 60], far=0.1),
         SCALED: seeds([48, 47, 47, 47]), POSE: seeds([47, 46, 45, 44]),
         RANDPOS: seeds([90, 90, 90, 90], far=0.0, n=1), FULL: seeds([46, 44, 43, 42.5], far=0.5, n=1),
         "base64": [seed_eval([100, 140, 150, 150], lengths=[Lt, 2 * Lt, 4 * Lt, Lt64])],
         POSE64: [seed_eval([57 + i, 60, 62, 64], lengths=[Lt, 2 * Lt, 4 * Lt, Lt64]) for i in range(3)]}
    return e | over


MEMS = {POSE: [0.7, 0.7, 0.71], FULL: [2.7]}


def verdicts(evals, mems=MEMS):
    return [line.split(" | ")[1] for line in reproduce.checks(reproduce.summarize(evals, mems)).splitlines()[2:]]


def test_spreads_and_intervals():
    e = reproduce.over_seeds([1.0, 2.0, 3.0])
    assert (e.mean, e.low, e.high, e.n) == (2.0, 1.0, 3.0, 3)
    one = reproduce.over_seeds([10.0], rel_sd=0.02)
    assert one.assumed and math.isclose(one.low, 9.8) and math.isclose(one.high, 10.2)
    w = reproduce.wilson(0, 50)
    assert w.mean == 0 and w.low == 0 and 0.07 < w.high < 0.072  # the rule of three's neighbour: 7.1%
    w = reproduce.wilson(25, 50)
    assert 0.36 < w.low < 0.37 and 0.63 < w.high < 0.64


def test_verdicts_call_an_overlap_no_difference():
    assert reproduce.verdict(Est(10, 9, 11), Est(20, 19, 21)) == "PASS"
    assert reproduce.verdict(Est(20, 19, 21), Est(10, 9, 11)) == "FAIL"
    assert reproduce.verdict(Est(10, 9, 11), Est(10.5, 9.5, 11.5)) == "no difference at this size"
    assert reproduce.verdict(Est(10, 9, 11), 10.0, factor=1.05) == "no difference at this size"  # 9 < 10.5 < 11
    assert "no difference at this size" in reproduce.compare(Est(10, 9, 11), Est(10.5, 9.5, 11.5))
    assert reproduce.compare(Est(10, 9.9, 10.1), Est(20, 19.9, 20.1)) == "50.0% lower"


def test_passkey_is_pooled_over_seeds_on_keys_beyond_lc_only():
    s = reproduce.summarize(plausible(), MEMS)
    far = s[POSE]["passkey"][Lt]
    assert far.n == 3 * 20 and far.mean == pytest.approx(0.9)  # only depth 0 is beyond Lc: 20 of 40 trials a seed
    assert s[POSE]["passkey"][Lc].n == 3 * 40 and s[POSE]["passkey"][Lc].mean == 1.0  # inside the window: all


def test_one_seed_rows_take_the_seeded_runs_typical_spread():
    s = reproduce.summarize(plausible(), MEMS)
    assert s[FULL]["ppl"][Lt].assumed and s[FULL]["ppl"][Lt].high > s[FULL]["ppl"][Lt].mean
    assert not s["base"]["ppl"][Lt].assumed and s["base"]["ppl"][Lt].high == s["base"]["ppl"][Lt].mean  # no seeds


def test_every_claim_passes_on_a_result_that_shows_it():
    assert verdicts(plausible()) == ["PASS"] * 10


def bad(name, ppl=None, far=None):
    """One model's evaluations with other perplexities (the same for each seed) or another rate of far keys."""
    out = []
    for r in plausible()[name]:
        lengths = list(r["ppl"])
        keep_far = r["passkey"][Lt][0.0] if "passkey" in r else 0.0
        out.append(seed_eval(ppl or list(r["ppl"].values()), keep_far if far is None else far, lengths=lengths))
    return {name: out}


@pytest.mark.parametrize("over,failing", [
    (bad("base", [50, 55, 60, 70]), 0),      # degrades by less than 1.5x
    (bad(PLAIN, [48, 50, 55, 60]), 1),       # plain fine-tuning no longer broken
    (bad(POSE, [47, 46, 45, 46]), 2),        # 1.08x Full-length
    (bad(POSE, [40, 41, 42, 43]), 3),        # worse at 8·Lc than at Lc
    (bad(RANDPOS, [90, 40, 90, 90]), 4),     # better than PoSE at one length
    (bad(POSE, far=0.2), 5),                 # retrieves far less than Full-length
    (bad(PLAIN, far=0.6), 6),                # plain fine-tuning retrieves past Lc
    (bad(POSE64, [57, 60, 62, 80]), 8),      # 64x: 1.4x its own ppl at 1024
])
def test_each_claim_fails_on_the_numbers_it_is_about(over, failing):
    v = verdicts(plausible(**over))
    assert v[failing] == "FAIL" and v.count("FAIL") == 1, v


def test_memory_and_the_base_ratio_claims():
    assert verdicts(plausible(), MEMS | {POSE: [3.0, 3.1, 3.0]})[7] == "FAIL"
    e = plausible(**{POSE64: [seed_eval([57, 60, 62, 100 + i], lengths=[Lt, 2 * Lt, 4 * Lt, Lt64]) for i in range(3)]})
    assert verdicts(e)[9] == "FAIL"  # 0.67x the base's: more than 0.6x


def test_overlapping_spreads_are_no_difference_not_pass_or_fail():
    # PoSE at 1.05x Full-length to within its spread: neither side of the line
    e = plausible(**{POSE: [seed_eval([47, 46, 45, 42.5 * 1.05 + d]) for d in (-1.5, 0, 1.5)]})
    assert verdicts(e)[2] == "no difference at this size"


def test_a_run_without_some_models_marks_their_claims_not_run():
    e = plausible()
    for name in (FULL, RANDPOS, POSE64, "base64"):
        del e[name]
    v = verdicts(e, {POSE: MEMS[POSE]})
    assert [i for i, x in enumerate(v) if x == "not run"] == [2, 4, 5, 7, 8, 9]


def test_the_two_by_two_text_reads_the_numbers():
    text = reproduce.two_by_two(reproduce.summarize(plausible(), MEMS))
    assert f"**The skip on top of interpolation** ({POSE} against {SCALED})" in text
    assert "at 1024 6.4% lower" in text and "at 128 2.1% lower" in text  # 44 vs 47, 47 vs 48, spreads ± 0.3
    close = plausible(**{POSE: [seed_eval([47.8 + d, 46, 45, 44]) for d in (-1, 0, 1)]})
    assert "at 128 no difference at this size (-0.4%)" in reproduce.two_by_two(reproduce.summarize(close, MEMS))


def test_the_readme_changes_only_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{reproduce.MARKS[0]}\nold numbers\n{reproduce.MARKS[1]}\nnotes\n")
    reproduce.write_readme(readme, "new numbers\n")
    assert readme.read_text() == f"intro\n{reproduce.MARKS[0]}\nnew numbers\n{reproduce.MARKS[1]}\nnotes\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- results"):
        reproduce.write_readme(readme, "x")


def test_a_run_folder_with_other_settings_is_refused_never_overwritten(tmp_path):
    cfg = reproduce.ReproConfig(steps=2)
    run, out = reproduce.RUNS[0], str(tmp_path / "run")
    assert reproduce.run_state(out, reproduce.train_args(cfg, run, 1337, out)) == "new"
    os.makedirs(out)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files of another run"):
        reproduce.run_state(out, reproduce.train_args(cfg, run, 1337, out))
    other = str(tmp_path / "other")  # a checkpoint of the same run with another seed
    os.makedirs(os.path.join(other, "ckpt_0000002"))
    args = reproduce.train_args(cfg, run, 1337, other)
    config = vars(reproduce.parse_config(reproduce.TrainConfig, ["configs/tiny_pose.toml"]
                                         + [f"--{k}={v}" for k, v in args.items()]))
    torch.save({"config": config | {"seed": 7}, "step": 2}, os.path.join(other, "ckpt_0000002", "train_state.pt"))
    (tmp_path / "other" / "latest").write_text("ckpt_0000002")
    with pytest.raises(ValueError, match=r"holds a run with other settings \(seed\)"):
        reproduce.run_state(other, args)
    torch.save({"config": config, "step": 1}, os.path.join(other, "ckpt_0000002", "train_state.pt"))
    assert reproduce.run_state(other, args) == "resume"  # the same run, cut short: continued, not redone
