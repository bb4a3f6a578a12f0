"""eval.py: perplexity over window lengths and passkey retrieval for one or more models, as JSON, markdown and plots.

    python eval.py --models=base=out/tiny_base/final,pose=out/tiny_pose/final --lengths=128,256,512,1024
    python eval.py --models=DIR --data=books/,more.jsonl --tokenizer=gpt2:DIR --stride=1024 --lengths=2048,4096
    python eval.py -h                                                 # every option

Perplexity, the paper's protocol: a document [BOS] x_0 … x_{m-1} is read in windows of `ctx` tokens that start
every `stride` text tokens; a window starting at a is [BOS] x_a … x_{a+ctx-2} (positions 0 … ctx-1) and predicts
x_a … x_{a+ctx-1}, but only tokens no earlier window scored count, so each x_i is scored exactly once (the last
window may be shorter) and, after the first window, with at least ctx - stride tokens of context. stride = 0
means stride = ctx. --truncate=true scores only the first window of each document (x_0 … x_{ctx-1}; shorter
documents are left out). The mean NLL is token-weighted over all documents.
Passkey: Mohtashami & Jaggi's prompt as the PoSE paper uses it, a random 5-digit key at a chosen depth of the
filler; scored by greedy generation (the first integer must be the key) or, faster, by teacher forcing.
"""
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import checkpoint as C
from config import parse_config
from passkey import passkey_prompt
from prepare import TokenDataset, read_documents
from tokenizer import load_tokenizer, start_id


@dataclass
class EvalConfig:
    models: str = "out/tiny_base/final"  # comma-separated dirs (HF or Meta); name=dir names a model
    lengths: str = "128,256,512,1024"   # perplexity window lengths
    stride: int = 0                     # sliding-window stride in tokens; 0: the window length (disjoint windows)
    truncate: bool = False              # score only the first window of each document
    data: str = "data/tok/web-bpe4k"    # a prepare.py folder (its `split` is read), or comma-separated text/jsonl files
    split: str = "eval"
    key: str = "text"                   # the JSON field holding the text in jsonl files
    tokenizer: str = ""                 # "": the first model folder's own, else the prepared data's, else web-bpe4k
    max_tokens: int = 0                 # score only each document's first max(max_tokens, length) tokens; 0: all
    batch_tokens: int = 4096            # windows per forward pass = batch_tokens // length (at least 1)
    passkey_lengths: str = ""           # "": the perplexity lengths
    passkey_depths: str = "0,0.25,0.5,0.75,1"
    passkey_trials: int = 10            # per (length, depth); 0 skips passkey
    passkey_mode: str = "generate"      # generate (greedy, KV cache) | teacher (one forward pass per trial)
    position_len: int = 0               # mean loss at each position of windows this long (BOS first); 0: skip
    position_windows: int = 0           # ... from at most this many windows per document (of max_tokens); 0: all
    seed: int = 0
    max_seq_len: int = 0                # Meta checkpoints only, which do not record it: their pretraining length
    out: str = "results"
    plots: str = "plots"
    device: str = "auto"
    dtype: str = "float32"              # the weights' dtype: float32 | bfloat16 | float16


def progress_bar(items, desc, out=sys.stderr):
    """Yield from `items` while drawing `desc [####    ] i/n, elapsed, ETA` on stderr: redrawn in place twice a
    second on a terminal, a new line every 30 s in a log file."""
    total, t0, last, tty = len(items), time.time(), 0.0, out.isatty()
    for i, item in enumerate(items, 1):
        yield item
        now = time.time()
        if now - last > (0.5 if tty else 30) or i == total:
            last, elapsed = now, now - t0
            eta = elapsed / i * (total - i)
            line = f"{desc} [{'#' * (20 * i // total):<20}] {i}/{total}, {elapsed:.0f} s, ETA {eta:.0f} s"
            out.write("\r" + line if tty else line + "\n")
            out.flush()
    if tty:
        out.write("\n")


def check_length(model, L):
    if L > model.cfg.max_seq_len:  # one message per model: the warnings module prints each distinct one once
        warnings.warn(f"lengths beyond the model's max_seq_len={model.cfg.max_seq_len} (RoPE scaling: "
                      f"{model.cfg.rope_scaling}) are extrapolation; evaluating them anyway")


def windows(m, ctx, stride, truncate=False):
    """[(a, b, s)] over a text of m tokens: a window predicts x_a … x_{b-1} and scores x_s … x_{b-1}."""
    if truncate:
        return [(0, ctx, 0)] if m >= ctx else []
    plan, done = [], 0
    for a in range(0, m, stride):
        b = min(a + ctx, m)
        plan.append((a, b, done))
        done = b
        if b == m:
            break
    return plan


@torch.no_grad()
def perplexity(model, docs, ctx, *, bos_id, stride=0, truncate=False, batch_tokens=4096, device="cpu",
               progress=False):
    """Token-weighted perplexity of `docs` (token id arrays, with or without a leading BOS) in windows of ctx
    tokens (see the module docstring) -> {"nll", "ppl", "tokens"}. The model's chunked loss keeps only a
    chunk of logits at a time, so long windows never hold all T × V of them."""
    stride = stride or ctx
    assert 0 < stride <= ctx, f"stride must be in [1, ctx={ctx}], got {stride}"
    check_length(model, ctx)
    texts = [np.asarray(d[1:] if len(d) and d[0] == bos_id else d, dtype=np.int64) for d in docs]
    plan = [(t, a, b, s) for t in texts for a, b, s in windows(len(t), ctx, stride, truncate)]
    if not plan:
        raise ValueError(f"no document is long enough for a {ctx}-token window (truncate={truncate})")
    rows = max(1, batch_tokens // ctx)
    batches = [plan[i:i + rows] for i in range(0, len(plan), rows)]
    nll, n = 0.0, 0
    for batch in progress_bar(batches, f"perplexity @{ctx}") if progress else batches:
        x = torch.zeros((len(batch), max(b - a for _, a, b, _ in batch)), dtype=torch.long)  # padded at the end
        y = torch.full_like(x, -1)                                                           # -1: not scored
        for r, (t, a, b, s) in enumerate(batch):
            x[r, 0], x[r, 1:b - a] = bos_id, torch.from_numpy(t[a:b - 1])
            y[r, s - a:b - a] = torch.from_numpy(t[s:b])
        nll += model(x.to(device), targets=y.to(device), reduction="sum").item()
        n += int((y != -1).sum())
    return {"nll": nll / n, "ppl": math.exp(nll / n), "tokens": n}


@torch.no_grad()
def position_loss(model, docs, L, *, bos_id, max_windows=0, batch_tokens=4096, device="cpu"):
    """Mean next-token loss at each position 0 … L-1 of windows [BOS] x_a … x_{a+L-2} cut back to back from each
    document (at most max_windows per document; 0: all): (L,) float64, and the number of windows averaged."""
    texts = [np.asarray(d[1:] if len(d) and d[0] == bos_id else d, dtype=np.int64) for d in docs]
    rows = [np.concatenate([[bos_id], t[a:a + L]]) for t in texts
            for a in range(0, len(t) - L + 1, L)[:max_windows or None]]
    if not rows:
        raise ValueError(f"no document is long enough for a {L}-token window")
    total, per = np.zeros(L), max(1, batch_tokens // L)
    for i in range(0, len(rows), per):
        t = torch.from_numpy(np.stack(rows[i:i + per])).to(device)
        total += model(t[:, :-1], targets=t[:, 1:], reduction="none").view(len(t), L).sum(0).double().cpu().numpy()
    return total / len(rows), len(rows)


@torch.no_grad()
def passkey_hit(model, tok, prompt, key, mode, device):
    """generate: greedy-decode 10 tokens; the first integer in them must be the key. teacher: one forward pass
    over prompt + key; the argmax must give every key token and then no further digit. (It takes the full
    logits of the sequence, fine at these sizes; a 7B model at 32k would want only the last few positions.)"""
    ids, answer = prompt.ids, prompt.answer
    if mode == "generate":
        out = model.generate(torch.tensor([ids], device=device), max_new_tokens=10)
        found = re.search(r"\d+", tok.decode(out[0, len(ids):].tolist()))
        return found is not None and int(found.group()) == key
    pred = model(torch.tensor([ids + answer], device=device))[0, len(ids) - 1:].argmax(-1).tolist()
    return pred[:-1] == answer and not tok.decode(pred[-1:])[:1].isdigit()


def passkey_accuracy(model, tok, lengths, depths, trials, seed=0, mode="generate", device="cpu", progress=False):
    """{length: {depth: accuracy}} over `trials` random 5-digit keys per cell, seeded per (seed, length, depth)."""
    assert mode in ("generate", "teacher"), f"passkey mode must be generate or teacher, got {mode!r}"
    for L in lengths:
        check_length(model, L)
    cells = [(L, d) for L in lengths for d in depths]
    acc = {L: {} for L in lengths}
    for L, d in progress_bar(cells, "passkey") if progress else cells:
        rng = np.random.default_rng([seed, L, round(d * 1000)])
        keys = rng.integers(10000, 100000, size=trials).tolist()
        acc[L][d] = sum(passkey_hit(model, tok, passkey_prompt(tok, L, d, k), k, mode, device) for k in keys) / trials
    return acc


def key_distances(tok, lengths, depths):
    """{length: {depth: how many tokens back from the answer the key line starts}} (the same for every 5-digit
    key): a key farther back than a model's pretraining window Lc is one it can only find past Lc."""
    return {L: {d: passkey_prompt(tok, L, d, 10_000).distance for d in depths} for L in lengths}


def beyond(acc, distance, Lc, L):
    """Mean accuracy at length L over the depths whose key lies farther back than Lc (None if there is none)."""
    far = [a for d, a in acc[L].items() if distance[L][d] > Lc]
    return float(np.mean(far)) if far else None


# ----------------------------------------------------------------------------- the driver
def model_specs(models):
    """'a=dir1,dir2' -> [("a", dir1), (name, dir2)]; a name is the folder's, or its parent's for final/ckpt_*."""
    specs = []
    for item in models.split(","):
        name, _, path = item.rpartition("=")
        p = Path(path.rstrip("/"))
        specs.append((name or (p.parent.name if p.name == "final" or p.name.startswith("ckpt_") else p.name), path))
    return specs


def own_tokenizer(path):
    """The tokenizer a model folder carries (train.py writes it beside the weights), or None."""
    try:
        return load_tokenizer(path)
    except (OSError, ValueError):
        return None


def load_docs(cfg, first_model):
    """(documents, tokenizer, description) from a prepare.py folder or from text/jsonl files. The tokenizer is
    --tokenizer, else the first model's own, else the one the prepared folder was made with, else web-bpe4k."""
    prepared = os.path.exists(os.path.join(cfg.data, cfg.split + ".json"))
    data = TokenDataset(cfg.data, cfg.split) if prepared else None
    tok = (load_tokenizer(cfg.tokenizer) if cfg.tokenizer else own_tokenizer(first_model)
           or load_tokenizer(data.meta["tokenizer"] if data else "web-bpe4k"))
    if data:
        if tok.n_vocab != data.meta["n_vocab"]:
            raise ValueError(f"{cfg.data} was tokenized by {data.meta['tokenizer']} ({data.meta['n_vocab']} tokens), "
                             f"not by {tok.name} ({tok.n_vocab}): prepare it again with the model's tokenizer")
        return [data.doc(i) for i in range(len(data))], tok, f"{cfg.data} ({cfg.split})"
    docs = [np.array([start_id(tok)] + tok.encode(text)) for _, text in read_documents(cfg.data.split(","), cfg.key)]
    return docs, tok, cfg.data


def check_vocabulary(mcfg, path, tok):
    """A tokenizer fits a model if its ids are the model's rows: none beyond them, and no more unused rows than
    padding to a multiple of 1024 leaves (GPT-2's 50257 -> 50304). Anything else is another model's tokenizer."""
    V, n = mcfg.vocab_size, tok.n_vocab
    if n > V or V > -(-n // 1024) * 1024:
        raise ValueError(f"{path} has {V} token embeddings, the tokenizer {tok.name} {n} tokens: they are not one "
                         "model's (pass the model's own with --tokenizer)")
    own = own_tokenizer(path)
    probe = "In the beginning, 12345 words. "
    if own is not None and own.encode(probe) != tok.encode(probe):
        raise ValueError(f"{path} carries its own tokenizer ({own.name}), which is not {tok.name}")


def markdown(header, rows):
    return "".join(f"| {' | '.join(map(str, r))} |\n" for r in [header, ["---"] * len(header), *rows])


def evaluate_models(cfg, progress=True):
    """Evaluate every model in cfg.models; write OUT/{ppl,passkey}.{json,md} and PLOTS/{ppl,passkey_NAME}.png."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    lengths = [int(x) for x in cfg.lengths.split(",")]
    pk_lengths = [int(x) for x in (cfg.passkey_lengths or cfg.lengths).split(",")]
    depths = [float(x) for x in cfg.passkey_depths.split(",")]
    specs = model_specs(cfg.models)
    docs, tok, source = load_docs(cfg, specs[0][1])
    # what would fail after hours of perplexity fails now: a passkey length too short for the template, an output
    # folder that cannot be made
    for L in pk_lengths if cfg.passkey_trials else []:
        passkey_prompt(tok, L, 0.0, 10_000)
    for _, path in specs:  # a model that is missing, or not the tokenizer's (Meta folders are checked once loaded)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no such model folder")
        if os.path.exists(os.path.join(path, "config.json")):
            check_vocabulary(C.read_hf_config(path), path, tok)
    os.makedirs(cfg.out, exist_ok=True)
    os.makedirs(cfg.plots, exist_ok=True)
    ppl, keys, by_position = {}, {}, {}
    distance = key_distances(tok, pk_lengths, depths) if cfg.passkey_trials else {}
    for name, path in specs:
        model = C.from_pretrained(path, cfg.max_seq_len or None, getattr(torch, cfg.dtype)).to(device).eval()
        check_vocabulary(model.cfg, path, tok)
        Lc, Lt = model.cfg.original_len, model.cfg.max_seq_len
        print(f"{name}: {path}, Lc = {Lc}, Lt = {Lt}, rope scaling {model.cfg.rope_scaling}")
        res = {}
        for L in lengths:
            cut = [d[:max(cfg.max_tokens, L) + 1] for d in docs] if cfg.max_tokens else docs
            res[L] = perplexity(model, cut, L, bos_id=start_id(tok), stride=cfg.stride, truncate=cfg.truncate,
                                batch_tokens=cfg.batch_tokens, device=device, progress=progress)
        print(f"{name}: perplexity " + ", ".join(f"@{L}: {r['ppl']:.3f}" for L, r in res.items()))
        ppl[name] = {"path": path, "Lc": Lc, "Lt": Lt, "ppl": res}
        if cfg.passkey_trials:
            keys[name] = passkey_accuracy(model, tok, pk_lengths, depths, cfg.passkey_trials, cfg.seed,
                                          cfg.passkey_mode, device, progress)
            print(f"{name}: passkey " + ", ".join(
                f"@{L}: {np.mean(list(a.values())):.0%}" + ("" if beyond(keys[name], distance, Lc, L) is None else
                                                             f" ({beyond(keys[name], distance, Lc, L):.0%} beyond Lc)")
                for L, a in keys[name].items()))
        if cfg.position_len:
            cut = [d[:max(cfg.max_tokens, cfg.position_len) + 1] for d in docs] if cfg.max_tokens else docs
            by_position[name], n_windows = position_loss(model, cut, cfg.position_len, bos_id=start_id(tok),
                                                         max_windows=cfg.position_windows,
                                                         batch_tokens=cfg.batch_tokens, device=device)
        del model  # before the next one loads
    write_results(cfg, f"{source}, tokenizer {tok.name}", ppl, keys, distance,
                  {"windows": n_windows, "models": by_position} if by_position else None)
    return ppl, keys


def write_results(cfg, source, ppl, keys, distance=None, by_position=None):
    import plots  # here, not at the top: train.py imports this file for perplexity() and needs no matplotlib
    def write(name, text):
        with open(os.path.join(cfg.out, name), "w") as f:
            f.write(text)
    mode = "truncate" if cfg.truncate else f"sliding window, stride {cfg.stride or '= window'}"
    write("ppl.json", json.dumps({"protocol": {"data": source, "mode": mode, "max_tokens": cfg.max_tokens},
                                  "models": ppl}, indent=1))
    lengths = list(next(iter(ppl.values()))["ppl"])
    rows = [[name] + [f"{v:.2f}" if v < 1e4 else f"{v:.2e}" for v in (r["ppl"][L]["ppl"] for L in lengths)]
            for name, r in ppl.items()]
    write("ppl.md", f"Perplexity on {source}, {mode}, token-weighted.\n\n" + markdown(["model", *lengths], rows))
    plots.plot_perplexity({n: {L: v["ppl"] for L, v in r["ppl"].items()} for n, r in ppl.items()},
                          os.path.join(cfg.plots, "ppl.png"), plots.context_marks(ppl), f"Perplexity on {source}")
    if by_position:
        L = cfg.position_len
        write("position_loss.json", json.dumps({
            "protocol": {"data": source, "length": L, "windows": by_position["windows"]},
            "models": {n: v.tolist() for n, v in by_position["models"].items()}}))
        plots.plot_position_loss(by_position["models"], os.path.join(cfg.plots, "position_loss.png"),
                                 plots.context_marks(ppl), by_position["windows"])
    if not keys:
        return
    write("passkey.json", json.dumps({"protocol": {"trials": cfg.passkey_trials, "mode": cfg.passkey_mode,
                                                  "seed": cfg.seed}, "distance": distance, "models": keys}, indent=1))
    depths = list(next(iter(next(iter(keys.values())).values())))
    rows = [[name, L] + [f"{a[d]:.0%}" for d in depths] + [f"{np.mean(list(a.values())):.0%}"]
            for name, acc in keys.items() for L, a in acc.items()]
    rows = [["key distance", L] + [distance[L][d] for d in depths] + [""] for L in distance] + rows
    write("passkey.md", f"Passkey retrieval accuracy, {cfg.passkey_trials} trials per cell, {cfg.passkey_mode}; "
          "the first rows give how many tokens back from the answer each key line starts.\n\n"
          + markdown(["model", "length"] + [f"depth {d:.0%}" for d in depths] + ["mean"], rows))
    for name, acc in keys.items():
        plots.plot_passkey(acc, os.path.join(cfg.plots, f"passkey_{name}.png"), f"Passkey retrieval: {name}")


if __name__ == "__main__":
    cfg = parse_config(EvalConfig, sys.argv[1:], __doc__)
    print(json.dumps(asdict(cfg)))
    try:
        evaluate_models(cfg)
    except (ValueError, OSError, ImportError) as e:  # a missing or bad model, data or length: one line, no traceback
        sys.exit(f"error: {e}")
