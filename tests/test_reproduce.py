"""reproduce.py's bookkeeping: spreads and intervals, claims judged on the right numbers with them, run folders
reused or refused but never overwritten, and the README's results section the only part of the README it rewrites."""
import math
import os

import pytest
import torch

import reproduce
from reproduce import (
    BETWEEN,
    FULL,
    PLAIN,
    POSE,
    POSE3,
    POSE3_64,
    POSE64,
    POSE256,
    POSE_NONE,
    RANDPOS,
    SCALED,
    SCALED64,
    SCALINGS64,
    Est,
    Lc,
    Lt,
    Lt64,
    Lt256,
    key,
)

LENGTHS = [Lc, 2 * Lc, 4 * Lc, Lt]
L64, L256 = list(reproduce.LONG["64x"]), list(reproduce.LONG["256x"])
DISTANCE = {L: {0.0: L - 40, 1.0: 41} for L in LENGTHS}  # depth 0: far back; depth 1: near the question


def seed_eval(ppl, far=0.9, near=1.0, trials=40, lengths=LENGTHS):
    """One evaluation as read_eval returns it: `far` of the keys beyond Lc found, `near` of those inside it."""
    e = {"ppl": dict(zip(lengths, ppl)), "position": [4.0] * 8, "windows": 3}
    if lengths == LENGTHS:  # the long evaluations have no passkeys
        e |= {"trials": trials, "distance": DISTANCE,
              "passkey": {L: {0.0: near if L <= Lc else far, 1.0: near} for L in lengths}}
    return e


def seeds(ppl, far=0.9, n=3, jitter=0.3, lengths=LENGTHS):  # a one-seed run gets as many trials as three seeds
    return [seed_eval([p + jitter * (i - (n - 1) / 2) for p in ppl], far, trials=120 // n, lengths=lengths)
            for i in range(n)]


def plausible(**over):
    """Evaluations in which PoSE does what the paper says, as many seeds as reproduce.py runs; `over` replaces one
    model's."""
    e = {"base": [seed_eval([50, 60, 80, 100], far=0.0, trials=100)],
         PLAIN: seeds([48, 60, 90, 120], far=0.0), POSE_NONE: seeds([47, 48, 55, 60], far=0.1),
         SCALED: seeds([48, 47, 47, 47]), POSE: seeds([47, 46, 45, 44]), BETWEEN: seeds([47, 46, 45, 44.5]),
         POSE3: seeds([47, 46, 45, 44], n=1), RANDPOS: seeds([90, 90, 90, 90], far=0.0, n=1),
         FULL: seeds([46, 44, 43, 42.5], far=0.5, n=1),
         key("base", "64x"): [seed_eval([100, 140, 150, 150], lengths=L64)],
         POSE64: seeds([57, 60, 62, 64], n=7, jitter=0.1, lengths=L64),
         SCALED64: seeds([57, 62, 65, 67], n=7, jitter=0.1, lengths=L64),
         POSE3_64: seeds([57, 60, 62, 64], lengths=L64),
         SCALINGS64[0]: seeds([58, 62, 66, 75], n=1, lengths=L64),   # linear: worse at the far end
         SCALINGS64[1]: seeds([57, 70, 90, 110], n=1, lengths=L64),  # NTK: breaks before the target
         SCALINGS64[2]: seeds([57, 60, 62, 64], n=1, lengths=L64),   # transformers' YaRN
         key("base", "256x"): [seed_eval([150, 160, 170], lengths=L256)],
         POSE256: seeds([70, 72, 75], n=1, lengths=L256)}
    return e | over


def tracks(pose=(60, 52, 50), full=(59, 51, 49)):
    """Figure 3(c)'s evaluations: {run: {step: {length: loss}}} at steps 0, 100, 200."""
    return {n: {st: {Lc: math.log(55), Lt: math.log(v)} for st, v in zip((0, 100, 200), ppl)}
            for n, ppl in ((POSE, pose), (FULL, full))}


MEMS = {POSE: [0.7, 0.7, 0.71], FULL: [2.7]}
N_CLAIMS = 19


def verdicts(evals, mems=MEMS, track=None):
    s = reproduce.summarize(evals, mems)
    return [line.split(" | ")[1] for line in reproduce.checks(s, track or tracks()).splitlines()[2:]]


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
    assert verdicts(plausible()) == ["PASS"] * N_CLAIMS


def bad(name, ppl=None, far=None):
    """One model's evaluations with other perplexities (the same for each seed) or another rate of far keys."""
    out = []
    for r in plausible()[name]:
        lengths = list(r["ppl"])
        keep_far = r["passkey"][Lt][0.0] if "passkey" in r else 0.0
        out.append(seed_eval(ppl or list(r["ppl"].values()), keep_far if far is None else far, lengths=lengths))
    return {name: out}


@pytest.mark.parametrize("over,failing", [
    (bad("base", [50, 55, 60, 70]), {0}),      # degrades by less than 1.5x
    (bad(PLAIN, [48, 50, 55, 60]), {1}),       # plain fine-tuning no longer broken
    (bad(POSE, [47, 46, 45, 46]), {2}),        # 1.08x Full-length
    (bad(POSE, [40, 41, 42, 43]), {3, 12}),    # worse at 8·Lc than at Lc (and now N = 3 is 1.1x above it)
    (bad(RANDPOS, [90, 40, 90, 90]), {4}),     # better than PoSE at one length
    (bad(POSE, far=0.2), {5}),                 # retrieves far less than Full-length
    (bad(BETWEEN, far=0.2), {6}),              # the passkey variant too
    (bad(PLAIN, far=0.6), {7}),                # plain fine-tuning retrieves past Lc
    (bad(POSE64, [57, 60, 62, 80]), {9, 11, 14}),  # 64x: 1.4x its own ppl at 1024, above interpolation and linear
    (bad(POSE3, [47, 46, 45, 50]), {12}),      # N = 3 1.14x N = 2
    (bad(SCALINGS64[1], [57, 58, 59, 60]), {13}),  # fixed NTK holds to the target
    (bad(SCALINGS64[0], [57, 60, 62, 60]), {14}),  # linear better than PoSE-YaRN at the far end
    (bad(POSE256, [70, 80, 100]), {17}),       # 256x: 1.43x its own ppl at 8192
])
def test_each_claim_fails_on_the_numbers_it_is_about(over, failing):
    v = verdicts(plausible(**over))
    assert {i for i, x in enumerate(v) if x == "FAIL"} == failing, v


def test_memory_base_ratio_and_steps_claims():
    assert verdicts(plausible(), MEMS | {POSE: [3.0, 3.1, 3.0]})[8] == "FAIL"
    e = plausible(**{POSE64: seeds([57, 60, 62, 100], n=7, jitter=0.1, lengths=L64)})
    assert verdicts(e)[10] == "FAIL"  # 0.67x the base's: more than 0.6x
    assert verdicts(plausible(), track=tracks(pose=(60, 60, 50)))[16] == "FAIL"  # 1.18x Full-length at step 100
    e = plausible(**{POSE256: seeds([70, 100, 110], n=1, lengths=L256)})
    assert verdicts(e)[18] == "FAIL"  # 0.65x the base's at 32768


def test_seven_seeds_settle_what_three_cannot():
    """The exact permutation test: 7 against 7 fully separated seeds give p = 2 / C(14, 7); 3 against 3 can give no
    less than 0.1, so the 64x claim fails on three seeds however far apart they are."""
    assert reproduce.permutation_p([1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14]) == pytest.approx(2 / 3432)
    assert reproduce.permutation_p([1, 2, 3], [8, 9, 10]) == pytest.approx(0.1)
    assert reproduce.permutation_p([1, 2], [1, 2]) == 1.0
    e = plausible(**{POSE64: seeds([57, 60, 62, 64], n=3, jitter=0.1, lengths=L64),
                     SCALED64: seeds([57, 62, 65, 67], n=3, jitter=0.1, lengths=L64)})
    assert verdicts(e)[11] == "FAIL"
    mixed = plausible(**{SCALED64: seeds([57, 60.2, 62.2, 64.2], n=7, jitter=1.0, lengths=L64)})  # overlapping
    assert verdicts(mixed)[11] == "FAIL"


def test_overlapping_spreads_are_no_difference_not_pass_or_fail():
    # PoSE at 1.05x Full-length to within its spread: neither side of the line
    e = plausible(**{POSE: [seed_eval([47, 46, 45, 42.5 * 1.05 + d]) for d in (-1.5, 0, 1.5)]})
    assert verdicts(e)[2] == "no difference at this size"


def test_a_run_without_some_models_marks_their_claims_not_run():
    e = plausible()
    for name in (FULL, RANDPOS, POSE64, key("base", "64x")):
        del e[name]
    lines = reproduce.checks(reproduce.summarize(e, {POSE: MEMS[POSE]}), None).splitlines()[2:]
    v = [line.split(" | ")[1] for line in lines]
    assert [i for i, x in enumerate(v) if x == "not run"] == [2, 4, 5, 6, 8, 9, 10, 11, 12, 14, 15, 16]
    quick = reproduce.checks(reproduce.summarize(plausible(), MEMS), {}).splitlines()[2:]  # --quick=true tracks none
    assert [line for line in quick if "Figure 3(c)" in line][0].endswith("| not run | no tracked model in this run |")


def test_long_evaluations_read_the_perplexity_at_each_length_off_the_loss_at_every_position(tmp_path):
    """ppl at L = exp(mean loss over positions 0 … L-1): each window's first L tokens scored as a document."""
    import json
    position = [1.0] * 1024 + [2.0] * 1024 + [3.0] * 2048 + [4.0] * 4096
    (tmp_path / "ppl.json").write_text(json.dumps({"models": {"m": {"ppl": {"8192": {"ppl": 1.0}}}}}))
    (tmp_path / "position_loss.json").write_text(json.dumps({"models": {"m": position}, "protocol": {"windows": 10}}))
    r = reproduce.read_eval(str(tmp_path), "64x")
    assert r["ppl"] == pytest.approx({1024: math.e, 2048: math.exp(1.5), 4096: math.exp(2.25), 8192: math.exp(3.125)})


def test_the_two_by_two_text_reads_the_numbers():
    text = reproduce.two_by_two(reproduce.summarize(plausible(), MEMS))
    assert f"**The skip on top of interpolation** ({POSE} against {SCALED}, 3 and 3 seeds; p: exact permutation" in text
    # 44 vs 47, spreads ± 0.3: every seed of one below every seed of the other, yet p = 0.1, the least that 3 seeds
    # against 3 can give, so the test calls it no difference; the 64× pair's 7 seeds a side can settle theirs
    assert "at 1024 no difference at this size (-6.4%), p = 0.1." in text and "at 8192 4.5% lower, p = 0.000583" in text
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


def test_the_clock_sums_the_invocations_that_worked_and_not_those_that_reused(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(reproduce.time, "time", lambda: now[0])
    first = reproduce.Clock(str(tmp_path))  # a run stopped after its training and one evaluation
    first.start("training")
    now[0] += 600
    first.tick()
    first.start("evaluation")
    now[0] += 60
    first.tick()
    second = reproduce.Clock(str(tmp_path))  # resumed: the rest of the evaluations
    second.start("training")
    second.start("evaluation")
    now[0] += 120
    second.tick()
    third = reproduce.Clock(str(tmp_path))  # everything reused: no job, no tick
    assert third.now == {"training": 10.0, "evaluation": 3.0, "invocations": 2}
    assert "135.4 min on this machine (101.8 of them training; summed over the 2 invocations" in reproduce.notes(
        reproduce.ReproConfig(), 135.4, 101.8, 2)
