"""bench.py: model.py against transformers, PoSE against Full-length, in memory and time; every figure a ratio.

    python bench.py                          # the CPU parts a, b, c, d, ~10 min on 2 cores
    python bench.py --parts=b,c --reps=3     # a subset (the other parts' last results stay in the files)
    python bench.py --a_lengths=256,1024,4096 --threads=1  # (a) at 4096 tokens too (+4 min on a CPU), 1 thread
    python bench.py --parts=gpu              # the full-scale check on one GPU, under 6 minutes, nothing downloaded
    python bench.py -h                       # every option

Each ratio compares two things measured side by side in one run, interleaved, several repetitions, median
reported: absolute timings on a shared machine mean little, ratios taken in the same minutes do. On a CPU that
other programs share, --threads=1 keeps them steady: with two threads every operator waits for the slower core.
(a) forward + backward tokens/s of model.py against transformers' LlamaForCausalLM (sdpa attention) with identical
    weights (saved by save_pretrained, loaded by from_pretrained) and config, both computing the full LM loss
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
(d) the loss of a training step: model.py's chunked cross-entropy, whose forward pass already computes its
    gradients (the output projection runs once), against the plain alternative -- the same chunks under
    activation checkpointing, which runs the projection again in the backward pass -- and against full logits.
    Forward + backward of the tiny model (batch 16 x 127) and of (a)'s 32k-vocabulary model (1 x 1024).
gpu: one GPU, a TinyLlama-shaped random model (1.1B, GQA 32/4, vocab 32000): forward + backward tokens/s at 2k of
    model.py and of transformers (SDPA), each with and without torch.compile, in bf16, with MFU against the GPU's
    bf16 peak; one PoSE step (2k window, Lt = 16k) and one Full-length step (16k) as train.py takes them (float32
    weights, bf16 autocast, gradient checkpointing, AdamW), peak memory each; evaluation at 32k with the chunked
    loss, peak memory. MFU = (6 N + 12 L d T) FLOPs per token / time / peak, PaLM's count (Chowdhery et al. 2022,
    App. B): N parameters less the input embedding (a lookup), L layers, d = n_heads x head_dim, T the sequence
    length, attention counted dense. On a CPU it runs at a toy size (the test suite does), which checks the code,
    not the numbers.

Writes results/bench.json ({part: results}, each with the command and machine that measured it; part b is what
plots/memory_time.png is drawn from), results/bench_gpu.json, and results/bench.md rendered from both.
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
from torch.utils.checkpoint import checkpoint

import checkpoint as C
import model as M
import pose
from config import parse_config
from train import TrainConfig, check_config, extend_context, get_batch, load_model


@dataclass
class BenchConfig:
    parts: str = "a,b,c,d"         # which parts to run: a, b, c, d (any machine) and gpu (one GPU; toy size on a CPU)
    device: str = "auto"           # auto | cpu | cuda
    threads: int = 0               # torch CPU threads; 0: torch's default (one per core)
    reps: int = 5                  # timed repetitions per point, after warm-up; medians are reported
    warmup: int = 1                # untimed repetitions first
    # (a): a small LLaMA shape that two CPU cores run in reasonable time (GQA, LLaMA's 32k vocabulary)
    a_dim: int = 512               # width
    a_layers: int = 8              # blocks
    a_heads: int = 8               # query heads
    a_kv_heads: int = 4            # key/value heads
    a_vocab: int = 32000           # vocabulary
    a_lengths: str = ""            # "": 256,1024 on a CPU (4096 adds four minutes there), 256,1024,4096 on a GPU
    a_batch: int = 1               # rows
    # (b), (c), (d): the tiny model of configs/tiny_*.toml (train.py's defaults: dim 256, 4 layers, 8/4 heads, 4k vocab)
    data_dir: str = "data/tok/web-bpe4k"  # prepared data for (b)'s windows
    Lc: int = 128                  # the training window
    b_factors: str = "1,2,4,8,16"  # Lt = factor x Lc
    b_batch: int = 4               # rows per step
    c_factor: int = 32             # evaluation length T = c_factor x Lc
    c_batch: int = 1               # rows
    # gpu: TinyLlama's shape; on a CPU a toy of the same form, so that the suite can run the code
    gpu_shape: str = ""            # tinyllama | toy; "": tinyllama on a GPU, toy on a CPU
    gpu_compile: bool = True       # also time both models under torch.compile
    peak_tflops: float = 989.0     # the accelerator's dense bf16 peak; 989 for H100 / H200 SXM
    # output
    out: str = "results"           # bench.json, bench_gpu.json, bench.md
    plots: str = "plots"           # memory_time.png


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
                     rope_type="linear" if Lt > bc.Lc else "none", device=device)  # Lt = Lc: nothing to extend
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


# ----------------------------------------------------------------------------- (d) the loss of a training step
def checkpointed_chunks(h, weight, targets, reduction="mean", chunk=1024):
    """The plain alternative to model.py's loss: cross-entropy chunk by chunk, each chunk's logits recomputed in
    the backward pass (activation checkpointing), so the output projection runs twice."""
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)

    def nll(hc, tc):
        return F.cross_entropy((hc @ weight.t()).float(), tc, ignore_index=-1, reduction="sum")
    total = sum(checkpoint(nll, h[i:i + chunk], targets[i:i + chunk], use_reentrant=False)
                for i in range(0, h.size(0), chunk))
    return total / (targets != -1).sum().clamp(min=1)


def full_logits(h, weight, targets, reduction="mean"):
    return F.cross_entropy((h @ weight.t()).float().flatten(0, -2), targets.flatten(), ignore_index=-1)


def bench_loss(bc, device):
    """Training-step time of the model with each loss (LLaMA.forward's loss swapped in place, then restored)."""
    losses = {"model.py": M.chunked_cross_entropy, "checkpointed chunks": checkpointed_chunks,
              "full logits": full_logits}
    shapes = {"tiny": (M.ModelConfig(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=4096,
                                     tie_embeddings=True), 16, bc.Lc - 1),
              "32k vocabulary": (M.ModelConfig(dim=bc.a_dim, n_layers=bc.a_layers, n_heads=bc.a_heads,
                                               n_kv_heads=bc.a_kv_heads, vocab_size=bc.a_vocab), 1, 1024)}
    print("(d) the loss of a training step: model.py's (gradients in the forward pass) vs checkpointed chunks vs "
          "full logits")
    rows = []
    for name, (cfg, B, T) in shapes.items():
        torch.manual_seed(0)
        model = M.LLaMA(cfg).to(device).train()
        idx, y = (torch.randint(0, cfg.vocab_size, (B, T), device=device) for _ in range(2))
        wall = {k: [] for k in losses}

        def step(loss):
            M.chunked_cross_entropy = loss
            try:
                model.zero_grad(set_to_none=True)
                with autocast(device):
                    model(idx, targets=y).backward()
            finally:
                M.chunked_cross_entropy = losses["model.py"]
        for r in range(bc.warmup + bc.reps):
            for k in losses if r % 2 == 0 else reversed(losses):
                w, _, _ = timed(lambda: step(losses[k]), device)
                if r >= bc.warmup:
                    wall[k].append(w)
        row = {"model": name, "batch": B, "T": T, "vocab": cfg.vocab_size,
               "step_s": {k: statistics.median(v) for k, v in wall.items()},
               "vs_model_py": {k: paired_median(v, wall["model.py"]) for k, v in wall.items()}}
        rows.append(row)
        print(f"  {name}: " + ", ".join(f"{k} {row['step_s'][k]:.3f} s ({row['vs_model_py'][k]:.3f}x)"
                                         for k in losses), flush=True)
    return {"rows": rows}


# ----------------------------------------------------------------------------- gpu: the full-scale check
GPU_SHAPES = {  # TinyLlama-1.1B with the paper's 2k window, 16k target and a 32k evaluation; a toy of its form
    "tinyllama": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632, vocab_size=32000,
                      Lc=2048, Lt=16384, T_eval=32768),
    "toy": dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, hidden_dim=160, vocab_size=512, Lc=64, Lt=512,
                T_eval=1024),
}


def bench_gpu(bc, device):
    import transformers
    name = bc.gpu_shape or ("tinyllama" if device.startswith("cuda") else "toy")
    shape = dict(GPU_SHAPES[name])
    Lc, Lt, T_eval = shape.pop("Lc"), shape.pop("Lt"), shape.pop("T_eval")
    cfg = M.ModelConfig(**shape, max_seq_len=Lc)
    torch.manual_seed(0)
    ours = M.LLaMA(cfg)
    with tempfile.TemporaryDirectory() as d:
        C.save_pretrained(ours, d)
        hf = transformers.LlamaForCausalLM.from_pretrained(d, attn_implementation="sdpa", dtype=torch.bfloat16)
    ours, hf = ours.to(device, torch.bfloat16).train(), hf.to(device).train()
    params = sum(p.numel() for p in ours.parameters())
    N = params - ours.tok_embeddings.weight.numel()
    flops = (6 * N + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * Lc) * Lc  # one row of Lc tokens
    peak = bc.peak_tflops * 1e12 if device.startswith("cuda") else matmul_peak(device)
    print(f"gpu: {name} ({params / 1e6:,.1f}M parameters) on {device}, bf16; Lc = {Lc}, Lt = {Lt}, eval {T_eval}")
    idx = torch.randint(0, cfg.vocab_size, (1, Lc), device=device)
    targets = torch.cat((idx[:, 1:], torch.full_like(idx[:, :1], -1)), dim=1)  # what HF's labels=idx scores
    out = {"shape": name, "config": asdict(cfg), "parameters": params, "Lc": Lc, "Lt": Lt, "T_eval": T_eval,
           "peak_flops": peak, "throughput": []}
    for label, model, loss in (("model.py", ours, lambda m: m(idx, targets=targets)),
                               ("transformers", hf, lambda m: m(idx, labels=idx).loss)):
        for compiled in (False, True) if bc.gpu_compile else (False,):
            fn = torch.compile(model) if compiled else model

            def fwd_bwd():
                model.zero_grad(set_to_none=True)
                loss(fn).backward()
            first = timed(fwd_bwd, device)[0]  # with torch.compile: the compilation
            for _ in range(bc.warmup):
                fwd_bwd()
            t = statistics.median(timed(fwd_bwd, device)[0] for _ in range(bc.reps))
            row = {"model": label, "compile": compiled, "tok_s": Lc / t, "step_s": t, "first_s": first,
                   "mfu": flops / t / peak}
            out["throughput"].append(row)
            print(f"  {label}{' compiled' if compiled else ''}: {row['tok_s']:,.0f} tok/s, MFU {row['mfu']:.1%} "
                  f"(first call {first:.1f} s)", flush=True)
    del ours, hf
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # one step of each method as train.py takes it: float32 weights, bf16 autocast, checkpointing, AdamW
    tc = {m: TrainConfig(method=m, Lc=Lc, Lt=Lt, rope_type="linear", batch_size=1, dtype="bfloat16",
                         grad_checkpointing=True, device=device) for m in ("pose", "full")}
    torch.manual_seed(0)
    model = M.LLaMA(extend_context(cfg, tc["pose"]))
    model.gradient_checkpointing = True
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    doc, rng = np.random.default_rng(0).integers(0, cfg.vocab_size, max(Lt, 5 * Lc)), np.random.default_rng(1)
    for method in ("pose", "full", "pose"):  # PoSE again: its peak after Full's, with AdamW's state in place
        tokens, pos = (torch.from_numpy(a)[None].to(device) for a in pose.sample(doc, Lc, Lt, method, rng=rng))
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)

        def step():
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                loss = model(tokens[:, :-1], pos[:, :-1], tokens[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        t = timed(step, device)[0]
        out[method] = {"tokens": tokens.size(1) - 1, "step_s": t, "peak_gib": memory_peak(device) / GiB}
        print(f"  {method} step: {out[method]['tokens']} tokens, {t:.2f} s, peak {out[method]['peak_gib']:.2f} GiB",
              flush=True)
    model.eval()
    idx = torch.randint(0, cfg.vocab_size, (1, T_eval + 1), device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        t = timed(lambda: model(idx[:, :-1], targets=idx[:, 1:]), device)[0]
    out["eval"] = {"tokens": T_eval, "s": t, "peak_gib": memory_peak(device) / GiB}
    print(f"  evaluation at {T_eval}, chunked loss: {t:.2f} s, peak {out['eval']['peak_gib']:.2f} GiB", flush=True)
    return out


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


def ratios(res):
    """The headline ratios, each with the target set for it, where one is."""
    out = {}
    for row in res.get("a", {}).get("rows", []):
        out[f"a: model.py / transformers tokens/s, T={row['T']}"] = (row["ratio"], ">= 1.2")
        out[f"a: the same in CPU time, T={row['T']}"] = (row["ratio_cpu"], "")
    if "b" in res:
        pose_, full, Lc = res["b"]["pose"], res["b"]["full"], res["b"]["bc"]["Lc"]
        lo, hi = min(pose_, key=int), max(pose_, key=int)
        f = int(hi) // Lc
        out[f"b: PoSE peak memory {f}·Lc / 1·Lc (process)"] = (pose_[hi]["mem_gib"] / pose_[lo]["mem_gib"], "<= 1.05")
        out[f"b: PoSE step memory {f}·Lc / 1·Lc"] = (pose_[hi]["step_gib"] / pose_[lo]["step_gib"], "<= 1.05")
        out[f"b: PoSE step time {f}·Lc / 1·Lc"] = (pose_[hi]["step_s"] / pose_[lo]["step_s"], "")
        out[f"b: PoSE / Full step time at {f}·Lc (paired median)"] = (pose_[hi]["time_vs_full"], "<= 0.125")
        out[f"b: the same in CPU time at {f}·Lc"] = (pose_[hi]["cpu_vs_full"], "")
        out[f"b: PoSE / Full peak memory at {f}·Lc (process)"] = (pose_[hi]["mem_gib"] / full[hi]["mem_gib"], "")
        out[f"b: PoSE / Full step memory at {f}·Lc"] = (pose_[hi]["step_gib"] / full[hi]["step_gib"], "")
    if "c" in res:
        chunked, full = res["c"]["chunked"], res["c"]["full_logits"]
        out["c: chunked / full-logits eval peak memory (process)"] = (chunked["mem_gib"] / full["mem_gib"], "")
        out["c: chunked / full-logits eval memory (above baseline)"] = (chunked["step_gib"] / full["step_gib"], "")
    for row in res.get("d", {}).get("rows", []):
        out[f"d: step time, checkpointed chunks / model.py's loss, {row['model']}"] = (
            row["vs_model_py"]["checkpointed chunks"], "> 1: model.py's loss earns its lines")
    return out


def header(p):
    m, c = p["machine"], p["bc"]
    return (f"Measured by `{p['command']}` on {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
            f"({m['torch_threads']} threads), transformers {m['transformers']}, device {m['device']}"
            + (f" ({m['gpu']})" if "gpu" in m else "") + f"; 1-minute load average {m['load_avg_1min']:.1f}; "
            f"median of {c['reps']} interleaved repetitions after {c['warmup']} warm-up.")


def markdown(res):
    lines = ["# Benchmarks", "", "Each part as last measured (a shared machine: only the ratios count). "
             "`python bench.py` reruns a, b, c, d; `python bench.py --parts=gpu` the GPU check.", ""]
    if "a" in res:
        c = res["a"]["config"]
        lines += ["## (a) model.py vs transformers `LlamaForCausalLM`, forward + backward with the full LM loss", "",
                  header(res["a"]), "",
                  f"dim {c['dim']}, {c['n_layers']} layers, {c['n_heads']} heads / {c['n_kv_heads']} kv heads, "
                  f"ffn {c['hidden_dim']}, vocab {c['vocab_size']} ({c['parameters'] / 1e6:.1f}M parameters), "
                  "identical weights.", "",
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
        b = res["b"]
        lines += [f"## (b) one training step, PoSE vs Full-length (tiny model, Lc = {b['bc']['Lc']}, "
                  f"batch {b['bc']['b_batch']})", "", header(b), "",
                  "Memory: a fresh process per point, two steps; *peak* is the process's peak, *step* that peak less "
                  "what was in use before the first step. Time: PoSE and Full steps interleaved in one process; "
                  "PoSE/Full is the median of the paired ratios.", "",
                  "| Lt | PoSE peak GiB | PoSE step GiB | PoSE s/step | Full peak GiB | Full step GiB | Full s/step "
                  "| PoSE/Full time | PoSE/Full CPU time |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for Lt in b["pose"]:
            p, f = b["pose"][Lt], b["full"][Lt]
            lines.append(f"| {Lt} ({int(Lt) // b['bc']['Lc']}·Lc) | {p['mem_gib']:.3f} | {p['step_gib']:.3f} | "
                         f"{p['step_s']:.3f} | {f['mem_gib']:.3f} | {f['step_gib']:.3f} | {f['step_s']:.3f} | "
                         f"{p['time_vs_full']:.3f} | {p['cpu_vs_full']:.3f} |")
        lines += ["", "![memory and time](../plots/memory_time.png)", ""]
    if "c" in res:
        c = res["c"]
        lines += [f"## (c) evaluation memory at T = {c['T']} ({c['bc']['c_factor']}·Lc), batch {c['batch']}, "
                  "no gradients", "", header(c), "",
                  "| loss computed as | peak GiB | above baseline GiB | s |", "|---|---:|---:|---:|"]
        for name, label in (("chunked", "chunked (`model(idx, targets=y)`)"),
                            ("full_logits", "full logits + `F.cross_entropy`")):
            r = c[name]
            lines.append(f"| {label} | {r['mem_gib']:.3f} | {r['step_gib']:.3f} | {r['eval_s']:.3f} |")
        lines.append("")
    if "d" in res:
        lines += ["## (d) the loss of a training step: is model.py's hand-written gradient worth its lines?", "",
                  header(res["d"]), "",
                  "Forward + backward of the whole model, its loss computed three ways: model.py's "
                  "`chunked_cross_entropy` (each chunk's gradient computed in the forward pass, so the output "
                  "projection runs once), the same chunks under activation checkpointing (the projection runs again "
                  "in the backward pass), and full logits with `F.cross_entropy`.", "",
                  "| model | batch × T | vocab | model.py s/step | checkpointed chunks | full logits |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in res["d"]["rows"]:
            s, v = r["step_s"], r["vs_model_py"]
            lines.append(f"| {r['model']} | {r['batch']} × {r['T']} | {r['vocab']} | {s['model.py']:.3f} | "
                         f"{s['checkpointed chunks']:.3f} ({v['checkpointed chunks']:.2f}×) | "
                         f"{s['full logits']:.3f} ({v['full logits']:.2f}×) |")
        lines.append("")
    if "gpu" in res:
        g = res["gpu"]
        lines += [f"## gpu: {g['shape']} ({g['parameters'] / 1e6:,.1f}M parameters), the full-scale check", "",
                  header(g), "", "| forward + backward, bf16, 1 × {} tokens | tok/s | MFU | first call s |".format(
                      g["Lc"]), "|---|---:|---:|---:|"]
        for r in g["throughput"]:
            lines.append(f"| {r['model']}{' + torch.compile' if r['compile'] else ''} | {r['tok_s']:,.0f} | "
                         f"{r['mfu']:.1%} | {r['first_s']:.1f} |")
        lines += ["", f"MFU against {g['peak_flops'] / 1e12:.3g} TFLOP/s (PaLM's FLOP count). One training step as "
                  "train.py takes it (float32 weights, bf16 autocast, gradient checkpointing, AdamW):", "",
                  "| step | tokens | s | peak GiB |", "|---|---:|---:|---:|",
                  f"| PoSE (Lc = {g['Lc']}, Lt = {g['Lt']}) | {g['pose']['tokens']} | {g['pose']['step_s']:.2f} | "
                  f"{g['pose']['peak_gib']:.2f} |",
                  f"| Full-length (Lt = {g['Lt']}) | {g['full']['tokens']} | {g['full']['step_s']:.2f} | "
                  f"{g['full']['peak_gib']:.2f} |",
                  f"| evaluation, chunked loss, no gradients | {g['eval']['tokens']} | {g['eval']['s']:.2f} | "
                  f"{g['eval']['peak_gib']:.2f} |", ""]
        if not g["machine"]["device"].startswith("cuda"):
            lines += ["(Measured at toy size on a CPU, where peak memory is the process's and only shows that the "
                      "code runs; the numbers that matter come from a GPU.)", ""]
    else:
        lines += ["## gpu", "", "Not measured yet: `python bench.py --parts=gpu` on one GPU (under 6 minutes).", ""]
    lines += ["## Ratios", "", "| ratio | value | target |", "|---|---:|---|"]
    for name, (v, target) in ratios(res).items():
        lines.append(f"| {name} | {v:.3f} | {target} |")
    return "\n".join(lines) + "\n"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def write(res, bc):
    """Merge this run's parts into results/bench.json (CPU parts) and bench_gpu.json, then render bench.md from
    both and redraw the memory/time figure from part b."""
    os.makedirs(bc.out, exist_ok=True)
    paths = {"cpu": os.path.join(bc.out, "bench.json"), "gpu": os.path.join(bc.out, "bench_gpu.json")}
    merged = {}
    for kind, path in paths.items():
        stored = load(path) | {k: v for k, v in res.items() if (k == "gpu") == (kind == "gpu")}
        if stored:
            with open(path, "w") as f:
                json.dump(stored, f, indent=1)
        merged |= stored
    with open(os.path.join(bc.out, "bench.md"), "w") as f:
        f.write(markdown(merged))
    if "b" in res:
        import plots
        plots.plot_memory_time({m: res["b"][m] for m in ("pose", "full")}, os.path.join(bc.plots, "memory_time.png"))
    return merged


def main(bc, command):
    device = setup(bc)
    parts = bc.parts.split(",")
    runs = {"a": lambda: bench_vs_transformers(bc, device), "b": lambda: bench_pose_vs_full(bc, device),
            "c": lambda: bench_eval_memory(bc), "d": lambda: bench_loss(bc, device),
            "gpu": lambda: bench_gpu(bc, device)}
    unknown = set(parts) - set(runs)
    if unknown:
        sys.exit(f"error: unknown part(s) {', '.join(sorted(unknown))}; expected some of {', '.join(runs)}")
    print(json.dumps(machine(device)))
    res = {}
    for part in runs:
        if part in parts:
            res[part] = runs[part]() | {"command": command, "machine": machine(device), "bc": asdict(bc)}
            merged = write(res, bc)  # after every part, so an interrupted run keeps what it measured
    print("\n" + markdown(merged))
    return res


if __name__ == "__main__":
    main(parse_config(BenchConfig, sys.argv[1:], __doc__), "python " + " ".join(sys.argv))
