"""reproduce.py: the paper's comparison in miniature, on CPU: one tiny pretrained base extended 8x (128 -> 1024
tokens) by PoSE variants, RandPos and Full-length with equal steps and rows, beside the base itself and plain
fine-tuning; then perplexity (the paper's sliding window), loss at every position, and passkey retrieval.

    python reproduce.py                 # the whole comparison, about 34 minutes on 2 cores (Full-length 15 of them)
    python reproduce.py --quick=true    # fewer runs, steps, tokens and trials: about 4 minutes
    python reproduce.py --pretrain=true # first remake the shipped base (models/tiny_base) from scratch, +30 min

Every run continues the base's own training mixture -- the books, with half of the rows a synthetic passkey prompt
(configs/tiny_pose.toml) -- as the paper continues LLaMA on The Pile. Each run is `python train.py
configs/tiny_pose.toml --key=value ...` in its own process (so its peak memory is its own); the commands are
printed. Results: results/{ppl,passkey,position_loss}.json and .md, results/table.md, results/checks.md (the
paper's claims, each with its numbers and PASS/FAIL), plots/, and the README's results section.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

import plots
from checkpoint import from_pretrained, save_pretrained
from config import parse_config
from eval import EvalConfig, beyond, evaluate_models
from train import TrainConfig
from util import markdown

Lc, Lt = 128, 1024
RUNS = {  # name -> overrides of configs/tiny_pose.toml (the headline PoSE run: N = 2, PoSE-YaRN, beta_fast 4)
    "plain": {"method": "plain", "rope_type": "none"},  # the control: Lc windows, no RoPE scaling
    "pose": {},
    "pose_linear": {"rope_type": "linear"},             # position interpolation
    "pose_yarn": {"yarn_beta_fast": 32.0},              # PoSE-YaRN with the paper's beta_fast (the headline uses 4)
    "pose_none": {"rope_type": "none"},                 # the ablation: skipped positions, no interpolation
    "randpos": {"method": "randpos"},
    "full": {"method": "full"},                         # 1024-token windows: 8x the tokens of every other run
}
QUICK = ("plain", "pose", "randpos")  # Full-length alone would take the quick run's whole budget
MARKS = ("<!-- results: written by reproduce.py -->", "<!-- /results -->")


@dataclass
class ReproConfig:
    base: str = "models/tiny_base"   # the shipped pretrained base, a Hugging Face directory
    pretrain: bool = False           # remake the base with configs/tiny_pretrain*.toml first
    quick: bool = False              # the runs in QUICK, and the quick_* settings below
    steps: int = 200                 # fine-tuning steps of every run
    batch_size: int = 16             # rows per step of every run
    eval_tokens: int = 8192          # perplexity on the first eval_tokens tokens of each held-out book
    passkey_trials: int = 10         # per (length, depth)
    quick_steps: int = 80            # --quick=true: steps (60 x 8 rows taught no retrieval past Lc)
    quick_batch_size: int = 16       # ... rows
    quick_eval_tokens: int = 2048    # ... tokens per book
    quick_passkey_trials: int = 4    # ... trials
    runs_dir: str = "out/repro"      # the runs' checkpoints and logs
    out: str = "results"             # tables and JSON
    plots: str = "plots"             # figures
    readme: str = "README.md"        # whose results section (between its markers) is rewritten


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def make_base(cfg):
    """Pretrain in two stages (a quarter, then half of the rows passkey prompts) and ship the result in bfloat16
    (8 MB), as LLaMA is shipped, with its tokenizer."""
    for stage in ("tiny_pretrain", "tiny_pretrain_passkey"):
        out_dir = parse_config(TrainConfig, [f"configs/{stage}.toml"]).out_dir
        shutil.rmtree(out_dir, ignore_errors=True)
        run([sys.executable, "train.py", f"configs/{stage}.toml"])
    final = os.path.join(out_dir, "final")
    tok = [os.path.join(final, f) for f in os.listdir(final) if f.endswith(".tiktoken")]
    save_pretrained(from_pretrained(final), cfg.base, dtype=torch.bfloat16, tokenizer_files=tok)


def step_costs(runs_dir, names):
    """Per run: median tokens/s and its process's peak memory (VmHWM), from its own train log."""
    out = {}
    for name in names:
        rows = [r for r in plots.read_log(os.path.join(runs_dir, name, "log.jsonl")) if "tok_s" in r]
        out[name] = {"tok_s": float(np.median([r["tok_s"] for r in rows])), "mem_gib": max(r["mem_gib"] for r in rows)}
    return out


def summary(ppl, keys, distance):
    """{model: {"ppl": {L: ppl}, "beyond": {L: passkey accuracy on keys farther back than Lc}}}."""
    out = {}
    dist = {int(L): {float(d): v for d, v in cells.items()} for L, cells in distance.items()}
    for name, r in ppl.items():
        acc = {int(L): {float(d): a for d, a in cells.items()} for L, cells in keys[name].items()}
        out[name] = {"ppl": {int(L): v["ppl"] for L, v in r["ppl"].items()},
                     "beyond": {L: beyond(acc, dist, Lc, L) for L in acc}}
    return out


def checks(s, costs):
    """The paper's claims, each a row (claim, PASS/FAIL, the numbers), as they can be checked at this scale; a
    claim about a model this run did not train (the quick run has no Full-length) is marked so."""
    p = {n: v["ppl"] for n, v in s.items()}
    far = {n: v["beyond"][Lt] for n, v in s.items()}
    at = f"8·Lc = {Lt}"
    claims = [  # (claim, is it so?, the numbers), each evaluated only when its models exist
        ("No extension (the base) degrades past Lc: ppl at 8·Lc ≥ 1.5× its ppl at Lc",
         lambda: p["base"][Lt] >= 1.5 * p["base"][Lc], lambda: f"{p['base'][Lt]:.1f} vs {p['base'][Lc]:.1f}"),
        ("Plain fine-tuning (Lc windows, no RoPE scaling) stays broken: ppl at 8·Lc ≥ 1.5× at Lc",
         lambda: p["plain"][Lt] >= 1.5 * p["plain"][Lc], lambda: f"{p['plain'][Lt]:.1f} vs {p['plain'][Lc]:.1f}"),
        ("PoSE at 8·Lc ≤ 1.05× Full-length", lambda: p["pose"][Lt] <= 1.05 * p["full"][Lt],
         lambda: f"{p['pose'][Lt]:.2f} vs {p['full'][Lt]:.2f} ({p['pose'][Lt] / p['full'][Lt]:.3f}×)"),
        ("PoSE uses the longer context: its ppl at 8·Lc ≤ at Lc", lambda: p["pose"][Lt] <= p["pose"][Lc],
         lambda: f"{p['pose'][Lt]:.2f} vs {p['pose'][Lc]:.2f}"),
        ("RandPos worse than PoSE at every length", lambda: all(p["randpos"][L] > p["pose"][L] for L in p["pose"]),
         lambda: ", ".join(f"{L}: {p['randpos'][L]:.1f}/{p['pose'][L]:.1f}" for L in p["pose"])),
        (f"Passkey: PoSE ≥ 90% at {at} on keys farther back than Lc", lambda: far["pose"] >= 0.9,
         lambda: f"{far['pose']:.0%}" + (f" (Full-length {far['full']:.0%})" if "full" in far else "")),
        ("Passkey: the base and plain fine-tuning ≤ 10% there", lambda: far["base"] <= 0.1 and far["plain"] <= 0.1,
         lambda: f"base {far['base']:.0%}, plain {far['plain']:.0%}"),
        ("PoSE trains with less memory than Full-length", lambda: costs["pose"]["mem_gib"] < costs["full"]["mem_gib"],
         lambda: f"peak RSS {costs['pose']['mem_gib']:.2f} vs {costs['full']['mem_gib']:.2f} GiB (each its own "
                 "process)"),
    ]
    rows = []
    for claim, ok, numbers in claims:
        try:
            rows.append([claim, "PASS" if ok() else "FAIL", numbers()])
        except KeyError as missing:  # a model this run did not train
            rows.append([claim, "not run", f"no {missing.args[0]} model in this run"])
    return markdown(["claim (paper)", "here", "measured"], rows)


def table(s, costs, lengths):
    """One row per model: perplexity per length, passkey on keys farther than Lc per length, training costs."""
    far = [L for L in lengths if L > Lc]
    header = ([f"ppl @{L}" for L in lengths] + ["passkey beyond Lc @" + "/".join(map(str, far)),
                                                 "train tok/s", "peak RSS GiB"])
    rows = []
    for name, v in s.items():
        cells = [f"{v['ppl'][L]:.2f}" if v["ppl"][L] < 1e4 else f"{v['ppl'][L]:.1e}" for L in lengths]
        cells.append(" / ".join(f"{v['beyond'][L]:.0%}" for L in far))
        cost = costs.get(name)
        cells += [f"{cost['tok_s']:,.0f}", f"{cost['mem_gib']:.2f}"] if cost else ["–", "–"]
        rows.append([name] + cells)
    return markdown(["model"] + header, rows)


def write_readme(path, section):
    """Replace what lies between the README's result markers with `section`."""
    with open(path) as f:
        text = f.read()
    start, end = (re.escape(m) for m in MARKS)
    if not re.search(f"{start}.*{end}", text, flags=re.S):
        raise ValueError(f"{path}: no {MARKS[0]} ... {MARKS[1]} section to write the results into")
    with open(path, "w") as f:
        f.write(re.sub(f"{start}.*{end}", lambda _: f"{MARKS[0]}\n{section}{MARKS[1]}", text, flags=re.S))


def main(cfg):
    if cfg.quick:
        cfg.steps, cfg.batch_size = cfg.quick_steps, cfg.quick_batch_size
        cfg.eval_tokens, cfg.passkey_trials = cfg.quick_eval_tokens, cfg.quick_passkey_trials
    runs = {n: o for n, o in RUNS.items() if n in QUICK or not cfg.quick}
    t0 = time.time()
    if not os.path.exists("data/tok/web-bpe4k/train.bin"):
        run([sys.executable, "prepare.py"])
    if cfg.pretrain or not os.path.exists(os.path.join(cfg.base, "model.safetensors")):
        make_base(cfg)
    for name, overrides in runs.items():
        args = {"init_from": cfg.base, "max_steps": cfg.steps, "batch_size": cfg.batch_size,
                "out_dir": os.path.join(cfg.runs_dir, name), "eval_interval": 0, "ckpt_interval": 0} | overrides
        shutil.rmtree(args["out_dir"], ignore_errors=True)
        run([sys.executable, "train.py", "configs/tiny_pose.toml", *(f"--{k}={v}" for k, v in args.items())])
    t_train = time.time() - t0
    models = {"base": cfg.base} | {name: os.path.join(cfg.runs_dir, name, "final") for name in runs}
    lengths = [Lc * k for k in (1, 2, 4, 8)]
    ecfg = EvalConfig(models=",".join(f"{n}={p}" for n, p in models.items()), lengths=",".join(map(str, lengths)),
                        stride=Lc, max_tokens=cfg.eval_tokens, passkey_trials=cfg.passkey_trials, position_len=Lt,
                        out=cfg.out, plots=cfg.plots)
    ppl, keys = evaluate_models(ecfg)
    distance = json.load(open(os.path.join(cfg.out, "passkey.json")))["distance"]
    s, costs = summary(ppl, keys, distance), step_costs(cfg.runs_dir, runs)
    results, claims = table(s, costs, lengths), checks(s, costs)
    minutes = (time.time() - t0) / 60
    note = (f"{cfg.steps} steps × {cfg.batch_size} rows for every run, Lc = {Lc} → Lt = {Lt}; perplexity with the "
            f"paper's sliding window (stride Lc = {Lc}: every scored token has at least ctx − {Lc} tokens before it) "
            f"on the first {cfg.eval_tokens} tokens of each held-out book; passkey {cfg.passkey_trials} trials per "
            f"(length, depth), greedy, counted on keys farther back than Lc; `python reproduce.py"
            f"{' --quick=true' if cfg.quick else ''}`, {minutes:.1f} min on this machine ({t_train / 60:.1f} of "
            "them training).")
    with open(os.path.join(cfg.out, "table.md"), "w") as f:
        f.write(note + "\n\n" + results)
    with open(os.path.join(cfg.out, "checks.md"), "w") as f:
        f.write(claims)
    with open(os.path.join(cfg.out, "costs.json"), "w") as f:
        json.dump(costs, f, indent=1)
    plots.plot_passkey_beyond({n: v["beyond"] for n, v in s.items()}, os.path.join(cfg.plots, "passkey.png"), Lc)
    plots.plot_training({name: plots.read_log(os.path.join(cfg.runs_dir, name, "log.jsonl")) for name in runs},
                        os.path.join(cfg.plots, "training.png"))
    write_readme(cfg.readme, "\n".join([
        note, "", "![loss at every position](plots/position_loss.png)", "", results,
        "![passkey beyond Lc](plots/passkey.png) ![perplexity](plots/ppl.png)", "",
        "The paper's claims, checked against these numbers (`results/checks.md`):", "", claims]))
    print(results)
    print(claims)
    print(f"reproduce.py: {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main(parse_config(ReproConfig, sys.argv[1:], __doc__))
