"""bench.py: model.py against transformers, and PoSE against Full-length, in memory and time; every figure a ratio.

    python bench.py                          # every part this machine can run: a, b, c (+ d on a GPU), ~5 min
    python bench.py --parts=b,c --reps=3     # a subset
    python bench.py --a_lengths=256,1024,4096 --threads=1  # (a) at 4096 tokens too (+4 min on a CPU), 1 thread
    python bench.py -h                       # every option

Each ratio compares two things measured side by side in one run, interleaved, several repetitions, median
reported: absolute timings on a shared machine mean little, ratios taken in the same minutes do. On a CPU that
other programs share, --threads=1 keeps them steady: with two threads every operator waits for the slower core.
(a) forward + backward tokens/s of model.py against transformers' LlamaForCausalLM (sdpa attention) with identical
    weights (saved by model.save_pretrained, loaded by from_pretrained) and config, both computing the full LM loss
    (ours: targets; HF: labels); float32 on a CPU, bf16 autocast on a GPU. The ratio is the median over
    repetitions of HF's time / ours, each pair run back to back (pairing cancels slow drifts in machine load).
    Beside it, each model's FLOP/s as a share of the best large square matmul measured in the same minutes: how
    much of what the machine's BLAS can do each model turns into model FLOPs, and so how much room a ratio has.
(b) one training step -- train.py's get_batch, forward, backward, gradient clipping, AdamW -- of PoSE and of
    Full-length at Lt = 1, 2, 4, 8, 16 x Lc on the tiny model (configs/tiny_pose.toml's shape, linear RoPE scaling).
    Memory: every point runs two steps in a fresh process, so its peak is its own: CPU: peak RSS (VmHWM), GPU:
    max_memory_allocated. "peak" is the process's peak, "step" that peak less the memory in use just before the
    first step (model, data, imports), i.e. the steps' gradients, AdamW state and activations. Time: PoSE and
    Full-length steps at each Lt interleaved in the main process, the ratio the median of the paired ratios.
(c) evaluation at T = 32 x Lc without gradients, fresh process each: the chunked loss (model(idx, targets=...))
    against full logits then F.cross_entropy.
(d) GPU only: model FLOPs utilisation of a 1.1B LLaMA (TinyLlama's shape) at 2k tokens, bf16 autocast, forward +
    backward: MFU = (6 N + 12 L d T) FLOPs per token / time / peak, PaLM's count (Chowdhery et al. 2022, App. B):
    N parameters less the input embedding (a lookup), L layers, d = n_heads x head_dim, T the sequence length;
    attention counted dense, as PaLM does, though causal attention needs half of it.

Writes results/bench.json ({"pose": {Lt: {"mem_gib", "step_s", ...}}, "full": {...}}, the form plots.py reads),
results/bench.md (every part's table and ratio, with the machine) and plots/memory_time.png.
"""
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from multiprocessing import get_context

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint as C
import model as M
from config import parse_config
from train import TrainConfig, check_config, extend_context, get_batch, load_model


@dataclass
class BenchConfig:
    parts: str = "a,b,c,d"         # which parts to run; d only runs on a GPU
    device: str = "auto"           # auto | cpu | cuda
    threads: int = 0               # torch CPU threads; 0: torch's default (one per core)
    reps: int = 5                  # timed repetitions per point, after warm-up; medians are reported
    warmup: int = 1
    # (a): a small LLaMA shape that two CPU cores run in reasonable time (GQA, LLaMA's 32k vocabulary)
    a_dim: int = 512
    a_layers: int = 8
    a_heads: int = 8
    a_kv_heads: int = 4
    a_vocab: int = 32000
    a_lengths: str = ""            # "": 256,1024 on a CPU (4096 adds four minutes there), 256,1024,4096 on a GPU
    a_batch: int = 1
    # (b), (c): the tiny model of configs/tiny_*.toml (train.py's defaults: dim 256, 4 layers, 8/4 heads, 4k vocab)
    data_dir: str = "data/tok/web-bpe4k"
    Lc: int = 128
    b_factors: str = "1,2,4,8,16"  # Lt = factor x Lc
    b_batch: int = 4
    c_factor: int = 32             # evaluation length T = c_factor x Lc
    c_batch: int = 1
    # (d)
    d_tokens: int = 2048
    d_batch: int = 1
    peak_tflops: float = 989.0     # the accelerator's dense bf16 peak; 989 for H100 / H200 SXM
    # output
    out: str = "results"
    plots: str = "plots"


# ----------------------------------------------------------------------------- timing and memory
def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(wall seconds, process CPU seconds, fn()). CPU time barely moves when other programs share the cores, so its
    ratios cross-check the wall-clock ones on a busy machine (it counts every thread, spin-waits included)."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out


def paired_median(num, den):
    """The median of num[i] / den[i]: each pair ran back to back, so slow drifts in machine load cancel."""
    return statistics.median(n / d for n, d in zip(num, den))


def autocast(device):
    """bf16 autocast on a GPU (train.py's dtype=bfloat16), plain float32 on a CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


def _proc_status(key):
    """A /proc/self/status entry in bytes: VmRSS the resident set now, VmHWM its peak. Unlike getrusage's
    ru_maxrss, which Linux carries across fork and exec, VmHWM starts afresh in a new process."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def memory_now(device):
    """Bytes in use: the allocator's on a GPU, the process's resident set on a CPU."""
    return torch.cuda.memory_allocated(device) if device.startswith("cuda") else _proc_status("VmRSS")


def memory_peak(device):
    return torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else _proc_status("VmHWM")


def in_fresh_process(fn, *args):
    """fn(*args) in a new Python process, so that the peak memory it reports is its own alone.

    The process's glibc malloc gets a fixed mmap threshold: every block over 64 KiB is mapped when allocated and
    unmapped when freed, so the resident set follows the live tensors (by default the threshold climbs to 32 MiB
    and freed blocks linger in the heap, which adds noise of the size of the activations being measured)."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)  # read when the new process starts; this one is not affected
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def setup(bc):
    if bc.threads:
        torch.set_num_threads(bc.threads)
    if bc.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return bc.device


def ints(s):
    return [int(v) for v in s.split(",") if v]


GiB = 2**30


# ----------------------------------------------------------------------------- (a) model.py vs transformers
def train_flops(cfg, params, tokens, T):
    """Model FLOPs of one forward + backward: 6 per parameter per token (an untied input embedding, a lookup,
    excluded) plus causal attention's 6·L·d·T per token (QKᵀ and PV, half the square; backward twice forward)."""
    matmul_params = params - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim)
    return (6 * matmul_params + 6 * cfg.n_layers * cfg.n_heads * cfg.head_dim * T) * tokens


def matmul_peak(device, n=2048, reps=5):
    """FLOP/s of the best of `reps` n x n matmuls in the dtype (a)'s models compute in: what this machine's BLAS can
    do at best, the ceiling under both models' training speed."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n**3 / min(timed(lambda: a @ b, device)[0] for _ in range(reps))


def bench_vs_transformers(bc, device):
    import transformers
    lengths = ints(bc.a_lengths or ("256,1024,4096" if device.startswith("cuda") else "256,1024"))
    torch.manual_seed(0)
    cfg = M.ModelConfig(dim=bc.a_dim, n_layers=bc.a_layers, n_heads=bc.a_heads, n_kv_heads=bc.a_kv_heads,
                        vocab_size=bc.a_vocab, max_seq_len=max(lengths))
    ours = M.LLaMA(cfg)
    with tempfile.TemporaryDirectory() as d:
        C.save_pretrained(ours, d)
        hf = transformers.LlamaForCausalLM.from_pretrained(d, attn_implementation="sdpa", dtype=torch.float32)
    ours, hf = ours.to(device).train(), hf.to(device).train()
    params = sum(p.numel() for p in ours.parameters())
    print(f"(a) model.py vs transformers {transformers.__version__}: dim {cfg.dim}, {cfg.n_layers} layers, "
          f"{cfg.n_heads} heads / {cfg.n_kv_heads} kv, ffn {cfg.hidden_dim}, vocab {cfg.vocab_size} "
          f"({params / 1e6:.1f}M parameters), batch {bc.a_batch}, {'bf16 autocast' if device != 'cpu' else 'float32'}")

    rows = []
    for T in lengths:
        idx = torch.randint(0, cfg.vocab_size, (bc.a_batch, T), device=device)
        targets = torch.cat((idx[:, 1:], torch.full_like(idx[:, :1], -1)), dim=1)  # what HF's labels=idx scores

        def fwd_bwd(model):
            model.zero_grad(set_to_none=True)
            with autocast(device):
                loss = ours(idx, targets=targets) if model is ours else hf(idx, labels=idx).loss
            loss.backward()
            return loss.item()

        for _ in range(max(bc.warmup, 1)):  # the warm-up also checks that both compute the same loss
            l_ours, l_hf = fwd_bwd(ours), fwd_bwd(hf)
        wall, cpu = {"ours": [], "hf": []}, {"ours": [], "hf": []}
        for r in range(bc.reps):  # interleaved, and the order alternates so neither always runs second
            for name in ("ours", "hf") if r % 2 == 0 else ("hf", "ours"):
                w, c, _ = timed(lambda: fwd_bwd(ours if name == "ours" else hf), device)
                wall[name].append(w)
                cpu[name].append(c)
        paired = [h / o for h, o in zip(wall["hf"], wall["ours"])]
        peak, flops = matmul_peak(device), train_flops(cfg, params, bc.a_batch * T, T)
        row = {"T": T, "batch": bc.a_batch, "ours_tok_s": bc.a_batch * T / statistics.median(wall["ours"]),
               "hf_tok_s": bc.a_batch * T / statistics.median(wall["hf"]), "ratio": statistics.median(paired),
               "matmul_gflops": peak / 1e9, "ours_of_peak": flops / statistics.median(wall["ours"]) / peak,
               "hf_of_peak": flops / statistics.median(wall["hf"]) / peak,
               "ratio_min": min(paired), "ratio_max": max(paired), "ratio_cpu": paired_median(cpu["hf"], cpu["ours"]),
               "loss_ours": l_ours, "loss_hf": l_hf, "wall": wall, "cpu": cpu}
        rows.append(row)
        print(f"  T={T:5d}: model.py {row['ours_tok_s']:8.0f} tok/s, transformers {row['hf_tok_s']:8.0f} tok/s, "
              f"ratio {row['ratio']:.3f} (reps {row['ratio_min']:.2f}-{row['ratio_max']:.2f}; CPU time "
              f"{row['ratio_cpu']:.3f}); loss {l_ours:.5f} vs {l_hf:.5f}; of the {peak / 1e9:.0f} GFLOP/s matmul "
              f"peak: model.py {row['ours_of_peak']:.0%}, transformers {row['hf_of_peak']:.0%}", flush=True)
        assert abs(l_ours - l_hf) < 1e-3 * abs(l_hf) + (2e-2 if device != "cpu" else 0), \
            f"the two models disagree ({l_ours} vs {l_hf}): not the same weights"
    return {"config": asdict(cfg) | {"parameters": params}, "rows": rows}


# ----------------------------------------------------------------------------- (b) one training step, PoSE vs Full
def training_config(bc, method, Lt, device):
    """train.py's config for a run of `method` extending the tiny model from Lc to Lt."""
    tc = TrainConfig(data_dir=bc.data_dir, method=method, Lc=bc.Lc, Lt=Lt, batch_size=bc.b_batch,
                     rope_type="linear", device=device)
    check_config(tc)
    return tc


def training_setup(bc, method, Lt, device):
    """train.py's pieces for a run of `method` extending the tiny model from Lc to Lt: config, data, model, AdamW."""
    from prepare import TokenDataset
    tc = training_config(bc, method, Lt, device)
    torch.manual_seed(0)
    model = load_model("scratch", tc)
    model.cfg = extend_context(model.cfg, tc)
    model.rope = M.RoPE(model.cfg)
    model.to(device).train()
    return tc, TokenDataset(tc.data_dir, "train"), model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step(tc, data, rng, model, optimizer, device):
    """One step as train.py takes it (one micro-batch): get_batch, forward, backward, clip, AdamW."""
    x, pos, y = (t.to(device) for t in get_batch(data, tc, rng, tc.batch_size))
    with autocast(device):
        loss = model(x, pos, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_step_memory(bc_dict, method, Lt):
    """Runs in a fresh process: two training steps (the second is the steady state, with AdamW's state already
    allocated during forward and backward); the process's peak memory and what the steps added to it."""
    bc = BenchConfig(**bc_dict)
    device = setup(bc)
    tc, data, model, optimizer = training_setup(bc, method, Lt, device)
    rng = np.random.default_rng(0)
    base = memory_now(device)
    for _ in range(2):
        train_step(tc, data, rng, model, optimizer, device)
    peak = memory_peak(device)
    return {"mem_gib": peak / GiB, "step_gib": (peak - base) / GiB, "base_gib": base / GiB}


def train_step_times(bc, Lt, device):
    """Wall and CPU seconds of each timed step of PoSE and of Full-length at Lt, the two interleaved in this process
    (one model serves both: only the windows differ)."""
    tcs = {m: training_config(bc, m, Lt, device) for m in ("pose", "full")}
    _, data, model, optimizer = training_setup(bc, "pose", Lt, device)
    rng, wall, cpu = np.random.default_rng(0), {"pose": [], "full": []}, {"pose": [], "full": []}
    for r in range(bc.warmup + bc.reps):
        for m in ("pose", "full") if r % 2 == 0 else ("full", "pose"):
            w, c, _ = timed(lambda: train_step(tcs[m], data, rng, model, optimizer, device), device)
            if r >= bc.warmup:
                wall[m].append(w)
                cpu[m].append(c)
    return wall, cpu


def bench_pose_vs_full(bc, device):
    out = {"pose": {}, "full": {}}
    print(f"(b) one training step, batch {bc.b_batch}, Lc = {bc.Lc}: memory in a fresh process per point, "
          f"time interleaved in this one")
    for f in ints(bc.b_factors):
        Lt = f * bc.Lc
        wall, cpu = train_step_times(bc, Lt, device)
        for m in ("pose", "full"):
            T = (bc.Lc if m == "pose" else Lt) - 1
            r = out[m][str(Lt)] = in_fresh_process(train_step_memory, asdict(bc), m, Lt)
            r |= {"step_s": statistics.median(wall[m]), "tokens": bc.b_batch * T, "wall": wall[m], "cpu": cpu[m]}
            print(f"  {m:4s} Lt={Lt:5d}: peak {r['mem_gib']:.3f} GiB (step {r['step_gib']:.3f}), "
                  f"{r['step_s']:.3f} s/step, {r['tokens']} tokens", flush=True)
        out["pose"][str(Lt)] |= {"time_vs_full": paired_median(wall["pose"], wall["full"]),
                                 "cpu_vs_full": paired_median(cpu["pose"], cpu["full"])}
        print(f"  PoSE / Full step time at Lt={Lt}: {out['pose'][str(Lt)]['time_vs_full']:.3f} "
              f"(CPU time {out['pose'][str(Lt)]['cpu_vs_full']:.3f})", flush=True)
    return out


# ----------------------------------------------------------------------------- (c) evaluation memory
def eval_point(bc_dict, chunked):
    """Runs in a fresh process: the loss of c_batch x (c_factor x Lc) tokens without gradients; memory, time."""
    bc = BenchConfig(**bc_dict)
    device = setup(bc)
    T = bc.c_factor * bc.Lc
    tc = TrainConfig(method="pose", Lc=bc.Lc, Lt=T, rope_type="linear")
    torch.manual_seed(0)
    model = load_model("scratch", tc)
    model.cfg = extend_context(model.cfg, tc)
    model.rope = M.RoPE(model.cfg)
    model.to(device).eval()
    idx = torch.randint(0, model.cfg.vocab_size, (bc.c_batch, T + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]

    @torch.no_grad()
    def loss(x, y):
        with autocast(device):
            return model(x, targets=y) if chunked else F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    loss(x[:, :bc.Lc], y[:, :bc.Lc])  # one short window first: the libraries' lazy start-up counts as baseline
    base = memory_now(device)
    runs = [timed(lambda: loss(x, y), device) for _ in range(bc.reps)]  # (wall, cpu, loss) each
    peak = memory_peak(device)
    return {"mem_gib": peak / GiB, "step_gib": (peak - base) / GiB, "base_gib": base / GiB,
            "eval_s": statistics.median(r[0] for r in runs), "loss": runs[-1][2].item(), "tokens": int(x.numel())}


def bench_eval_memory(bc):
    T = bc.c_factor * bc.Lc
    print(f"(c) evaluation at T = {bc.c_factor} x Lc = {T}, batch {bc.c_batch}, no gradients, fresh processes")
    out = {"T": T, "batch": bc.c_batch}
    for name, chunked in (("chunked", True), ("full_logits", False)):
        r = out[name] = in_fresh_process(eval_point, asdict(bc), chunked)
        print(f"  {name:11s}: peak {r['mem_gib']:.3f} GiB (eval {r['step_gib']:.3f}), {r['eval_s']:.3f} s, "
              f"loss {r['loss']:.4f}", flush=True)
    return out


# ----------------------------------------------------------------------------- (d) MFU on a GPU
def bench_mfu(bc, device):
    T, B = bc.d_tokens, bc.d_batch
    cfg = M.ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632, vocab_size=32000,
                        max_seq_len=T)  # TinyLlama-1.1B
    torch.manual_seed(0)
    model = M.LLaMA(cfg).to(device).train()
    idx = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    N = sum(p.numel() for p in model.parameters()) - model.tok_embeddings.weight.numel()
    flops = (6 * N + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * T) * B * T

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        with autocast(device):
            loss = model(idx, targets=idx)  # the loss value is beside the point; the FLOPs are the same
        loss.backward()

    for _ in range(max(bc.warmup, 2)):
        fwd_bwd()
    t = statistics.median(timed(fwd_bwd, device)[0] for _ in range(bc.reps))
    r = {"config": asdict(cfg), "params_counted": N, "tokens": B * T, "step_s": t, "model_tflops": flops / t / 1e12,
         "peak_tflops": bc.peak_tflops, "mfu": flops / t / (bc.peak_tflops * 1e12)}
    print(f"(d) 1.1B LLaMA, {B} x {T} tokens, bf16: {t * 1e3:.1f} ms/step, {r['model_tflops']:.1f} TFLOP/s, "
          f"MFU {r['mfu']:.1%} of {bc.peak_tflops:.0f}", flush=True)
    return r


# ----------------------------------------------------------------------------- report
def machine(device):
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from transformers import __version__ as hf_version
    except ImportError:
        hf_version = None
    m = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
         "transformers": hf_version, "device": device, "load_avg_1min": os.getloadavg()[0]}
    if device.startswith("cuda"):
        m["gpu"] = torch.cuda.get_device_name(device)
    return m


def ratios(res, bc):
    """The headline ratios, each with the issue's target where it sets one."""
    out = {}
    for row in res.get("a", {}).get("rows", []):
        out[f"a: model.py / transformers tokens/s, T={row['T']}"] = (row["ratio"], ">= 1.2")
        out[f"a: the same in CPU time, T={row['T']}"] = (row["ratio_cpu"], "")
    if "b" in res:
        pose, full = res["b"]["pose"], res["b"]["full"]
        lo, hi = str(min(ints(bc.b_factors)) * bc.Lc), str(max(ints(bc.b_factors)) * bc.Lc)
        f = int(hi) // bc.Lc
        out[f"b: PoSE peak memory {f}·Lc / 1·Lc (process)"] = (pose[hi]["mem_gib"] / pose[lo]["mem_gib"], "<= 1.05")
        out[f"b: PoSE step memory {f}·Lc / 1·Lc"] = (pose[hi]["step_gib"] / pose[lo]["step_gib"], "<= 1.05")
        out[f"b: PoSE step time {f}·Lc / 1·Lc"] = (pose[hi]["step_s"] / pose[lo]["step_s"], "")
        out[f"b: PoSE / Full step time at {f}·Lc (paired median)"] = (pose[hi]["time_vs_full"], "<= 0.125")
        out[f"b: the same in CPU time at {f}·Lc"] = (pose[hi]["cpu_vs_full"], "")
        out[f"b: PoSE / Full peak memory at {f}·Lc (process)"] = (pose[hi]["mem_gib"] / full[hi]["mem_gib"], "")
        out[f"b: PoSE / Full step memory at {f}·Lc"] = (pose[hi]["step_gib"] / full[hi]["step_gib"], "")
    if "c" in res:
        chunked, full = res["c"]["chunked"], res["c"]["full_logits"]
        out["c: chunked / full-logits eval peak memory (process)"] = (chunked["mem_gib"] / full["mem_gib"], "")
        out["c: chunked / full-logits eval memory (above baseline)"] = (chunked["step_gib"] / full["step_gib"], "")
    if isinstance(res.get("d"), dict) and "mfu" in res["d"]:
        out[f"d: MFU, 1.1B LLaMA, {res['d']['tokens']} tokens, bf16"] = (res["d"]["mfu"], "")
    return out


def markdown(res, bc, command):
    m = res["machine"]
    lines = ["# Benchmarks", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
             f"transformers {m['transformers']}, device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "")
             + f"; 1-minute load average {m['load_avg_1min']:.1f} at the start (a shared machine: only ratios count).",
             "", f"Command: `{command}`", ""]
    if "a" in res:
        c = res["a"]["config"]
        lines += [f"## (a) model.py vs transformers `LlamaForCausalLM`, forward + backward with the full LM loss", "",
                  f"dim {c['dim']}, {c['n_layers']} layers, {c['n_heads']} heads / {c['n_kv_heads']} kv heads, "
                  f"ffn {c['hidden_dim']}, vocab {c['vocab_size']} ({c['parameters'] / 1e6:.1f}M parameters), "
                  f"identical weights; median of {bc.reps} interleaved repetitions after {bc.warmup} warm-up.", "",
                  "| T | batch | model.py tok/s | transformers tok/s | ratio (paired median) | range over reps "
                  "| ratio of CPU time | model.py / transformers, share of matmul peak | 1.2× would need |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["a"]["rows"]:
            lines.append(f"| {r['T']} | {r['batch']} | {r['ours_tok_s']:.0f} | {r['hf_tok_s']:.0f} | "
                         f"{r['ratio']:.3f} | {r['ratio_min']:.2f}–{r['ratio_max']:.2f} | {r['ratio_cpu']:.3f} | "
                         f"{r['ours_of_peak']:.0%} / {r['hf_of_peak']:.0%} | {1.2 * r['hf_of_peak']:.0%} |")
        peaks = ", ".join(f"{r['matmul_gflops']:.0f}" for r in res["a"]["rows"])
        lines += ["", "*Share of matmul peak*: model FLOPs (6 per non-embedding parameter per token, plus causal "
                  "attention's 6·L·d·T) per second, over the best n = 2048 square matmul this machine ran in the same "
                  f"minutes ({peaks} GFLOP/s). "
                  "Both models run the same matmuls and attention kernels, so a ratio of 1.2 needs model.py at 1.2× "
                  "transformers' share of that peak (last column), every norm, softmax and elementwise operation "
                  "included, or else less arithmetic.", ""]
    if "b" in res:
        lines += [f"## (b) one training step, PoSE vs Full-length (tiny model, Lc = {bc.Lc}, batch {bc.b_batch})", "",
                  "Memory: a fresh process per point, two steps; *peak* is the process's peak, *step* that peak less "
                  "what was in use before the first step. Time: PoSE and Full steps interleaved in one process, "
                  f"median of {bc.reps} after {bc.warmup} warm-up; PoSE/Full is the median of the paired ratios.", "",
                  "| Lt | PoSE peak GiB | PoSE step GiB | PoSE s/step | Full peak GiB | Full step GiB | Full s/step "
                  "| PoSE/Full time | PoSE/Full CPU time |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for Lt in res["b"]["pose"]:
            p, f = res["b"]["pose"][Lt], res["b"]["full"][Lt]
            lines.append(f"| {Lt} ({int(Lt) // bc.Lc}·Lc) | {p['mem_gib']:.3f} | {p['step_gib']:.3f} | "
                         f"{p['step_s']:.3f} | {f['mem_gib']:.3f} | {f['step_gib']:.3f} | {f['step_s']:.3f} | "
                         f"{p['time_vs_full']:.3f} | {p['cpu_vs_full']:.3f} |")
        lines += ["", "![memory and time](../plots/memory_time.png)", ""]
    if "c" in res:
        c = res["c"]
        lines += [f"## (c) evaluation memory at T = {c['T']} ({bc.c_factor}·Lc), batch {c['batch']}, no gradients", "",
                  "| loss computed as | peak GiB | above baseline GiB | s |", "|---|---:|---:|---:|"]
        for name, label in (("chunked", "chunked (`model(idx, targets=y)`)"),
                            ("full_logits", "full logits + `F.cross_entropy`")):
            r = c[name]
            lines.append(f"| {label} | {r['mem_gib']:.3f} | {r['step_gib']:.3f} | {r['eval_s']:.3f} |")
        lines.append("")
    if "d" in res:
        d = res["d"]
        lines += ["## (d) model FLOPs utilisation", ""]
        if "mfu" in d:
            lines += [f"1.1B LLaMA (TinyLlama's shape), {d['tokens']} tokens, bf16 autocast, forward + backward: "
                      f"{d['step_s'] * 1e3:.1f} ms/step, {d['model_tflops']:.1f} TFLOP/s, **MFU {d['mfu']:.1%}** of "
                      f"{d['peak_tflops']:.0f} TFLOP/s; FLOPs = (6·N + 12·L·d·T)·tokens (PaLM's count).", ""]
        else:
            lines += [d["skipped"], ""]
    lines += ["## Ratios", "", "| ratio | value | target |", "|---|---:|---|"]
    for name, (v, target) in ratios(res, bc).items():
        lines.append(f"| {name} | {v:.3f} | {target} |")
    return "\n".join(lines) + "\n"


def write(res, bc, command):
    """results/bench.md with every part run so far, and, once (b) ran, bench.json and the memory/time figure."""
    os.makedirs(bc.out, exist_ok=True)
    with open(os.path.join(bc.out, "bench.md"), "w") as f:
        f.write(markdown(res, bc, command))
    if "b" in res:  # plots.py's form: {method: {Lt: {"mem_gib", "step_s", ...}}}
        with open(os.path.join(bc.out, "bench.json"), "w") as f:
            json.dump(res["b"], f, indent=1)
        import plots
        plots.plot_memory_time(res["b"], os.path.join(bc.plots, "memory_time.png"))


def main(bc, command):
    device = setup(bc)
    parts = bc.parts.split(",")
    res = {"machine": machine(device), "config": asdict(bc)}
    print(json.dumps(res["machine"]))
    if "d" in parts and not device.startswith("cuda"):
        res["d"] = {"skipped": "(d) skipped: MFU is measured on a GPU only, and none is available here."}
        print(res["d"]["skipped"])
    for part, run in (("a", lambda: bench_vs_transformers(bc, device)), ("b", lambda: bench_pose_vs_full(bc, device)),
                      ("c", lambda: bench_eval_memory(bc)), ("d", lambda: bench_mfu(bc, device))):
        if part in parts and part not in res:
            res[part] = run()
            write(res, bc, command)  # after every part, so an interrupted run keeps what it measured
    print("\n" + markdown(res, bc, command))
    return res


if __name__ == "__main__":
    main(parse_config(BenchConfig, sys.argv[1:], __doc__), "python " + " ".join(sys.argv))
