"""plots.py: the project's figures as PNGs (perplexity, passkey, training loss, memory/time, coverage), from data.

    python plots.py --results=DIR --logs=out --bench=results/bench.json --out=plots
        # redraw eval.py's figures from its --out folder DIR, the training curves of out/*/log.jsonl, and Figure 3

reproduce.py draws the comparison's own figures (a rerun that reuses every run redraws them in seconds), and
pose.py the coverage figure.

Each plot_* function takes plain data and an output path, so eval.py, a benchmark or a notebook can call it.
"""
import glob
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global figure state, no backend to choose, PNG through Agg

from util import atomic_path, on_signals

SIZE = (7, 4.2)  # inches at 110 dpi: 770 px wide, readable at README width


def _log2_lengths(ax, lengths):
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{L // 1024}k" if L >= 1024 and L % 1024 == 0 else str(L) for L in lengths])
    ax.minorticks_off()


def _marks(ax, marks, right_from):
    """marks {x: label} as dashed vertical lines; a label at x >= right_from goes left of its line, inside the axes."""
    for x, label in (marks or {}).items():
        ax.axvline(int(x), color="gray", ls="--", lw=1)
        right = int(x) >= right_from
        ax.text(int(x), 0.98, f"{label} = {x} " if right else f" {label} = {x}", color="gray", va="top",
                ha="right" if right else "left", transform=ax.get_xaxis_transform())


def _save(fig, path):
    """The figure as `path`, written whole or not at all: a full disk ends in one line naming it, no cut-off PNG."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the temporary's name has no extension: say which format
        fig.savefig(tmp, dpi=110, format=os.path.splitext(path)[1][1:].lower() or "png")


def plot_perplexity(ppl, path, marks=None, title="Perplexity vs evaluation length", spread=None):
    """ppl {model: {length: perplexity}}; marks {length: label} draws e.g. L0 and Lt as dashed lines; spread
    {model: {length: (low, high)}} draws each point's spread (over seeds) as an error bar."""
    fig = Figure(figsize=SIZE)
    ax = fig.subplots()
    lengths = sorted({int(L) for curve in ppl.values() for L in curve})
    for k, (name, curve) in enumerate(ppl.items()):
        xs = sorted(curve, key=int)
        ys = [curve[L] for L in xs]
        bars = (spread or {}).get(name)
        err = None if not bars else np.array([[y - bars[L][0], bars[L][1] - y] for L, y in zip(xs, ys)]).T
        dodge = 2 ** (0.02 * (k - (len(ppl) - 1) / 2)) if spread else 1  # bars side by side, not on top
        ax.errorbar([int(L) * dodge for L in xs], ys, yerr=err, marker="o", capsize=3, label=name,
                    color=f"C{k % 10}", ls="-" if k < 10 else "--")
    _marks(ax, marks, max(lengths))
    values = [v for curve in ppl.values() for v in curve.values()]
    log = max(values) > 10 * min(values)  # a model past its window goes to 10^3 and beyond
    if log:
        ax.set_yscale("log")
    _log2_lengths(ax, lengths)
    ax.set(xlabel="evaluation window (tokens)", ylabel="perplexity" + " (log scale)" * log, title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _save(fig, path)


def plot_position_loss(curves, path, marks=None, windows=None, smooth=None, bands=None, title=None):
    """curves {model: mean loss at positions 0 … L-1}, drawn as moving averages over `smooth` positions (the raw
    curves are noisy; default L / 16); bands {model: (low curve, high curve)} shade each model's spread over seeds;
    marks {position: label} as dashed lines (L0, Lt). A model that cannot use positions past the length it was
    pretrained at rises after L0; one that can stays flat or falls, as more context should make it."""
    L = max(map(len, curves.values()))
    smooth = smooth or max(L // 16, 1)
    fig = Figure(figsize=(SIZE[0] * 1.2, SIZE[1] * 1.1))
    ax = fig.subplots()
    kernel = np.ones(smooth) / smooth
    for k, (name, loss) in enumerate(curves.items()):
        x = np.arange(len(loss))[smooth - 1:] - (smooth - 1) / 2  # each average drawn at the middle of its span
        color = f"C{k % 10}"
        ax.plot(x, np.convolve(np.asarray(loss), kernel, mode="valid"), lw=1.5, label=name, color=color,
                ls="-" if k < 10 else "--")
        if bands and name in bands:
            low, high = (np.convolve(np.asarray(b), kernel, mode="valid") for b in bands[name])
            ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
    _marks(ax, marks, L - 1)
    ax.set(xlabel="position in the window (tokens)", ylabel=f"next-token loss (nats, mean over {smooth} positions)",
           title=title or f"Loss at each position of {windows or 'the'} held-out windows of {L} tokens", xlim=(0, L))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _save(fig, path)


def plot_passkey(acc, path, title="Passkey retrieval"):
    """acc {length: {depth: accuracy in [0, 1]}} -> a heatmap, lengths across and depths down, cells labelled (a
    cell not tried is left blank)."""
    lengths = sorted(acc, key=int)
    depths = sorted({d for cells in acc.values() for d in cells}, key=float)
    grid = np.array([[acc[L].get(d, np.nan) for L in lengths] for d in depths])  # (depths, lengths)
    fig = Figure(figsize=SIZE)
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{float(d):.0%}" for d in depths])
    ax.set(xlabel="prompt length (tokens)", ylabel="key depth in the filler", title=title)
    fig.colorbar(im, ax=ax, label="accuracy")
    _save(fig, path)


def plot_passkey_beyond(beyond, path, Lc, intervals=None, title=None):
    """beyond {model: {length: accuracy on keys farther back than Lc, or None}} -> one line per model; intervals
    {model: {length: (low, high)}} as error bars (e.g. 95% intervals)."""
    fig = Figure(figsize=SIZE)
    ax = fig.subplots()
    lengths = sorted({int(L) for curve in beyond.values() for L, a in curve.items() if a is not None})
    for k, (name, curve) in enumerate(beyond.items()):
        xs = [L for L in lengths if curve.get(L) is not None]
        ys = [100 * curve[L] for L in xs]
        bars = (intervals or {}).get(name)
        err = None if not bars else np.array([[y - 100 * bars[L][0], 100 * bars[L][1] - y] for L, y in zip(xs, ys)]).T
        dodge = 2 ** (0.03 * (k - (len(beyond) - 1) / 2)) if intervals else 1  # bars side by side
        ax.errorbar([L * dodge for L in xs], ys, yerr=err, marker="o", capsize=3, label=name, color=f"C{k % 10}",
                    ls="-" if k < 10 else "--")
    _log2_lengths(ax, lengths)
    ax.set(xlabel="prompt length (tokens)", ylabel="keys retrieved (%)", ylim=(-3, 103),
           title=title or f"Passkey retrieval, keys farther back than Lc = {Lc}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _save(fig, path)


def read_log(path):
    """The records of a log.jsonl; a ValueError names a line that is not JSON."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                records += [json.loads(line)] if line.strip() else []
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
    return records


def plot_training(logs, path, title="Training loss"):
    """logs {run: [log.jsonl records]}: training loss per step (lines) and eval loss per length (dots)."""
    fig = Figure(figsize=(9, 4.6))  # room for a legend of three entries per run beside the axes
    ax = fig.subplots()
    for k, (name, records) in enumerate(logs.items()):
        color = f"C{k}"
        train = [r for r in records if "loss" in r]
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color=color, label=f"{name} train")
        evals = [r for r in records if "eval" in r]
        for j, L in enumerate(sorted({L for r in evals for L in r["eval"]}, key=int)):
            pts = [(r["step"], r["eval"][L]) for r in evals if L in r["eval"]]
            ax.plot(*zip(*pts), "os^dv"[j % 5] + ":", color=color, ms=5, label=f"{name} eval @{L}")
    ax.set(xlabel="step", ylabel="loss (nats / token)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    _save(fig, path)


def plot_steps(tracks, path, lengths, title="Perplexity during fine-tuning"):
    """tracks {run: {step: {length: perplexity}}} -> perplexity against fine-tuning steps, one colour per run, a
    solid line at the longest length and a dotted one at the shortest (the paper's Figure 3(c))."""
    fig = Figure(figsize=SIZE)
    ax = fig.subplots()
    for k, (name, track) in enumerate(tracks.items()):
        steps = sorted(track)
        for L, style in zip(sorted(lengths, reverse=True), ("o-", "s:")):
            ax.plot(steps, [track[st][L] for st in steps], style, color=f"C{k % 10}", ms=4, label=f"{name} @{L}")
    ax.set(xlabel="fine-tuning step", ylabel="perplexity", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _save(fig, path)


def plot_memory_time(bench, path, title="Cost of one training step vs target length"):
    """bench {method: {Lt: {"mem_gib", "step_s"}}} -> memory and time side by side (the paper's Figure 3)."""
    fig = Figure(figsize=(SIZE[0] * 1.4, SIZE[1]))
    axes = fig.subplots(1, 2)
    lengths = sorted({int(L) for runs in bench.values() for L in runs})
    for ax, key, label in zip(axes, ("mem_gib", "step_s"), ("peak memory (GiB)", "time per step (s)")):
        for method, runs in bench.items():
            xs = sorted(runs, key=int)
            ax.plot([int(L) for L in xs], [runs[L][key] for L in xs], "o-", label=method)
        _log2_lengths(ax, lengths)
        ax.set(xlabel="target length Lt (tokens)", ylabel=label, ylim=(0, None))
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def plot_coverage(panels, path, title="Relative-position coverage"):
    """panels [(curves {label: P(distance d occurs) for d in [0, Lt)}, e.g. from pose.coverage; Lc, dashed; the
    panel's title)], side by side."""
    fig = Figure(figsize=(SIZE[0] * (0.75 + 0.55 * len(panels)), SIZE[1]))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (curves, Lc, name) in zip(axes, panels):
        for label, rel in curves.items():
            ax.plot(np.arange(len(rel)), rel, lw=1.6, label=label)
        ax.axvline(Lc, color="gray", ls="--", lw=1)
        ax.text(Lc, 1.08, f" Lc = {Lc}", color="gray", va="top")
        ax.set(xlim=(0, max(map(len, curves.values()))), ylim=(-0.02, 1.1), xlabel="relative distance d (tokens)",
               title=name)
    axes[0].set_ylabel("P(d occurs in one training example)")
    axes[0].legend(loc="center", fontsize=8)  # between the curves at 1 and those near 0.2
    fig.suptitle(title)
    _save(fig, path)


def plot_rope_scalings(divisors, keep, turns, path, title="What each RoPE scaling does to each pair"):
    """divisors {scaling: (d/2,) how many times slower each RoPE pair turns than in pretraining (1: kept, s: fully
    interpolated)}; keep (d/2,) YaRN's ramp (1 kept, 0 interpolated), shaded behind; turns (d/2,) how many times each
    pair turns over L0, on the top axis."""
    fig = Figure(figsize=(SIZE[0] * 1.25, SIZE[1] * 1.1))
    ax = fig.subplots()
    pairs = np.arange(len(keep))
    zones = {"kept": keep == 1, "ramped": (keep > 0) & (keep < 1), "divided by s": keep == 0}
    for (zone, where), color in zip(zones.items(), ("tab:green", "0.6", "tab:blue")):
        for i in pairs[where]:
            ax.axvspan(i - 0.5, i + 0.5, color=color, alpha=0.12, lw=0)
        if where.any():
            ax.text(pairs[where].mean(), 0.97, zone, ha="center", va="top", color="0.3",
                    transform=ax.get_xaxis_transform())
    for n, (name, div) in enumerate(divisors.items()):
        ax.plot(pairs, div, "o-" if n < 10 else "s--", ms=4, lw=1.4, label=name, color=f"C{n % 10}")
    ax.set_yscale("log", base=2)
    ax.set(xlabel="RoPE pair i (dims i and i + d/2), fastest first", xlim=(-0.5, len(keep) - 0.5),
           ylabel="divisor of the pair's frequency (log scale)", title=title)
    top = ax.secondary_xaxis("top")
    top.set_xticks(pairs[::2], [f"{t:.2g}" for t in turns[::2]])
    top.set_xlabel("turns over L0 in pretraining")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _save(fig, path)


@dataclass
class PlotConfig:
    results: str = "results"           # an eval.py --out folder (ppl.json, passkey.json)
    logs: str = "out"                  # every LOGS/*/log.jsonl is a training run
    bench: str = "results/bench.json"  # bench.py's results; part b holds {method: {Lt: {"mem_gib", "step_s"}}}
    out: str = "plots"
    rope: str = "128,8,32"             # L0,s,head_dim of rope_scalings.png (the tiny run's); "": none

    def check(self):
        from config import int_list, writable
        writable(self, "out")
        if self.rope and len(int_list("rope", self.rope)) != 3:
            raise ValueError(f"--rope={self.rope}: expected L0,s,head_dim or nothing")


def rope_divisors(L0, s, head_dim, base=10000.0, beta_fast=4.0):
    """({scaling: how many times slower each RoPE pair turns than in pretraining}, YaRN's ramp at beta_fast, how many
    times each pair turns over L0) for a head of head_dim extended s times from L0, by model.py's own rules."""
    import math

    from model import ROPE_SCALINGS, rope_frequencies, scaling_for, yarn_keep
    plain = rope_frequencies(head_dim, base)
    rows = [("linear", "linear", beta_fast), ("fixed NTK, α = s", "ntk", beta_fast),
            (f"YaRN (transformers'), β_fast {beta_fast:g}", "yarn", beta_fast),
            (f"PoSE-YaRN (official code's), β_fast {beta_fast:g}", "yarn_pose", beta_fast),
            ("PoSE-YaRN, β_fast 32", "yarn_pose", 32.0), ("llama3", "llama3", beta_fast),
            (f"dynamic NTK, at {s * L0} positions", "dynamic", beta_fast)]
    divisors = {}
    for name, kind, beta in rows:
        rs = scaling_for(kind, s, L0, beta_fast=beta)
        divisors[name] = (plain / ROPE_SCALINGS[kind](head_dim, base, rs, L0, s * L0)[0]).numpy()
    keep = yarn_keep(head_dim, base, {"beta_fast": beta_fast, "beta_slow": 1.0}, L0).numpy()
    return divisors, keep, (L0 * plain / (2 * math.pi)).numpy()


def context_marks(models):
    """{length: "L0" or "Lt"} from ppl.json's models ({name: {"L0", "Lt", ...}}): each model's pretraining length
    and, where it was extended, its target length."""
    return {r["L0"]: "L0" for r in models.values()} | {r["Lt"]: "Lt" for r in models.values() if r["L0"] < r["Lt"]}


def _load(path):
    with open(path) as f:
        return json.load(f)


@contextmanager
def _reading(path, writer):
    """What goes wrong with what `path` holds (not JSON, a key missing, a value of the wrong type) as one ValueError
    that names the file."""
    try:
        yield
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path}: not what {writer} writes ({type(e).__name__}: {e})") from None


def main(cfg):
    """Redraw every figure whose input exists; the coverage figure is pose.py's (python pose.py)."""
    wrote, ppl_json = [], os.path.join(cfg.results, "ppl.json")
    if os.path.exists(ppl_json):
        with _reading(ppl_json, "eval.py"):
            results = _load(ppl_json)
            models = results["models"]
            wrote.append(os.path.join(cfg.out, "ppl.png"))
            plot_perplexity({n: {L: v["ppl"] for L, v in r["ppl"].items()} for n, r in models.items()}, wrote[-1],
                            context_marks(models), f"Perplexity on {results['protocol']['data']}")
    if os.path.exists(os.path.join(cfg.results, "position_loss.json")):
        with _reading(os.path.join(cfg.results, "position_loss.json"), "eval.py"):
            pl = _load(os.path.join(cfg.results, "position_loss.json"))
            wrote.append(os.path.join(cfg.out, "position_loss.png"))
            marks = context_marks(_load(ppl_json)["models"])
            plot_position_loss(pl["models"], wrote[-1], marks, pl["protocol"]["windows"])
    if os.path.exists(os.path.join(cfg.results, "passkey.json")):
        with _reading(os.path.join(cfg.results, "passkey.json"), "eval.py"):
            for name, acc in _load(os.path.join(cfg.results, "passkey.json"))["models"].items():
                wrote.append(os.path.join(cfg.out, f"passkey_{name}.png"))
                plot_passkey(acc, wrote[-1], title=f"Passkey retrieval: {name}")
    runs = sorted(glob.glob(os.path.join(cfg.logs, "*", "log.jsonl")))
    if runs:
        logs = {os.path.basename(os.path.dirname(p)): read_log(p) for p in runs}
        with _reading(os.path.join(cfg.logs, "*", "log.jsonl"), "train.py"):
            wrote.append(os.path.join(cfg.out, "training.png"))
            plot_training(logs, wrote[-1])
    if os.path.exists(cfg.bench):
        with _reading(cfg.bench, "bench.py"):
            wrote.append(os.path.join(cfg.out, "memory_time.png"))
            b = _load(cfg.bench)["b"]
            plot_memory_time({m: b[m] for m in ("pose", "full")}, wrote[-1])
    if cfg.rope:
        L0, s, head_dim = (int(x) for x in cfg.rope.split(","))
        wrote.append(os.path.join(cfg.out, "rope_scalings.png"))
        plot_rope_scalings(*rope_divisors(L0, s, head_dim), wrote[-1],
                           f"RoPE scalings pair by pair: L0 = {L0}, s = {s}, head dim {head_dim} (zones: β_fast 4)")
    print("wrote " + (", ".join(wrote) if wrote else f"nothing: no inputs in {cfg.results}, {cfg.logs}, {cfg.bench}"))


if __name__ == "__main__":
    from config import parse_config
    cfg = parse_config(PlotConfig, sys.argv[1:], __doc__)
    on_signals()  # SIGTERM as Ctrl-C; a file-size limit as a full disk
    try:  # an input that is not what its script writes, a figure that cannot be written: one line, no traceback
        main(cfg)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: every figure drawn so far is whole (each is written aside, then renamed)")
