"""bench.py: the paper's Figure 3 -- memory and time of one training step, PoSE against Full-length, as Lt grows.

    python bench.py                         # Lt = 1, 2, 4, 8, 16 x Lc on the tiny model, about 3 min on 2 cores
    python bench.py --threads=1 --reps=3    # on a shared CPU one thread keeps timings steady
    python bench.py -h                      # every option

A step is train.py's (get_batch, forward, backward, clipping, AdamW) on the tiny model it builds from scratch, with
linear RoPE scaling to Lt: PoSE reads Lc tokens per row, Full-length Lt. Memory: two steps in a fresh process per
point, so that its peak is its own (CPU: peak RSS; GPU: max_memory_allocated); "step" is that peak less what was in
use before the first step: gradients, AdamW's state, activations. Time: PoSE and Full-length steps interleaved here;
PoSE/Full is the median of the paired ratios (pairs run back to back, so drifts in machine load cancel). The README
holds the targets, bench_engineering.py the other benchmarks. Writes results/bench.json ({"b": {"pose": {Lt:
{"mem_gib", "step_gib", "step_s", ...}}, "full": ..., "command", "machine", "options"}}), results/bench.md rendered
from it, and plots/memory_time.png.
"""
import json
import os
import statistics
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from config import int_list, parse_config, writable
from measure import GiB, check_shared, header, in_fresh_process, machine, paired_median, setup, timed
from prepare import TokenDataset
from train import TrainConfig, get_batch, load_model
from util import atomic_open, markdown, memory_now, memory_peak, on_signals

@dataclass
class BenchConfig:
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    threads: int = 0               # torch CPU threads; 0: torch's default (one per core)
    reps: int = 5                  # timed steps per method and Lt, after warm-up; medians are reported
    warmup: int = 1                # untimed steps first
    data_dir: str = "data/tok/web-bpe4k"  # prepared data (prepare.py) that the windows are cut from
    Lc: int = 128                  # the training window
    factors: str = "1,2,4,8,16"    # Lt = factor x Lc
    batch: int = 4                 # rows per step
    out: str = "results"           # bench.json, bench.md
    plots: str = "plots"           # memory_time.png

    def check(self):
        """A ValueError naming the first option that cannot work."""
        check_shared(self, positive=("Lc", "batch"))
        int_list("factors", self.factors)
        writable(self, "out", "plots")


# ----------------------------------------------------------------------------- one training step, PoSE vs Full
def training_setup(bc, method, Lt, device):
    """train.py's config, data, model and AdamW for a run of `method` extending the tiny model from Lc to Lt."""
    tc = TrainConfig(data_dir=bc.data_dir, method=method, Lc=bc.Lc, Lt=Lt, batch_size=bc.batch, device=device,
                     dtype="bfloat16" if device.startswith("cuda") else "float32",
                     rope_type="linear" if Lt > bc.Lc else "none")  # Lt = Lc: nothing to extend
    tc.check()
    torch.manual_seed(0)
    model = load_model(tc).to(device).train()
    return tc, TokenDataset(tc.data_dir, "train"), model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step(tc, data, rng, model, optimizer, device):
    """One step as train.py takes it (one micro-batch): get_batch, forward, backward, clip, AdamW."""
    x, pos, y = (t.to(device) for t in get_batch(data, tc, rng, tc.batch_size))
    ctx = nullcontext() if tc.dtype == "float32" else torch.autocast(device.split(":")[0], getattr(torch, tc.dtype))
    with ctx:
        loss = model(x, pos, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_step_memory(bc_dict, method, Lt):
    """Runs in a fresh process: two training steps (the second is the steady state, AdamW's state allocated);
    the process's peak memory and what the steps added to it."""
    bc = BenchConfig(**bc_dict)
    device = setup(bc)
    tc, data, model, optimizer = training_setup(bc, method, Lt, device)
    rng, base = np.random.default_rng(0), memory_now(device)
    for _ in range(2):
        train_step(tc, data, rng, model, optimizer, device)
    peak = memory_peak(device)
    return {"mem_gib": peak / GiB, "step_gib": (peak - base) / GiB, "base_gib": base / GiB}


def train_step_times(bc, Lt, device):
    """Wall and CPU seconds of each timed step of PoSE and of Full-length at Lt, interleaved in this process, the
    order alternating so that neither always runs second (one model serves both: only the windows differ)."""
    tc, data, model, optimizer = training_setup(bc, "pose", Lt, device)
    tcs, rng = {"pose": tc, "full": replace(tc, method="full")}, np.random.default_rng(0)
    wall, cpu = {"pose": [], "full": []}, {"pose": [], "full": []}
    for r in range(bc.warmup + bc.reps):
        for m in ("pose", "full") if r % 2 == 0 else ("full", "pose"):
            w, c, _ = timed(lambda: train_step(tcs[m], data, rng, model, optimizer, device), device)
            if r >= bc.warmup:
                wall[m].append(w)
                cpu[m].append(c)
    return wall, cpu


def bench_pose_vs_full(bc, device):
    out = {"pose": {}, "full": {}}
    print(f"one training step, batch {bc.batch}, Lc = {bc.Lc}: memory in a fresh process per point, time here")
    for Lt in (f * bc.Lc for f in int_list("factors", bc.factors)):
        wall, cpu = train_step_times(bc, Lt, device)
        for m in ("pose", "full"):
            r = out[m][str(Lt)] = in_fresh_process(train_step_memory, asdict(bc), m, Lt)
            r |= {"step_s": statistics.median(wall[m]), "tokens": bc.batch * ((Lt if m == "full" else bc.Lc) - 1),
                  "wall": wall[m], "cpu": cpu[m]}
            print(f"  {m:4s} Lt={Lt:5d}: peak {r['mem_gib']:.3f} GiB (step {r['step_gib']:.3f}), "
                  f"{r['step_s']:.3f} s/step, {r['tokens']} tokens", flush=True)
        out["pose"][str(Lt)] |= {"time_vs_full": paired_median(wall["pose"], wall["full"]),
                                 "cpu_vs_full": paired_median(cpu["pose"], cpu["full"])}
    return out


def render(res):
    """results/bench.md from results/bench.json: a row per Lt, then PoSE at the longest Lt over the shortest."""
    b = res["b"]
    p, f, Lc = b["pose"], b["full"], b["options"]["Lc"]
    rows = [[f"{Lt} ({int(Lt) // Lc}·Lc)"] + [f"{r[k]:.3f}" for r in (p[Lt], f[Lt]) for k in ("mem_gib", "step_gib",
            "step_s")] + [f"{v:.3f}" for v in (p[Lt]["time_vs_full"], p[Lt]["cpu_vs_full"],
                                               p[Lt]["step_gib"] / f[Lt]["step_gib"])] for Lt in p]
    lo, hi = min(p, key=int), max(p, key=int)
    return "\n".join([
        f"# One training step, PoSE vs Full-length (the paper's Figure 3; tiny model, Lc = {Lc}, "
        f"batch {b['options']['batch']})", "", header(b), "",
        "Memory: a fresh process per point, two steps; *peak* is the process's peak, *step* that peak less what was "
        "in use before the first step. Time: PoSE and Full steps interleaved in one process; PoSE/Full is the median "
        "of the paired ratios. The README holds the targets.", "",
        markdown(["Lt", "PoSE peak GiB", "PoSE step GiB", "PoSE s/step", "Full peak GiB", "Full step GiB",
                  "Full s/step", "PoSE/Full time", "PoSE/Full CPU time", "PoSE/Full step memory"], rows),
        f"PoSE at {int(hi) // Lc}·Lc over PoSE at {int(lo) // Lc}·Lc: peak memory "
        f"{p[hi]['mem_gib'] / p[lo]['mem_gib']:.3f}, step memory {p[hi]['step_gib'] / p[lo]['step_gib']:.3f}, "
        f"step time {p[hi]['step_s'] / p[lo]['step_s']:.3f}.", "", "![memory and time](../plots/memory_time.png)", ""])


def main(bc, command):
    import plots  # here, not at the top: the fresh processes that measure memory should not hold matplotlib
    device = setup(bc)
    print(json.dumps(machine(device)))
    res = {"b": bench_pose_vs_full(bc, device) | {"command": command, "machine": machine(device),
                                                  "options": asdict(bc)}}
    os.makedirs(bc.out, exist_ok=True)
    with atomic_open(os.path.join(bc.out, "bench.json")) as f:
        json.dump(res, f, indent=1)
    with atomic_open(os.path.join(bc.out, "bench.md")) as f:
        f.write(render(res))
    plots.plot_memory_time({m: res["b"][m] for m in ("pose", "full")}, os.path.join(bc.plots, "memory_time.png"))
    print("\n" + render(res))
    return res


if __name__ == "__main__":
    cfg = parse_config(BenchConfig, sys.argv[1:], __doc__)
    on_signals()  # SIGTERM as Ctrl-C; a file-size limit as a full disk
    try:  # missing or damaged data, documents shorter than a window: one line, not a traceback
        main(cfg, "python " + " ".join(sys.argv))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: nothing written (the results are written once measured)")
