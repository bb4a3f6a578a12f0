"""pose.py: PoSE's training windows (and the baselines'), one example at a time, and which positions they teach.

PoSE (Positional Skip-wise training, Zhu et al., ICLR 2024, §3.2) fine-tunes a model pretrained on L0-token windows
to work at a target length Lt while every training example stays Lc tokens long (in the paper Lc = L0): it moves
position ids instead of feeding longer text. Split the window into N chunks c_0 … c_{N-1} of lengths l_i
(Σ l_i = Lc) that start at st_i = Σ_{j<i} l_j inside the window. Chunk i gets

    positions  st_i + u_i + j,  j = 0 … l_i − 1      u_0 = 0,  u_i ~ U{u_{i-1} … Lt − Lc}
    text       x[v_i + st_i : v_i + st_i + l_i]       v_0 = 0,  v_i ~ U{v_{i-1} … Lx − Lc}

so positions only increase, the largest is at most Lt − 1, and the distances between query and key range over
[0, Lt), not just [0, Lc). l_i, u_i, v_i are redrawn for every example. RoPE interpolation with factor s = Lt / L0
(L0 the model's pretraining length, not Lc: model.LLaMA.extend_context) is applied in the model; the positions here
are raw integers in [0, Lt).

Worked example, 2k → 4k (Lc = 2048, Lt = 4096), N = 2: l_0 = 512, l_1 = 1536, u_1 = 2048 gives positions
[0, 511] ∪ [2560, 4095]. Chunk 1 reads x[v_1 + 512 : v_1 + 2048], and attention between its last token
and the first one spans 4095 positions although the window holds only 2048 tokens.

N = 2 is exactly the authors' training code: the document is first cut to 5·Lc tokens (so Lx ≤ 5·Lc),
l_0 ~ U{1 … ⌈Lc/2⌉}, u_1 ~ U{0 … Lt − Lc}, v_1 ~ U{0 … Lx − Lc}. For N ≥ 3 the paper leaves the lengths
open; here the window is cut at N − 1 distinct points drawn uniformly from {1 … Lc − 1}.

Every method is a list of chunks (l_i, st_i, u_i, v_i), so one code path builds all windows:
    pose     the above with N = num_chunks (default 2)
    randpos  Lc sorted distinct positions from [0, Lt) on the first Lc tokens: Lc chunks of one token
    full     the first Lt tokens at positions 0 … Lt − 1 (the costly baseline PoSE stands in for)
    plain    the first Lc tokens at positions 0 … Lc − 1; with RoPE interpolation this is the paper's
             N = 1, "position interpolation only" (pose with num_chunks=1 draws the same window)
Text options, pose only (the baselines read the document's first tokens, as the official code does):
"skip" (v_i sampled, the default), "contiguous" (v_i = 0), "aligned" (v_i = u_i: every token sits at its
true offset, so the document must hold Lt tokens). The paper's ablation finds all three about equal.

Loss convention: sample() returns the window's T tokens and T positions (T = Lc, or Lt for full); the
caller trains on input = tokens[:-1], pos = pos[:-1], targets = tokens[1:], as the official code does
(labels = input ids, shifted inside the model). The last token has no target, and the first token of a
chunk is predicted from the end of the previous one, across the jump.

Coverage (paper Appendix B): coverage() estimates by Monte Carlo, for every relative distance d ∈ [0, Lt),
the probability that some query ≥ key pair of one example is d apart, and for every absolute position the
probability that it occurs. Distance d occurs iff the example's 0/1 position indicator overlaps itself
shifted by d, so a batch of examples is one FFT autocorrelation (numpy, float32: the counts are integers
≤ Lt and the rounding error is far below the 0.5 threshold, so the per-example answer is exact).
"""
import math
import os
from dataclasses import dataclass

import numpy as np

DOC_CAP = 5  # the official code truncates documents to DOC_CAP·Lc tokens, which bounds the text skip v_i
MAX_LT = 2**24  # the longest context: model.py's RoPE turns positions into float32, exact for integers up to 2^24
METHODS = ("pose", "randpos", "full", "plain")
TEXTS = ("skip", "contiguous", "aligned")


@dataclass
class Chunks:
    """One window's chunks c_0 … c_{N-1}; every field an int64 array of N entries."""
    l: np.ndarray   # l_i: chunk lengths, summing to the window length
    st: np.ndarray  # st_i: where chunk i starts inside the window
    u: np.ndarray   # u_i: position skip, chunk i holds positions st_i + u_i …
    v: np.ndarray   # v_i: text skip, chunk i reads x[st_i + v_i …]


def pose_window(Lx, Lc, Lt, N=2, text="skip", *, rng):
    """The chunks of one PoSE training window cut from a document x of Lx tokens: §3.2 of the paper."""
    cuts = []                                           # where chunks 1 … N-1 start inside the window
    if N == 2:                                          # the official rule: the first chunk is at most half the window
        cuts = [rng.integers(1, math.ceil(Lc / 2) + 1)]
    elif N > 2:                                         # N - 1 distinct points of {1 … Lc-1}, uniformly
        cuts = 1 + np.sort(np.argsort(rng.random(Lc - 1))[:N - 1])
    st = np.array([0, *cuts], dtype=np.int64)           # st_i, the start of chunk i inside the window
    l = np.diff([*st, Lc])                              # l_i, the chunk lengths: Σ l_i = Lc
    u, v = np.zeros(N, np.int64), np.zeros(N, np.int64)  # u_0 = v_0 = 0
    for i in range(1, N):                               # u_i ~ U{u_{i-1} … Lt - Lc}: positions only move forward
        u[i] = rng.integers(u[i - 1], Lt - Lc + 1)
    for i in range(1, N):                               # v_i ~ U{v_{i-1} … Lx - Lc}, Lx capped at 5·Lc
        if text == "skip":
            v[i] = rng.integers(v[i - 1], min(Lx, DOC_CAP * Lc) - Lc + 1)
        elif text == "aligned":                         # every token at its true offset
            v[i] = u[i]
    return Chunks(l=l, st=st, u=u, v=v)


def baseline_window(method, Lc, Lt, *, rng):
    """The baselines' windows as chunks; each reads the document's first tokens."""
    if method == "randpos":  # Lc distinct positions of [0, Lt), sorted (the Lc smallest of Lt random keys): Lc
        p = np.sort(np.argsort(rng.random(Lt))[:Lc])  # one-token chunks, token k at position k + u_k = p_k
        return Chunks(l=np.ones(Lc, np.int64), st=np.arange(Lc), u=p - np.arange(Lc), v=np.zeros(Lc, np.int64))
    T = window_len(method, Lc, Lt)  # full: the first Lt tokens; plain: the first Lc, at positions 0 … T-1
    return Chunks(l=np.array([T]), st=np.zeros(1, np.int64), u=np.zeros(1, np.int64), v=np.zeros(1, np.int64))


def window_indices(ch):
    """(pos, idx), int64 arrays of the window's length: token k of the window, the j-th of chunk i (k = st_i + j),
    sits at position k + u_i and is x[k + v_i]."""
    i = np.repeat(np.arange(len(ch.l)), ch.l)  # the chunk of each token
    k = np.arange(len(i))
    return k + ch.u[i], k + ch.v[i]


def draw_window(Lx, Lc, Lt, method="pose", num_chunks=2, text="skip", *, rng):
    """The chunks of one window of `method` over a document of Lx tokens."""
    check(Lc, Lt, method, num_chunks, text)
    if Lx < doc_len(method, Lc, Lt, text):
        raise ValueError(f"document has {Lx} tokens; method={method!r} text={text!r} needs at least "
                         f"{doc_len(method, Lc, Lt, text)}")
    if method == "pose":
        return pose_window(Lx, Lc, Lt, num_chunks, text, rng=rng)
    return baseline_window(method, Lc, Lt, rng=rng)


def sample(doc, Lc, Lt, method="pose", num_chunks=2, text="skip", *, rng):
    """One training window from `doc` (token ids): (tokens, pos), int64 arrays of length T = window_len(...).

    Train on input = tokens[:-1], pos = pos[:-1], targets = tokens[1:]."""
    pos, idx = window_indices(draw_window(len(doc), Lc, Lt, method, num_chunks, text, rng=rng))
    return np.asarray(doc, dtype=np.int64)[idx], pos


# ----------------------------------------------------------------------------- what a method needs
def window_len(method, Lc, Lt):
    """Tokens in one training window: Lt for Full-length, Lc for every other method."""
    return Lt if method == "full" else Lc


def doc_len(method, Lc, Lt, text="skip"):
    """Tokens a document must hold for one window: the window's, or Lt for PoSE with aligned text (v_i = u_i)."""
    return Lt if method == "pose" and text == "aligned" else window_len(method, Lc, Lt)


def read_len(method, Lc, Lt, text="skip"):
    """Tokens a window may read from the start of its document: PoSE's text skip reaches 5·Lc (the official cap)."""
    return max(DOC_CAP * Lc, doc_len(method, Lc, Lt, text)) if method == "pose" else window_len(method, Lc, Lt)


def check(Lc, Lt, method, num_chunks, text):
    """A ValueError naming the first option that makes no window."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if text not in TEXTS:
        raise ValueError(f"unknown text option {text!r}; expected one of {', '.join(TEXTS)}")
    if Lc < 1:
        raise ValueError(f"Lc={Lc}: the training window must hold at least one token")
    if Lt < Lc:
        raise ValueError(f"Lt={Lt} is shorter than Lc={Lc}")
    if Lt > MAX_LT:
        raise ValueError(f"Lt={Lt}: expected at most 2^24 = {MAX_LT} (RoPE computes with float32 positions, exact "
                         "only that far)")
    if not 1 <= num_chunks <= Lc:
        raise ValueError(f"num_chunks={num_chunks} must be between 1 and Lc={Lc}")


# ----------------------------------------------------------------------------- coverage
def coverage(method, Lc, Lt, num_chunks=2, n_samples=10_000, *, rng, batch=100):
    """Monte Carlo over n_samples windows -> (relative, absolute), float64 arrays of length Lt:
    relative[d] = P(some query ≥ key pair of one window is d apart), absolute[p] = P(position p occurs)."""
    relative, absolute = np.zeros(Lt), np.zeros(Lt)
    for done in range(0, n_samples, batch):
        hit = np.zeros((min(batch, n_samples - done), Lt), np.float32)  # row b: 1 where window b has a position
        for row in hit:
            row[window_indices(draw_window(Lt, Lc, Lt, method, num_chunks, rng=rng))[0]] = 1.0
        f = np.fft.rfft(hit, n=2 * Lt)  # padding to 2·Lt stops the circular correlation from wrapping
        pairs = np.fft.irfft(f.real ** 2 + f.imag ** 2, n=2 * Lt)[:, :Lt]  # pairs[b, d]: #(q, k) with q − k = d
        relative += (pairs > 0.5).sum(axis=0)
        absolute += hit.sum(axis=0)
    return relative / n_samples, absolute / n_samples


def describe(ch, Lt, width=64):
    """Figure 1 as text: a window's chunks, their positions and skips, and a bar of [0, Lt)."""
    l, st, u, v = ch.l, ch.st, ch.u, ch.v
    lines = [f"  {'':4}{'l_i':>6}{'st_i':>7}{'u_i':>7}{'v_i':>7}   {'text':<18}positions"]
    for i in range(min(len(l), 4)):  # RandPos has Lc one-token chunks; the first few tell the story
        text = f"x[{st[i] + v[i]}:{st[i] + v[i] + l[i]}]"
        lines.append(f"  c_{i:<2}{l[i]:>6}{st[i]:>7}{u[i]:>7}{v[i]:>7}   {text:<18}"
                     f"[{st[i] + u[i]}, {st[i] + u[i] + l[i] - 1}]")
    if len(l) > 4:
        lines.append(f"  … {len(l) - 4} more chunks")
    bar = np.full(width, "·")
    bar[window_indices(ch)[0] * width // Lt] = "█"  # one cell per Lt/width positions
    return "\n".join(lines + [f"  0 {''.join(bar)} {Lt - 1}"])


@dataclass
class CoverageDemo:
    """python pose.py: the worked example, a few drawn windows, and the coverage figure: the paper's 2k -> 16k beside
    the tiny run's own 128 -> 1024, with the numbers the README quotes.

    python pose.py --n_samples=2000 --out=/tmp/coverage.png"""
    Lc: int = 2048            # the training window of the first panel
    Lt: int = 16384           # ... and its target length
    tiny: str = "128,1024"    # Lc,Lt of a second panel (the tiny run's own); "": none
    n_samples: int = 10_000   # windows per curve
    out: str = "plots/coverage.png"  # where the figure goes

    def settings(self):
        """[(Lc, Lt)] of each panel."""
        from config import int_list
        return [(self.Lc, self.Lt)] + ([tuple(int_list("tiny", self.tiny))] if self.tiny else [])

    def check(self):
        from matplotlib.backend_bases import FigureCanvasBase

        from config import int_list, positive, writable
        if self.tiny and len(int_list("tiny", self.tiny)) != 2:
            raise ValueError(f"--tiny={self.tiny}: expected Lc,Lt or nothing")
        for Lc, Lt in self.settings():
            check(Lc, Lt, "pose", 1, "skip")
            if Lc < 3:
                raise ValueError(f"--Lc={Lc}: expected 3 or more (the demo draws PoSE windows of 3 chunks)")
        positive(self, "n_samples")
        formats = FigureCanvasBase.get_supported_filetypes()  # checked now, not after the Monte Carlo
        if os.path.splitext(self.out)[1][1:].lower() not in formats:
            raise ValueError(f"--out={self.out}: expected a file name ending in .{', .'.join(formats)}")
        writable(self, "out", file=True)


def coverage_curves(Lc, Lt, n_samples):
    """{label: relative-position coverage} of RandPos, plain windows and PoSE with N = 2 and 3, each from seed 0."""
    methods = {"RandPos": ("randpos", 2), "plain windows (N = 1)": ("plain", 1),  # RandPos first: plain, drawn
               "PoSE N = 2": ("pose", 2), "PoSE N = 3": ("pose", 3)}               # over it, stays visible
    return {label: coverage(method, Lc, Lt, N, n_samples, rng=np.random.default_rng(0))[0]
            for label, (method, N) in methods.items()}


def compare_chunks(curves, Lc, Lt):
    """What the README says of N = 3 against N = 2, read off the curves."""
    two, three = curves["PoSE N = 2"], curves["PoSE N = 3"]
    below = np.flatnonzero(three[:Lc] < two[:Lc])
    return (f"N = 3 covers [Lc, Lt) {three[Lc:].mean() / two[Lc:].mean():.2f}× as often as N = 2 on average "
            f"({three[Lc]:.3f} vs {two[Lc]:.3f} at Lc = {Lc}, {three[Lt // 2]:.3f} vs {two[Lt // 2]:.3f} at Lt / 2), "
            f"and less inside the window: below N = 2 for d = {below.min()} … {below.max()} "
            f"({three[Lc // 2]:.4f} vs {two[Lc // 2]:.4f} at Lc / 2 = {Lc // 2})" if len(below) else "")


def demo(cfg):
    import time

    from plots import plot_coverage

    t0, rng, Lc, Lt = time.time(), np.random.default_rng(0), cfg.Lc, cfg.Lt
    example = Chunks(l=np.array([512, 1536]), st=np.array([0, 512]), u=np.array([0, 2048]), v=np.zeros(2, np.int64))
    print("Worked example, 2k → 4k, N = 2:\n" + describe(example, 4096))
    for method, N in [("pose", 2), ("pose", 2), ("pose", 3), ("randpos", 2), ("plain", 1)]:
        name = f"PoSE N = {N}" if method == "pose" else method
        print(f"\n{name}, Lc = {Lc} → Lt = {Lt}, document of {DOC_CAP * Lc} tokens:")
        print(describe(draw_window(DOC_CAP * Lc, Lc, Lt, method, N, rng=rng), Lt))
    panels = []
    for Lc, Lt in cfg.settings():
        at = {"Lc/2": Lc // 2, "Lc": Lc, "Lt/2": Lt // 2, "Lt-1": Lt - 1}
        print(f"\nrelative-position coverage, Lc = {Lc} → Lt = {Lt}, {cfg.n_samples} samples, each curve from seed 0"
              f"\n{'':24}" + "".join(f"{k:>9}" for k in at))
        curves = coverage_curves(Lc, Lt, cfg.n_samples)
        for label, curve in curves.items():
            print(f"{label:<24}" + "".join(f"{curve[d]:>9.4f}" for d in at.values()))
        print(compare_chunks(curves, Lc, Lt))
        panels.append((curves, Lc, f"Lc = {Lc} → Lt = {Lt}"))
    plot_coverage(panels, cfg.out, f"Relative-position coverage of one training example ({cfg.n_samples:,} samples)")
    print(f"wrote {cfg.out} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    import sys

    from config import parse_config
    from util import on_signals

    cfg = parse_config(CoverageDemo, sys.argv[1:])
    on_signals()  # SIGTERM as Ctrl-C; a file-size limit as a full disk
    try:  # a figure that cannot be written (a full disk): one line, no traceback
        demo(cfg)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: {cfg.out} was left as it was (it is written aside, then renamed)")
