"""Tests for pose.py: window invariants, the official N = 2 distribution, coverage, and input errors."""
import ast
import itertools
import math
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pose

# Upper 0.001 quantiles of chi-square (standard tables; scipy.stats.chi2.ppf(0.999, dof)).
CHI2_999 = {19: 43.820, 28: 56.892}


@st.composite
def windows(draw):
    Lc = draw(st.integers(1, 48))
    Lt = draw(st.integers(Lc, 6 * Lc + 16))
    method, text = draw(st.sampled_from(pose.METHODS)), draw(st.sampled_from(pose.TEXTS))
    N = draw(st.integers(1, min(Lc, 6)) | st.just(Lc))
    need = Lt if method == "full" or (method == "pose" and text == "aligned") else Lc
    Lx = draw(st.integers(need, need + 7 * Lc))  # sometimes beyond DOC_CAP·Lc, to exercise the cap
    return Lc, Lt, method, N, text, Lx, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(windows())
def test_window_invariants(w):
    Lc, Lt, method, N, text, Lx, seed = w
    doc = 1000 + np.arange(Lx)  # token id = 1000 + offset, so every token shows where it was read
    tokens, pos = pose.sample(doc, Lc, Lt, method, N, text, rng=np.random.default_rng(seed))
    T = Lt if method == "full" else Lc
    assert tokens.dtype == pos.dtype == np.int64 and len(tokens) == len(pos) == T
    assert np.all(np.diff(pos) > 0) and pos[0] >= 0 and pos[-1] <= Lt - 1
    again = pose.sample(doc, Lc, Lt, method, N, text, rng=np.random.default_rng(seed))
    assert np.array_equal(again[0], tokens) and np.array_equal(again[1], pos)

    # the same seed draws the same chunks that sample() built the window from
    ch = pose.draw_window(Lx, Lc, Lt, method, N, text, rng=np.random.default_rng(seed))
    l, st_, u, v = ch.l, ch.st, ch.u, ch.v
    assert l.sum() == T and l.min() >= 1 and np.array_equal(st_, np.cumsum(l) - l)
    assert v[0] == 0 and np.all(np.diff(u) >= 0) and np.all(np.diff(v) >= 0)
    for i in range(len(l)):
        chunk = slice(st_[i], st_[i] + l[i])
        assert np.array_equal(tokens[chunk], doc[st_[i] + v[i]: st_[i] + v[i] + l[i]])
        assert np.array_equal(pos[chunk], np.arange(st_[i] + u[i], st_[i] + u[i] + l[i]))
    if method == "pose":
        assert len(l) == N and pos[0] == 0 and u[0] == 0
        if N == 2:
            assert l[0] <= math.ceil(Lc / 2)
        if text == "skip":
            assert v[-1] <= min(Lx, pose.DOC_CAP * Lc) - Lc  # text comes from the first 5·Lc tokens only
        else:
            assert np.array_equal(v, u if text == "aligned" else 0 * u)
    else:
        assert np.array_equal(tokens, doc[:T])  # the baselines read the document's first tokens
        if method != "randpos":
            assert np.array_equal(pos, np.arange(T))


def test_worked_example():
    ch = pose.Chunks(l=np.array([512, 1536]), st=np.array([0, 512]), u=np.array([0, 2048]), v=np.array([0, 100]))
    pos, idx = pose.window_indices(ch)
    assert np.array_equal(pos, np.r_[0:512, 2560:4096])
    assert np.array_equal(idx, np.r_[0:512, 612:2148])


def test_one_chunk_is_plain():
    doc, Lc, Lt = np.arange(100), 16, 64
    got = pose.sample(doc, Lc, Lt, "pose", 1, rng=np.random.default_rng(0))
    want = pose.sample(doc, Lc, Lt, "plain", rng=np.random.default_rng(0))
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def chi2(values, support):
    """Pearson statistic of the counts of `values` (non-negative ints) against uniform over range(support);
    infinite if a value falls outside."""
    if values.min() < 0 or values.max() >= support:
        return math.inf
    expected = len(values) / support
    return ((np.bincount(values, minlength=support) - expected) ** 2 / expected).sum()


def test_official_two_chunk_distribution():
    # odd Lc: ⌈Lc/2⌉ = 4 differs from ⌊Lc/2⌋ = 3; (l0, u1) ∈ {1…4} × {0…4}: 20 cells, 19 dof
    Lc, Lt, Lx, n = 7, 11, 100, 20_000
    L, U = math.ceil(Lc / 2), Lt - Lc + 1

    def pairs(l0, u1):  # (l0, u1) -> one cell index; out of the grid -> outside range(L·U)
        return np.where((l0 >= 1) & (l0 <= L) & (u1 >= 0) & (u1 < U), (l0 - 1) * U + u1, L * U)

    rng = np.random.default_rng(0)
    l0, u1, v1 = np.array([[(ch := pose.pose_window(Lx, Lc, Lt, rng=rng)).l[0], ch.u[1], ch.v[1]]
                           for _ in range(n)]).T
    assert chi2(pairs(l0, u1), L * U) < CHI2_999[19]
    # text skip v1 ~ U{0 … 5·Lc − Lc}: the document (100 tokens) is capped at 35, so 29 values, 28 dof
    assert chi2(v1, pose.DOC_CAP * Lc - Lc + 1) < CHI2_999[28]

    # the test has teeth: the same statistic rejects samplers that break the official rule
    rng = np.random.default_rng(1)
    l0, u1 = rng.integers(1, L + 1, n), rng.integers(0, U, n)
    assert chi2(pairs(l0, u1), L * U) < CHI2_999[19]  # a correct independent draw passes
    assert chi2(pairs(rng.integers(1, Lc, n), u1), L * U) > CHI2_999[19]  # l0 reaches Lc − 1
    assert chi2(pairs(l0, rng.integers(1, U, n)), L * U) > CHI2_999[19]  # u1 ~ U{1 …}: never 0
    assert chi2(pairs(rng.integers(1, Lc // 2 + 1, n), u1), L * U) > CHI2_999[19]  # ⌊Lc/2⌋ cap
    assert chi2(rng.integers(0, Lx - Lc + 1, n), pose.DOC_CAP * Lc - Lc + 1) > CHI2_999[28]  # no cap


def exact_relative(position_sets, Lt):
    """Exact coverage over equally likely position sets, by listing every pair's distance."""
    hits = np.zeros(Lt)
    for p in position_sets:
        hits[np.unique(np.subtract.outer(p, p).ravel().clip(0))] += 1  # clip: keep query ≥ key only
    return hits / len(position_sets)


def test_coverage_matches_exact_enumeration():
    Lc, Lt, n = 6, 16, 20_000  # 5 standard errors of a proportion at n = 20k is at most 0.018
    pose_sets = [np.r_[0:l0, l0 + u1:Lc + u1] for l0 in range(1, Lc // 2 + 1) for u1 in range(Lt - Lc + 1)]
    randpos_sets = [np.array(p) for p in itertools.combinations(range(Lt), Lc)]
    for method, sets in [("pose", pose_sets), ("randpos", randpos_sets), ("plain", [np.arange(Lc)])]:
        relative, absolute = pose.coverage(method, Lc, Lt, n_samples=n, rng=np.random.default_rng(0))
        assert np.abs(relative - exact_relative(sets, Lt)).max() < 0.018, method
        exact_absolute = np.mean([np.isin(np.arange(Lt), p) for p in sets], axis=0)
        assert np.abs(absolute - exact_absolute).max() < 0.018, method


def test_coverage_2k_to_16k():
    Lc, Lt, n = 2048, 16384, 2000
    cov = {(m, N): pose.coverage(m, Lc, Lt, N, n, rng=np.random.default_rng(0))
           for m, N in [("plain", 1), ("pose", 2), ("pose", 3), ("randpos", 2)]}
    plain, plain_abs = cov["plain", 1]
    assert np.all(plain[:Lc] == 1) and np.all(plain[Lc:] == 0) and np.array_equal(plain_abs, plain)
    for relative, absolute in cov.values():
        assert relative[0] == 1 and math.isclose(absolute.sum(), Lc)  # every window holds Lc positions

    randpos = cov["randpos", 2][0]
    # ≥ 0.9 except in the last ~150 distances: distance d has Lt − d candidate pairs, each present with
    # probability ≈ (Lc/Lt)², so P(d missing) ≈ exp(−(Lt − d)/64) — and d = Lt − 1 needs both 0 and Lt − 1
    assert randpos[: Lt - 256].min() >= 0.9
    assert abs(randpos[Lt - 1] - Lc * (Lc - 1) / (Lt * (Lt - 1))) < 0.011  # 4 standard errors at n = 2000

    # PoSE N = 2: cross-chunk distances are [u1 + 1, u1 + Lc − 1], so P = (Lc − 1)/(Lt − Lc + 1) on [Lc, Lt − Lc]
    two, three = cov["pose", 2][0], cov["pose", 3][0]
    assert abs(two[Lc: Lt - Lc].mean() - (Lc - 1) / (Lt - Lc + 1)) < 0.005
    # compared in blocks of 256 distances: near Lt − 1 both are ~1e-4 and single-d estimates are noise
    two_blocks, three_blocks = (c[Lc:].reshape(-1, 256).mean(axis=1) for c in (two, three))
    assert np.all(three_blocks >= two_blocks)
    assert three[Lc // 2] < two[Lc // 2] - 0.1  # the price of more chunks: less of [0, Lc)


@pytest.mark.parametrize("args, kwargs, message", [
    ((np.arange(64), 16, 15), {}, "Lt=15 is shorter than Lc=16"),
    ((np.arange(64), 16, 64), {"num_chunks": 0}, "num_chunks"),
    ((np.arange(64), 16, 64), {"num_chunks": 17}, "num_chunks"),
    ((np.arange(10), 16, 64), {}, "needs at least 16"),
    ((np.arange(32), 16, 64), {"method": "full"}, "needs at least 64"),
    ((np.arange(32), 16, 64), {"text": "aligned"}, "needs at least 64"),
    ((np.arange(64), 16, 64), {"method": "yarn"}, "unknown method"),
    ((np.arange(64), 16, 64), {"text": "same"}, "unknown text option"),
])
def test_bad_inputs(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pose.sample(*args, **kwargs, rng=np.random.default_rng(0))


def test_the_readmes_map_of_the_core_names_real_functions_and_their_lengths():
    """README.md's "The core in N lines": every `file: function` is there, with the line count the table says, and N
    is their sum."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        readme = f.read()
    rows = re.findall(r"^\| `(\w+\.py): ([\w.]+)` \| (\d+) \|", readme, flags=re.M)
    assert len(rows) >= 10
    for file, name, lines in rows:
        with open(os.path.join(root, file)) as f:
            nodes = {n.name: n for n in ast.parse(f.read()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        outer, _, inner = name.partition(".")
        node = nodes[outer] if not inner else next(m for m in nodes[outer].body if getattr(m, "name", "") == inner)
        assert node.end_lineno - node.lineno + 1 == int(lines), (file, name)
    assert f"### The core in {sum(int(n) for _, _, n in rows)} lines" in readme


def test_the_walkthrough_runs_one_window_through_the_extended_model(capsys, one_thread):
    """walkthrough.py: its window is pose_window's (seed 0), the model is extended by s = Lt / L0, and the distances it
    reports are those of the window's own positions."""
    import walkthrough
    walkthrough.walk(walkthrough.Walk(Lc=32, Lt=512))
    out = capsys.readouterr().out
    ch = pose.pose_window(5 * 32, 32, 512, N=2, rng=np.random.default_rng(0))
    pos = pose.window_indices(ch)[0][:-1]
    d = pos[:, None] - pos[None, :]
    seen = np.unique(d[d >= 0])
    assert pose.describe(ch, 512) in out and "s = Lt / L0 = 4:" in out
    assert f"distances trained: {len(seen)} of the 512 in [0, Lt); {(seen >= 32).sum()} of them at or beyond Lc" in out
