"""bench_engineering.py: how fast and lean the code is -- model.py against transformers, the loss, the GPU check.

    python bench_engineering.py                               # model, eval, loss: about 7 min on 2 cores
    python bench_engineering.py --parts=loss --reps=3         # a subset (the other parts' last results stay)
    python bench_engineering.py --lengths=256,1024,4096 --threads=1  # model at 4096 tokens too (+4 min on a CPU)
    python bench_engineering.py --parts=gpu                   # the full-scale check on one GPU, under 6 minutes
    python bench_engineering.py -h                            # every option

Each ratio compares two things measured side by side in one run, interleaved, several repetitions, median reported
(bench.py's timing: absolute timings on a shared machine mean little, ratios taken in the same minutes do). The
README holds the targets; bench.py is the paper's Figure 3.
model: forward + backward tokens/s of model.py against transformers' LlamaForCausalLM (sdpa attention) with identical
    weights (save_pretrained, then from_pretrained) and config, both computing the full LM loss; float32 on a CPU,
    bf16 autocast on a GPU; the ratio is the median of HF's time / ours over pairs run back to back. Beside it, each
    model's FLOP/s as a share of the best large square matmul measured in the same minutes: how much of what the
    machine's BLAS can do each model turns into model FLOPs, and so how much room a ratio has.
eval: evaluation at T = eval_factor x Lc without gradients, a fresh process each: the chunked loss
    (model(idx, targets=...)) against full logits then F.cross_entropy, peak memory and time.
loss: forward + backward with model.py's chunked cross-entropy, whose forward pass already computes its gradients
    (the output projection runs once), against the same chunks under activation checkpointing (the projection runs
    again in the backward pass) and against full logits; the tiny model (16 x 127) and model's 32k-vocabulary one.
gpu: a TinyLlama-shaped random model (1.1B, GQA 32/4, vocab 32000) in bf16: forward + backward tokens/s at 2k of
    model.py and transformers (SDPA), with and without torch.compile, MFU against the GPU's bf16 peak; one PoSE step
    (2k window, Lt = 16k) and one Full-length step (16k) as train.py takes them (float32 weights, bf16 autocast,
    gradient checkpointing, AdamW), peak memory each; evaluation at 32k with the chunked loss. MFU = (6 N + 12 L d T)
    FLOPs per token / time / peak, PaLM's count (Chowdhery et al. 2022, App. B): N parameters less the input
    embedding, L layers, d = n_heads x head_dim, T the sequence length, attention counted dense. On a CPU it runs at
    a toy size (the test suite does), which checks the code, not the numbers.

Writes results/bench_engineering.json ({"model" | "eval" | "loss": results}), results/bench_gpu.json ({"gpu":
results}), each part with the command, machine and options that measured it, and results/bench_engineering.md
rendered from both.
"""
import json
import math
import os
import statistics
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as torch_checkpoint

import model
import pose
from checkpoint import save_pretrained
from config import heads, in_range, int_list, parse_config, writable
from measure import GiB, check_shared, header, in_fresh_process, machine, paired_median, setup, timed
from model import LLaMA, ModelConfig
from train import TrainConfig, load_model
from util import atomic_open, markdown, memory_now, memory_peak, on_signals

GPU_SHAPES = {  # TinyLlama-1.1B with the paper's 2k window, 16k target and a 32k evaluation; a toy of its form
    "tinyllama": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632, vocab_size=32000,
                      Lc=2048, Lt=16384, T_eval=32768),
    "toy": dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, hidden_dim=160, vocab_size=512, Lc=64, Lt=512,
                T_eval=1024),
}
PARTS = ("model", "eval", "loss", "gpu")


@dataclass
class EngineeringConfig:
    parts: str = "model,eval,loss"  # which to run: model, eval, loss (any machine), gpu (one GPU; toy size on a CPU)
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    threads: int = 0               # torch CPU threads; 0: torch's default (one per core)
    reps: int = 5                  # timed repetitions per point, after warm-up; medians are reported
    warmup: int = 1                # untimed repetitions first
    # model, and loss's second model: a small LLaMA shape that two CPU cores run in reasonable time (GQA, 32k vocab)
    dim: int = 512                 # width of model's LLaMA (and of loss's 32k-vocabulary one)
    n_layers: int = 8              # its blocks
    n_heads: int = 8               # its query heads
    n_kv_heads: int = 4            # its key/value heads
    vocab_size: int = 32000        # its vocabulary
    lengths: str = ""              # model's T; "": 256,1024 on a CPU (4096 adds 4 min there), 256,1024,4096 on a GPU
    batch: int = 1                 # model's rows
    # eval, loss: the tiny model of configs/tiny_*.toml (train.py's defaults: dim 256, 4 layers, 8/4 heads, 4k vocab)
    Lc: int = 128                  # the tiny model's training window: loss's rows hold Lc - 1 tokens
    eval_factor: int = 32          # evaluation length T = eval_factor x Lc
    eval_batch: int = 1            # evaluation rows
    # gpu: TinyLlama's shape; on a CPU a toy of the same form, so that the suite can run the code
    gpu_shape: str = ""            # tinyllama | toy; "": tinyllama on a GPU, toy on a CPU
    gpu_compile: bool = True       # also time both models under torch.compile
    peak_tflops: float = 989.0     # the accelerator's dense bf16 peak; 989 for H100 / H200 SXM
    out: str = "results"           # bench_engineering.json, bench_gpu.json, bench_engineering.md

    def check(self):
        """A ValueError naming the first option that cannot work."""
        check_shared(self, positive=("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "batch", "Lc",
                                     "eval_factor", "eval_batch"))
        unknown = sorted(set(self.parts.split(",")) - set(PARTS))
        if unknown:
            raise ValueError(f"--parts={self.parts}: unknown {', '.join(unknown)}; expected some of {', '.join(PARTS)}")
        if self.lengths:
            int_list("lengths", self.lengths)
        if self.gpu_shape not in ("", *GPU_SHAPES):
            raise ValueError(f"--gpu_shape={self.gpu_shape}: expected {' or '.join(GPU_SHAPES)} (or empty)")
        heads(self)
        in_range(self, "peak_tflops", 1e-9, math.inf, "a positive number")
        writable(self, "out")


def autocast(device):
    """bf16 autocast on a GPU (train.py's dtype=bfloat16), plain float32 on a CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


def matmul_peak(device, n=2048, reps=5):
    """FLOP/s of the best of `reps` n x n matmuls in the dtype the models compute in: what this machine's BLAS can
    do at best, the ceiling under both models' training speed."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n**3 / min(timed(lambda: a @ b, device)[0] for _ in range(reps))


# ----------------------------------------------------------------------------- model: model.py vs transformers
def train_flops(cfg, params, tokens, T):
    """Model FLOPs of one forward + backward: 6 per parameter per token (an untied input embedding, a lookup,
    excluded) plus causal attention's 6·L·d·T per token (QKᵀ and PV, half the square; backward twice forward)."""
    matmul_params = params - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim)
    return (6 * matmul_params + 6 * cfg.n_layers * cfg.n_heads * cfg.head_dim * T) * tokens


def bench_vs_transformers(ec, device):
    import transformers  # a test requirement only: the other parts run without it
    lengths = int_list("lengths", ec.lengths or ("256,1024,4096" if device.startswith("cuda") else "256,1024"))
    torch.manual_seed(0)
    cfg = ModelConfig(dim=ec.dim, n_layers=ec.n_layers, n_heads=ec.n_heads, n_kv_heads=ec.n_kv_heads,
                      vocab_size=ec.vocab_size, max_seq_len=max(lengths))
    ours = LLaMA(cfg)
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(ours, d)
        hf = transformers.LlamaForCausalLM.from_pretrained(d, attn_implementation="sdpa", dtype=torch.float32)
    ours, hf = ours.to(device).train(), hf.to(device).train()
    params = sum(p.numel() for p in ours.parameters())
    print(f"model: model.py vs transformers {transformers.__version__}: dim {cfg.dim}, {cfg.n_layers} layers, "
          f"{cfg.n_heads} heads / {cfg.n_kv_heads} kv, ffn {cfg.hidden_dim}, vocab {cfg.vocab_size} "
          f"({params / 1e6:.1f}M parameters), batch {ec.batch}, {'bf16 autocast' if device != 'cpu' else 'float32'}")
    rows = []
    for T in lengths:
        idx = torch.randint(0, cfg.vocab_size, (ec.batch, T), device=device)
        targets = torch.cat((idx[:, 1:], torch.full_like(idx[:, :1], -1)), dim=1)  # what HF's labels=idx scores

        def fwd_bwd(llama):
            llama.zero_grad(set_to_none=True)
            with autocast(device):
                loss = ours(idx, targets=targets) if llama is ours else hf(idx, labels=idx).loss
            loss.backward()
            return loss.item()

        for _ in range(max(ec.warmup, 1)):  # the warm-up also checks that both compute the same loss
            l_ours, l_hf = fwd_bwd(ours), fwd_bwd(hf)
        assert abs(l_ours - l_hf) < 1e-3 * abs(l_hf) + (2e-2 if device != "cpu" else 0), \
            f"the two models disagree ({l_ours} vs {l_hf}): not the same weights"
        wall, cpu = {"ours": [], "hf": []}, {"ours": [], "hf": []}
        for r in range(ec.reps):  # interleaved, and the order alternates so neither always runs second
            for name in ("ours", "hf") if r % 2 == 0 else ("hf", "ours"):
                w, c, _ = timed(lambda: fwd_bwd(ours if name == "ours" else hf), device)
                wall[name].append(w)
                cpu[name].append(c)
        paired = [h / o for h, o in zip(wall["hf"], wall["ours"])]
        peak, flops = matmul_peak(device), train_flops(cfg, params, ec.batch * T, T)
        t_ours, t_hf = statistics.median(wall["ours"]), statistics.median(wall["hf"])
        row = {"T": T, "batch": ec.batch, "ours_tok_s": ec.batch * T / t_ours, "hf_tok_s": ec.batch * T / t_hf,
               "ratio": statistics.median(paired), "matmul_gflops": peak / 1e9, "ours_of_peak": flops / t_ours / peak,
               "hf_of_peak": flops / t_hf / peak, "ratio_min": min(paired), "ratio_max": max(paired),
               "ratio_cpu": paired_median(cpu["hf"], cpu["ours"]), "loss_ours": l_ours, "loss_hf": l_hf,
               "wall": wall, "cpu": cpu}
        rows.append(row)
        print(f"  T={T:5d}: model.py {row['ours_tok_s']:8.0f} tok/s, transformers {row['hf_tok_s']:8.0f} tok/s, "
              f"ratio {row['ratio']:.3f} (CPU time {row['ratio_cpu']:.3f}); of the {peak / 1e9:.0f} GFLOP/s matmul "
              f"peak: model.py {row['ours_of_peak']:.0%}, transformers {row['hf_of_peak']:.0%}", flush=True)
    return {"config": asdict(cfg) | {"parameters": params}, "rows": rows}


# ----------------------------------------------------------------------------- eval: evaluation memory
def eval_point(ec_dict, chunked):
    """Runs in a fresh process: the loss of eval_batch x (eval_factor x Lc) tokens without gradients; memory, time."""
    ec = EngineeringConfig(**ec_dict)
    device = setup(ec)
    T = ec.eval_factor * ec.Lc
    torch.manual_seed(0)
    llama = load_model(TrainConfig(method="pose", Lc=ec.Lc, Lt=T, rope_type="linear")).to(device).eval()
    idx = torch.randint(0, llama.cfg.vocab_size, (ec.eval_batch, T + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]

    @torch.no_grad()
    def loss(x, y):
        with autocast(device):
            return llama(x, targets=y) if chunked else F.cross_entropy(llama(x).flatten(0, 1), y.flatten())

    loss(x[:, :ec.Lc], y[:, :ec.Lc])  # one short window first: the libraries' lazy start-up counts as baseline
    base = memory_now(device)
    runs = [timed(lambda: loss(x, y), device) for _ in range(ec.reps)]  # (wall, cpu, loss) each
    peak = memory_peak(device)
    return {"mem_gib": peak / GiB, "step_gib": (peak - base) / GiB, "base_gib": base / GiB,
            "eval_s": statistics.median(r[0] for r in runs), "loss": runs[-1][2].item(), "tokens": int(x.numel())}


def bench_eval_memory(ec):
    T = ec.eval_factor * ec.Lc
    print(f"eval: T = {ec.eval_factor} x Lc = {T}, batch {ec.eval_batch}, no gradients, fresh processes")
    out = {"T": T, "batch": ec.eval_batch}
    for name, chunked in (("chunked", True), ("full_logits", False)):
        r = out[name] = in_fresh_process(eval_point, asdict(ec), chunked)
        print(f"  {name:11s}: peak {r['mem_gib']:.3f} GiB (eval {r['step_gib']:.3f}), {r['eval_s']:.3f} s, "
              f"loss {r['loss']:.4f}", flush=True)
    return out


# ----------------------------------------------------------------------------- loss: the loss of a training step
def checkpointed_chunks(h, weight, targets, reduction="mean", chunk=1024):
    """The plain alternative to model.py's loss: cross-entropy chunk by chunk, each chunk's logits recomputed in
    the backward pass (activation checkpointing), so the output projection runs twice."""
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)

    def nll(hc, tc):
        return F.cross_entropy((hc @ weight.t()).float(), tc, ignore_index=-1, reduction="sum")
    total = sum(torch_checkpoint(nll, h[i:i + chunk], targets[i:i + chunk], use_reentrant=False)
                for i in range(0, h.size(0), chunk))
    return total / (targets != -1).sum().clamp(min=1)


def full_logits(h, weight, targets, reduction="mean"):
    return F.cross_entropy((h @ weight.t()).float().flatten(0, -2), targets.flatten(), ignore_index=-1)


def bench_loss(ec, device):
    """Training-step time of the model with each loss, swapped in for the one LLaMA.forward calls, then restored."""
    losses = {"model.py": model.chunked_cross_entropy, "checkpointed chunks": checkpointed_chunks,
              "full logits": full_logits}
    shapes = {"tiny": (ModelConfig(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=4096,
                                   tie_embeddings=True), 16, ec.Lc - 1),
              "32k vocabulary": (ModelConfig(dim=ec.dim, n_layers=ec.n_layers, n_heads=ec.n_heads,
                                             n_kv_heads=ec.n_kv_heads, vocab_size=ec.vocab_size), 1, 1024)}
    print("loss: model.py's (gradients in the forward pass) vs checkpointed chunks vs full logits")
    rows = []
    for name, (cfg, B, T) in shapes.items():
        torch.manual_seed(0)
        llama = LLaMA(cfg).to(device).train()
        idx, y = (torch.randint(0, cfg.vocab_size, (B, T), device=device) for _ in range(2))
        wall = {k: [] for k in losses}

        def step(loss):
            model.chunked_cross_entropy = loss
            try:
                llama.zero_grad(set_to_none=True)
                with autocast(device):
                    llama(idx, targets=y).backward()
            finally:
                model.chunked_cross_entropy = losses["model.py"]
        for r in range(ec.warmup + ec.reps):
            for k in losses if r % 2 == 0 else reversed(losses):
                w, _, _ = timed(lambda: step(losses[k]), device)
                if r >= ec.warmup:
                    wall[k].append(w)
        row = {"model": name, "batch": B, "T": T, "vocab": cfg.vocab_size,
               "step_s": {k: statistics.median(v) for k, v in wall.items()},
               "vs_model_py": {k: paired_median(v, wall["model.py"]) for k, v in wall.items()}}
        rows.append(row)
        print(f"  {name}: " + ", ".join(f"{k} {row['step_s'][k]:.3f} s ({row['vs_model_py'][k]:.3f}x)"
                                         for k in losses), flush=True)
    return {"rows": rows}


# ----------------------------------------------------------------------------- gpu: the full-scale check
def bench_gpu(ec, device):
    import transformers
    name = ec.gpu_shape or ("tinyllama" if device.startswith("cuda") else "toy")
    shape = dict(GPU_SHAPES[name])
    Lc, Lt, T_eval = shape.pop("Lc"), shape.pop("Lt"), shape.pop("T_eval")
    cfg = ModelConfig(**shape, max_seq_len=Lc)
    torch.manual_seed(0)
    ours = LLaMA(cfg)
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(ours, d)
        hf = transformers.LlamaForCausalLM.from_pretrained(d, attn_implementation="sdpa", dtype=torch.bfloat16)
    ours, hf = ours.to(device, torch.bfloat16).train(), hf.to(device).train()
    params = sum(p.numel() for p in ours.parameters())
    N = params - ours.tok_embeddings.weight.numel()
    flops = (6 * N + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * Lc) * Lc  # one row of Lc tokens
    peak = ec.peak_tflops * 1e12 if device.startswith("cuda") else matmul_peak(device)
    print(f"gpu: {name} ({params / 1e6:,.1f}M parameters) on {device}, bf16; Lc = {Lc}, Lt = {Lt}, eval {T_eval}")
    idx = torch.randint(0, cfg.vocab_size, (1, Lc), device=device)
    targets = torch.cat((idx[:, 1:], torch.full_like(idx[:, :1], -1)), dim=1)  # what HF's labels=idx scores
    out = {"shape": name, "config": asdict(cfg), "parameters": params, "Lc": Lc, "Lt": Lt, "T_eval": T_eval,
           "peak_flops": peak, "throughput": []}
    for label, llama, loss in (("model.py", ours, lambda m: m(idx, targets=targets)),
                               ("transformers", hf, lambda m: m(idx, labels=idx).loss)):
        for compiled in (False, True) if ec.gpu_compile else (False,):
            fn = torch.compile(llama) if compiled else llama

            def fwd_bwd():
                llama.zero_grad(set_to_none=True)
                loss(fn).backward()
            first = timed(fwd_bwd, device)[0]  # with torch.compile: the compilation
            for _ in range(ec.warmup):
                fwd_bwd()
            t = statistics.median(timed(fwd_bwd, device)[0] for _ in range(ec.reps))
            row = {"model": label, "compile": compiled, "tok_s": Lc / t, "step_s": t, "first_s": first,
                   "mfu": flops / t / peak}
            out["throughput"].append(row)
            print(f"  {label}{' compiled' if compiled else ''}: {row['tok_s']:,.0f} tok/s, MFU {row['mfu']:.1%} "
                  f"(first call {first:.1f} s)", flush=True)
    del ours, hf
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out | gpu_steps(cfg, Lc, Lt, T_eval, device)


def gpu_steps(cfg, Lc, Lt, T_eval, device):
    """One step of PoSE and one of Full-length as train.py takes them (float32 weights, bf16 autocast, gradient
    checkpointing, AdamW), then evaluation at T_eval with the chunked loss: time and peak memory of each."""
    out = {}
    torch.manual_seed(0)
    llama = LLaMA(cfg).extend_context(Lt, "linear").to(device).train()
    llama.gradient_checkpointing = True
    optimizer = torch.optim.AdamW(llama.parameters(), lr=1e-5)
    doc, rng = np.random.default_rng(0).integers(0, cfg.vocab_size, max(Lt, 5 * Lc)), np.random.default_rng(1)
    for method in ("pose", "full", "pose"):  # PoSE again: its peak after Full's, with AdamW's state in place
        tokens, pos = (torch.from_numpy(a)[None].to(device) for a in pose.sample(doc, Lc, Lt, method, rng=rng))
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)

        def step():
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                loss = llama(tokens[:, :-1], pos[:, :-1], tokens[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        t = timed(step, device)[0]
        out[method] = {"tokens": tokens.size(1) - 1, "step_s": t, "peak_gib": memory_peak(device) / GiB}
        print(f"  {method} step: {out[method]['tokens']} tokens, {t:.2f} s, peak {out[method]['peak_gib']:.2f} GiB",
              flush=True)
    llama.eval()
    idx = torch.randint(0, cfg.vocab_size, (1, T_eval + 1), device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        t = timed(lambda: llama(idx[:, :-1], targets=idx[:, 1:]), device)[0]
    out["eval"] = {"tokens": T_eval, "s": t, "peak_gib": memory_peak(device) / GiB}
    print(f"  evaluation at {T_eval}, chunked loss: {t:.2f} s, peak {out['eval']['peak_gib']:.2f} GiB", flush=True)
    return out


# ----------------------------------------------------------------------------- report
def render_model(p):
    c = p["config"]
    rows = [[r["T"], r["batch"], f"{r['ours_tok_s']:.0f}", f"{r['hf_tok_s']:.0f}", f"{r['ratio']:.3f}",
             f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}", f"{r['ratio_cpu']:.3f}",
             f"{r['ours_of_peak']:.0%} / {r['hf_of_peak']:.0%}"] for r in p["rows"]]
    peaks = ", ".join(f"{r['matmul_gflops']:.0f}" for r in p["rows"])
    return ["## model: model.py vs transformers `LlamaForCausalLM`, forward + backward with the full LM loss", "",
            header(p), "", f"dim {c['dim']}, {c['n_layers']} layers, {c['n_heads']} heads / {c['n_kv_heads']} kv "
            f"heads, ffn {c['hidden_dim']}, vocab {c['vocab_size']} ({c['parameters'] / 1e6:.1f}M parameters), "
            "identical weights.", "",
            markdown(["T", "batch", "model.py tok/s", "transformers tok/s", "ratio (paired median)", "range over reps",
                      "ratio of CPU time", "model.py / transformers, share of matmul peak"], rows),
            "*Share of matmul peak*: model FLOPs (6 per non-embedding parameter per token, plus causal attention's "
            "6·L·d·T) per second, over the best n = 2048 square matmul this machine ran in the same minutes "
            f"({peaks} GFLOP/s). Both models run the same matmuls and attention kernels, so model.py is r times as "
            "fast as transformers only at r times its share of that peak, every norm, softmax and elementwise "
            "operation included, or else with less arithmetic.", ""]


def render_eval(p):
    chunked, full = p["chunked"], p["full_logits"]
    rows = [[label, f"{r['mem_gib']:.3f}", f"{r['step_gib']:.3f}", f"{r['eval_s']:.3f}"] for label, r in (
        ("chunked (`model(idx, targets=y)`)", chunked), ("full logits + `F.cross_entropy`", full))]
    rows.append(["chunked / full logits", *(f"{chunked[k] / full[k]:.3f}" for k in ("mem_gib", "step_gib", "eval_s"))])
    return [f"## eval: evaluation memory at T = {p['T']} ({p['T'] // p['options']['Lc']}·Lc), batch {p['batch']}, "
            "no gradients", "", header(p), "",
            markdown(["loss computed as", "peak GiB", "above baseline GiB", "s"], rows)]


def render_loss(p):
    rows = [[r["model"], f"{r['batch']} × {r['T']}", r["vocab"], f"{r['step_s']['model.py']:.3f}",
             *(f"{r['step_s'][k]:.3f} ({r['vs_model_py'][k]:.2f}×)" for k in ("checkpointed chunks", "full logits"))]
            for r in p["rows"]]
    return ["## loss: the loss of a training step: is model.py's hand-written gradient worth its lines?", "",
            header(p), "", "Forward + backward of the whole model, its loss computed three ways: model.py's "
            "`chunked_cross_entropy` (each chunk's gradient computed in the forward pass, so the output projection "
            "runs once), the same chunks under activation checkpointing (the projection runs again in the backward "
            "pass), and full logits with `F.cross_entropy`; in brackets each one's time over model.py's.", "",
            markdown(["model", "batch × T", "vocab", "model.py s/step", "checkpointed chunks", "full logits"], rows)]


def render_gpu(g):
    rows = [[f"{r['model']}{' + torch.compile' if r['compile'] else ''}", f"{r['tok_s']:,.0f}", f"{r['mfu']:.1%}",
             f"{r['first_s']:.1f}"] for r in g["throughput"]]
    steps = [(f"PoSE (Lc = {g['Lc']}, Lt = {g['Lt']})", g["pose"], g["pose"]["step_s"]),
             (f"Full-length (Lt = {g['Lt']})", g["full"], g["full"]["step_s"]),
             ("evaluation, chunked loss, no gradients", g["eval"], g["eval"]["s"])]
    toy = [] if g["machine"]["device"].startswith("cuda") else [
        "(Measured at toy size on a CPU, where peak memory is the process's and only shows that the code runs; the "
        "numbers that matter come from a GPU.)", ""]
    return [f"## gpu: {g['shape']} ({g['parameters'] / 1e6:,.1f}M parameters), the full-scale check", "", header(g), "",
            markdown([f"forward + backward, bf16, 1 × {g['Lc']} tokens", "tok/s", "MFU", "first call s"], rows),
            f"MFU against {g['peak_flops'] / 1e12:.3g} TFLOP/s (PaLM's FLOP count). One training step as train.py "
            "takes it (float32 weights, bf16 autocast, gradient checkpointing, AdamW):", "",
            markdown(["step", "tokens", "s", "peak GiB"],
                     [[label, r["tokens"], f"{t:.2f}", f"{r['peak_gib']:.2f}"] for label, r, t in steps]), *toy]


def render(res):
    """results/bench_engineering.md from both JSON files: each part as last measured."""
    lines = ["# Engineering benchmarks", "", "Each part as last measured (a shared machine: only the ratios count; the "
             "README holds the targets). `python bench_engineering.py` reruns model, eval and loss, "
             "`python bench_engineering.py --parts=gpu` the GPU check; `python bench.py` is the paper's Figure 3 "
             "(bench.md).", ""]
    for part, fn in (("model", render_model), ("eval", render_eval), ("loss", render_loss), ("gpu", render_gpu)):
        if part in res:
            lines += fn(res[part])
    if "gpu" not in res:
        lines += ["## gpu", "", "Not measured yet: `python bench_engineering.py --parts=gpu` on one GPU (under 6 "
                  "minutes).", ""]
    return "\n".join(lines)


def write(res, out):
    """Merge these parts into results/bench_engineering.json (CPU parts) and bench_gpu.json, each part replacing its
    last result and the others kept, then render bench_engineering.md from both; returns everything merged."""
    os.makedirs(out, exist_ok=True)
    merged = {}
    for name, gpu in (("bench_engineering.json", False), ("bench_gpu.json", True)):
        path = os.path.join(out, name)
        stored = {}
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
        stored |= {k: v for k, v in res.items() if (k == "gpu") == gpu}
        if stored:
            with atomic_open(path) as f:  # whole or not at all: it holds the other parts' results too
                json.dump(stored, f, indent=1)
        merged |= stored
    with atomic_open(os.path.join(out, "bench_engineering.md")) as f:
        f.write(render(merged))
    return merged


def main(ec, command):
    device = setup(ec)
    runs = {"model": lambda: bench_vs_transformers(ec, device), "eval": lambda: bench_eval_memory(ec),
            "loss": lambda: bench_loss(ec, device), "gpu": lambda: bench_gpu(ec, device)}
    print(json.dumps(machine(device)))
    res = {}
    for part in PARTS:
        if part in ec.parts.split(","):
            res[part] = runs[part]() | {"command": command, "machine": machine(device), "options": asdict(ec)}
            merged = write(res, ec.out)  # after every part, so that an interrupted run keeps what it measured
    print("\n" + render(merged))
    return res


if __name__ == "__main__":
    cfg = parse_config(EngineeringConfig, sys.argv[1:], __doc__)
    on_signals()  # SIGTERM as Ctrl-C; a file-size limit as a full disk
    try:  # a result that cannot be written (a full disk): one line, and the parts written before are whole
        main(cfg, "python " + " ".join(sys.argv))
    except OSError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: the parts measured before are written, each file whole")
