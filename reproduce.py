"""reproduce.py: the paper's Table 1 in miniature, on CPU: one tiny pretrained base extended 8x (128 -> 1024 tokens)
by Full-length, RandPos and PoSE variants with equal steps and batch, then perplexity and passkey at Lc .. 8·Lc.

    python reproduce.py                 # the whole comparison, about 25 minutes on 2 cores
    python reproduce.py --quick=true    # the same comparison with fewer steps, tokens and trials, about 5 minutes
    python reproduce.py --pretrain=true # first remake the shipped base (models/tiny_base) from scratch, +30 min

Each fine-tuning run is `python train.py configs/tiny_pose.toml --key=value ...` in its own process (so its peak
memory is its own); the commands are printed. Results: results/{ppl,passkey}.{json,md}, results/table.md,
results/checks.md (the paper's claims, each with the measured numbers and PASS/FAIL), and plots/.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

import checkpoint as C
import eval as E
import plots
import train as T
from config import parse_config

Lc, Lt = 128, 1024
RUNS = {  # name -> overrides of configs/tiny_pose.toml (PoSE, linear interpolation, N = 2)
    "pose": {},
    "pose_n1": {"num_chunks": 1},       # N = 1: position interpolation fine-tuned on plain 128-token windows
    "pose_n3": {"num_chunks": 3},
    "pose_ntk": {"rope_type": "ntk"},
    "pose_yarn": {"rope_type": "yarn"},
    "randpos": {"method": "randpos"},
    "full": {"method": "full"},         # trains on 1024-token windows: 8x the tokens of every other run
}


@dataclass
class ReproConfig:
    base: str = "models/tiny_base"   # the shipped pretrained base, a Hugging Face directory
    pretrain: bool = False           # remake the base with configs/tiny_pretrain.toml first
    quick: bool = False
    steps: int = 200                 # fine-tuning steps of every run (quick: 50)
    batch_size: int = 16             # rows per step of every run (quick: 8)
    eval_tokens: int = 16384         # perplexity on the first eval_tokens tokens of each held-out book (quick: 4096)
    passkey_trials: int = 10         # per (length, depth) (quick: 4)
    runs_dir: str = "out/repro"
    out: str = "results"
    plots: str = "plots"


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def make_base(cfg):
    """Pretrain in two stages (text with a quarter of passkey rows, then half) and ship the result in bfloat16
    (8 MB), as LLaMA is shipped."""
    for stage in ("tiny_pretrain", "tiny_pretrain_passkey"):
        out_dir = parse_config(T.TrainConfig, [f"configs/{stage}.toml"]).out_dir
        shutil.rmtree(out_dir, ignore_errors=True)
        run([sys.executable, "train.py", f"configs/{stage}.toml"])
    C.save_pretrained(C.from_pretrained(os.path.join(out_dir, "final")), cfg.base, dtype=torch.bfloat16)


def interpolated_base(cfg, path):
    """The base with linear position interpolation (s = 8) and no fine-tuning: the paper's 'PI' row."""
    base = C.from_pretrained(cfg.base)
    base.cfg = T.extend_context(base.cfg, T.TrainConfig(Lc=Lc, Lt=Lt, rope_type="linear"))
    C.save_pretrained(base, path)


def step_costs(runs_dir):
    """Per run: median seconds per step and peak resident memory, from its own train log."""
    out = {}
    for name in RUNS:
        rows = [json.loads(line) for line in open(os.path.join(runs_dir, name, "log.jsonl"))]
        cfg = json.load(open(os.path.join(runs_dir, name, "final", "config.json")))
        train_rows = [r for r in rows if "tok_s" in r]
        out[name] = {"tok_s": float(np.median([r["tok_s"] for r in train_rows])),
                     "mem_gib": max(r["mem_gib"] for r in train_rows), "max_len": cfg["max_position_embeddings"]}
    return out


def checks(ppl, keys, costs):
    """The shape the paper reports, each claim with the numbers measured here."""
    p = {n: {int(L): v["ppl"] for L, v in r["ppl"].items()} for n, r in ppl.items()}
    acc = {n: {int(L): float(np.mean(list(a.values()))) for L, a in r.items()} for n, r in keys.items()}
    longest, beyond = 8 * Lc, [L for L in p["pose"] if L > Lc]
    rows = [
        ("No extension: ppl at 8·Lc ≥ 10× ppl at Lc", p["base"][longest] >= 10 * p["base"][Lc],
         f"{p['base'][longest]:.1f} vs {p['base'][Lc]:.1f}"),
        ("PoSE (linear, N=2) at 8·Lc ≤ 1.05× Full-length", p["pose"][longest] <= 1.05 * p["full"][longest],
         f"{p['pose'][longest]:.2f} vs {p['full'][longest]:.2f}"),
        ("RandPos worse than PoSE at every length", all(p["randpos"][L] > p["pose"][L] for L in p["pose"]),
         ", ".join(f"{L}: {p['randpos'][L]:.1f}/{p['pose'][L]:.1f}" for L in p["pose"])),
        ("N = 1 explodes past Lc like no extension (ppl at 8·Lc ≥ 10× at Lc)",
         p["pose_n1"][longest] >= 10 * p["pose_n1"][Lc], f"{p['pose_n1'][longest]:.1f} vs {p['pose_n1'][Lc]:.1f}"),
        ("Passkey: PoSE ≥ 90% up to 8·Lc", all(acc["pose"][L] >= 0.9 for L in acc["pose"]),
         ", ".join(f"{L}: {a:.0%}" for L, a in acc["pose"].items())),
        ("Passkey: no extension ≤ 10% beyond Lc", all(acc["base"][L] <= 0.1 for L in beyond),
         ", ".join(f"{L}: {acc['base'][L]:.0%}" for L in beyond)),
        ("PoSE trains with less memory than Full-length", costs["pose"]["mem_gib"] < costs["full"]["mem_gib"],
         f"peak RSS {costs['pose']['mem_gib']:.2f} vs {costs['full']['mem_gib']:.2f} GiB"),
    ]
    return E.markdown(["claim (paper)", "here", "measured"],
                      [[claim, "PASS" if ok else "FAIL", numbers] for claim, ok, numbers in rows])


def table(ppl, keys, costs, lengths):
    """One row per model: perplexity per length, mean passkey accuracy per length, and its run's training costs."""
    header = (["model"] + [f"ppl @{L}" for L in lengths]
              + ["passkey @" + "/".join(map(str, lengths)) + " (mean over depths)", "train tok/s", "peak RSS GiB"])
    rows = []
    for name in ppl:
        cells = [f"{v['ppl']:.2f}" if v["ppl"] < 1e4 else f"{v['ppl']:.1e}" for v in ppl[name]["ppl"].values()]
        cells.append(" / ".join(f"{np.mean(list(a.values())):.0%}" for a in keys[name].values()))
        cost = costs.get(name)
        cells += [f"{cost['tok_s']:,.0f}", f"{cost['mem_gib']:.2f}"] if cost else ["–", "–"]
        rows.append([name] + cells)
    return E.markdown(header, rows)


def main(cfg):
    if cfg.quick:
        cfg.steps, cfg.batch_size, cfg.eval_tokens, cfg.passkey_trials = 50, 8, 4096, 4
    t0 = time.time()
    if not os.path.exists("data/tok/web-bpe4k/train.bin"):
        run([sys.executable, "prepare.py"])
    if cfg.pretrain or not os.path.exists(os.path.join(cfg.base, "model.safetensors")):
        make_base(cfg)
    interpolated_base(cfg, os.path.join(cfg.runs_dir, "pi", "final"))
    for name, overrides in RUNS.items():
        args = {"init_from": cfg.base, "max_steps": cfg.steps, "batch_size": cfg.batch_size,
                "out_dir": os.path.join(cfg.runs_dir, name), "eval_interval": 0, "ckpt_interval": 0} | overrides
        shutil.rmtree(args["out_dir"], ignore_errors=True)
        run([sys.executable, "train.py", "configs/tiny_pose.toml", *(f"--{k}={v}" for k, v in args.items())])
    models = {"base": cfg.base, "pi": os.path.join(cfg.runs_dir, "pi", "final")} | {
        name: os.path.join(cfg.runs_dir, name, "final") for name in RUNS}
    lengths = [Lc * k for k in (1, 2, 4, 8)]
    ecfg = E.EvalConfig(models=",".join(f"{n}={p}" for n, p in models.items()), lengths=",".join(map(str, lengths)),
                        max_tokens=cfg.eval_tokens, passkey_trials=cfg.passkey_trials, out=cfg.out,
                        plots=cfg.plots)
    ppl, keys = E.evaluate_models(ecfg)
    costs = step_costs(cfg.runs_dir)
    results, claims = table(ppl, keys, costs, lengths), checks(ppl, keys, costs)
    note = (f"{cfg.steps} steps × {cfg.batch_size} rows for every run, Lc = {Lc} → Lt = {Lt}; perplexity on the first "
            f"{cfg.eval_tokens} tokens of each held-out book; passkey {cfg.passkey_trials} trials per (length, depth).")
    with open(os.path.join(cfg.out, "table.md"), "w") as f:
        f.write(note + "\n\n" + results)
    with open(os.path.join(cfg.out, "checks.md"), "w") as f:
        f.write(claims)
    with open(os.path.join(cfg.out, "costs.json"), "w") as f:
        json.dump(costs, f, indent=1)
    plots.plot_training({name: plots.read_log(os.path.join(cfg.runs_dir, name, "log.jsonl")) for name in RUNS},
                        os.path.join(cfg.plots, "training.png"))
    print(results)
    print(claims)
    print(f"reproduce.py: {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main(parse_config(ReproConfig, sys.argv[1:], __doc__))
