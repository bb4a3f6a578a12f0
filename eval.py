"""eval.py: perplexity over window lengths, loss at every position, and passkey retrieval for one or more models,
as JSON, markdown and plots.

    python eval.py --models=base=models/tiny_base,pose=out/tiny_pose/final --lengths=128,256,512,1024 --stride=128
    python eval.py --models=DIR --data=books/,more.jsonl --tokenizer=gpt2:DIR --stride=1024 --lengths=2048,4096
    python eval.py -h                                                 # every option

A first reading takes perplexity() (with windows(), its plan), then passkey_teacher(); the rest is the driver.

Perplexity, the paper's protocol (with --stride below the window): a document [BOS] x_0 … x_{m-1} is read in
windows of `ctx` tokens that start every `stride` text tokens; a window starting at a is [BOS] x_a … x_{a+ctx-2}
(positions 0 … ctx-1) and predicts x_a … x_{a+ctx-1}, but only tokens no earlier window scored count, so each x_i is
scored exactly once (the last window may be shorter) and, after the first window, with at least ctx - stride tokens
of context. The default stride = 0 means stride = ctx: disjoint windows, cheaper, where the paper slides them (its
stride is 1024 tokens for windows of 2k … 32k; Lc = 128 plays that part here). --truncate=true scores only the first
window of each document. A document shorter than a window is left out of that length (with a warning). The mean NLL
is token-weighted over all documents. The same forward passes give the mean loss at each position 0 … ctx-1 over the
full windows: where a model stops using its positions, that curve rises.
Passkey: Mohtashami & Jaggi's prompt as the PoSE paper uses it, a random 5-digit key at a chosen depth of the
filler; scored by greedy generation (the first integer must be the key) or, batched and faster, by teacher forcing
(the key's tokens must be the argmax after the prompt); --passkey_mode=both scores each trial both ways and counts
where they disagree.
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

from checkpoint import from_pretrained, lock_folder, read_hf_config, weights_finite
from config import int_list, non_negative, one_of, parse_config, positive, writable
from passkey import passkey_prompt
from pose import MAX_LT
from prepare import TokenDataset, read_documents
from tokenizer import check_vocabulary, load_tokenizer, own_tokenizer, same_tokenizer, start_id
from util import atomic_open, check_device, exit_status, markdown, on_signals, out_of_memory, pick_device

PASSKEY_MODES = ("generate", "teacher", "both")


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
    position_len: int = 0               # one of the lengths: write the mean loss at each of its positions; 0: none
    passkey_lengths: str = ""           # "": the perplexity lengths
    passkey_depths: str = "0,0.25,0.5,0.75,1"  # where the key line goes, as a share of the filler
    passkey_trials: int = 10            # per length, spread evenly over the depths tried there; 0 skips passkey
    passkey_far: int = 0                # 0: every depth; else, at lengths beyond it, only depths whose key is farther
                                        # back than it (retrieval past a model's L0), at other lengths every depth
    passkey_mode: str = "generate"      # generate (greedy, KV cache) | teacher (batched forward passes) | both
    seed: int = 0                       # the passkeys drawn
    max_seq_len: int = 0                # Meta checkpoints only, which do not record it: their pretraining length
    out: str = "out/eval"               # the results' folder (ppl.json, ppl.md ...): one that holds another
                                        # evaluation's is refused, never written over
    plots: str = "auto"                 # where the figures go: auto (the --out folder), another folder, or "" (none)
    device: str = "auto"
    dtype: str = "float32"              # the weights' dtype: float32 | bfloat16 | float16

    def check(self):
        """A ValueError naming the first option that cannot work (parse_config calls it before anything is read)."""
        if not self.models or len({n for n, _ in model_specs(self.models)}) != len(self.models.split(",")):
            raise ValueError(f"--models={self.models}: expected comma-separated folders, each name used once")
        lengths = int_list("lengths", self.lengths, lo=2)
        for name in ("lengths", "passkey_lengths"):
            if max(int_list(name, getattr(self, name) or self.lengths)) > MAX_LT:
                raise ValueError(f"--{name}={getattr(self, name)}: expected lengths of at most 2^24 = {MAX_LT} (RoPE "
                                 "computes with float32 positions, exact only that far)")
        if self.stride < 0 or self.stride > min(lengths):
            raise ValueError(f"--stride={self.stride}: expected 0 (= each window) up to the shortest length "
                             f"{min(lengths)}")
        non_negative(self, "max_tokens", "passkey_trials", "passkey_far", "seed", "max_seq_len")
        positive(self, "batch_tokens")
        if self.position_len and self.position_len not in lengths:
            raise ValueError(f"--position_len={self.position_len}: expected 0 or one of the lengths {self.lengths}")
        if self.passkey_lengths:
            int_list("passkey_lengths", self.passkey_lengths)
        try:
            depths = [float(x) for x in self.passkey_depths.split(",")]
        except ValueError:
            depths = [-1.0]
        if not all(0 <= d <= 1 for d in depths):
            raise ValueError(f"--passkey_depths={self.passkey_depths}: expected shares in [0, 1], comma-separated")
        one_of(self, "passkey_mode", PASSKEY_MODES)
        one_of(self, "dtype", ("float32", "bfloat16", "float16"))
        check_device(self.device)
        writable(self, "out", *(("plots",) if self.plots not in ("", "auto") else ()))


# (a first reading may skip the next two: progress and a warning)
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
    tokens (see the module docstring) -> {"nll", "ppl", "tokens", "position": mean loss at each position 0 … ctx-1
    over the full windows, "windows": how many}. The model's chunked loss keeps only a chunk of logits at a time,
    so long windows never hold all T × V of them."""
    stride = stride or ctx
    assert 0 < stride <= ctx, f"stride must be in [1, ctx={ctx}], got {stride}"
    check_length(model, ctx)
    texts = [np.asarray(d[1:] if len(d) and d[0] == bos_id else d, dtype=np.int64) for d in docs]
    short = sum(len(t) < ctx for t in texts)
    if short:
        warnings.warn(f"{short} of {len(texts)} documents are shorter than a {ctx}-token window: left out at {ctx}")
    plan = [(t, a, b, s) for t in texts if len(t) >= ctx for a, b, s in windows(len(t), ctx, stride, truncate)]
    if not plan:
        raise ValueError(f"no document is long enough for a {ctx}-token window")
    rows = max(1, batch_tokens // ctx)
    batches = [plan[i:i + rows] for i in range(0, len(plan), rows)]
    nll, n, at_position, full = 0.0, 0, np.zeros(ctx), 0
    for batch in progress_bar(batches, f"perplexity @{ctx}") if progress else batches:
        x = torch.zeros((len(batch), max(b - a for _, a, b, _ in batch)), dtype=torch.long)  # padded at the end
        y = torch.full_like(x, -1)                                                           # -1: no target
        for r, (t, a, b, s) in enumerate(batch):
            x[r, 0], x[r, 1:b - a] = bos_id, torch.from_numpy(t[a:b - 1])
            y[r, :b - a] = torch.from_numpy(t[a:b])
        loss = model(x.to(device), targets=y.to(device), reduction="none").view(x.shape).double().cpu()
        scored = torch.zeros_like(y, dtype=torch.bool)  # the tokens no earlier window scored
        for r, (t, a, b, s) in enumerate(batch):
            scored[r, s - a:b - a] = True
            if b - a == ctx:
                at_position += loss[r].numpy()
                full += 1
        nll += float(loss[scored].sum())
        n += int(scored.sum())
    return {"nll": nll / n, "ppl": math.exp(min(nll / n, 700)), "tokens": n,  # 700: exp overflows float64 past it
            "position": (at_position / max(full, 1)).tolist(), "windows": full}


@torch.no_grad()
def passkey_generate(model, tok, prompt, key, device):
    """Greedy-decode 10 tokens after the prompt: the first integer in them must be the key."""
    out = model.generate(torch.tensor([prompt.ids], device=device), max_new_tokens=10)
    found = re.search(r"\d+", tok.decode(out[0, len(prompt.ids):].tolist()))
    return found is not None and int(found.group()) == key


@torch.no_grad()
def passkey_teacher(model, tok, prompts, device, batch_tokens=4096):
    """Teacher forcing, prompts batched (right-padded: causal attention keeps the padding out of every real token's
    view): after each prompt the argmax must give every key token, and then no further digit."""
    hits, order = [False] * len(prompts), sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
    while order:
        T = len(prompts[order[-1]].ids) + len(prompts[order[-1]].answer)
        batch, order = order[-max(1, batch_tokens // T):], order[:-max(1, batch_tokens // T)]
        x = torch.zeros((len(batch), T), dtype=torch.long)
        for r, i in enumerate(batch):
            seq = prompts[i].ids + prompts[i].answer
            x[r, :len(seq)] = torch.tensor(seq)
        logits = model(x.to(device))
        for r, i in enumerate(batch):
            p = prompts[i]
            pred = logits[r, len(p.ids) - 1:len(p.ids) + len(p.answer)].argmax(-1).tolist()
            hits[i] = pred[:-1] == p.answer and not tok.decode(pred[-1:])[:1].isdigit()
    return hits


def passkey_cells(distance, far=0):
    """{length: [depths tried]} from key_distances' {length: {depth: tokens back}}: every depth, or at lengths beyond
    `far` (> 0) only those whose key line starts farther back than `far` tokens (the ones that test retrieval past
    it)."""
    return {L: [d for d, back in cells.items() if not far or L <= far or back > far] for L, cells in distance.items()}


def trials_per_depth(trials, depths):
    """`trials` per length spread evenly over the depths tried there, rounded up."""
    return -(-trials // max(len(depths), 1))


def passkey_accuracy(model, tok, cells, trials, seed=0, mode="generate", device="cpu", batch_tokens=4096):
    """({length: {depth: accuracy}}, disagreements) over `trials` random 5-digit keys per length, spread evenly over
    the length's depths (rounded up), seeded per (seed, length, depth). In mode "both" the accuracy is teacher
    forcing's and `disagreements` counts the trials where greedy generation scored otherwise (else None)."""
    acc, disagree = {L: {} for L in cells}, 0
    for L, depths in cells.items():
        check_length(model, L)
        per_depth = trials_per_depth(trials, depths)
        trial = [(d, int(k)) for d in depths
                 for k in np.random.default_rng([seed, L, round(d * 1000)]).integers(10000, 100000, size=per_depth)]
        prompts = [passkey_prompt(tok, L, d, k) for d, k in trial]
        teacher = passkey_teacher(model, tok, prompts, device, batch_tokens) if mode != "generate" else None
        greedy = [passkey_generate(model, tok, p, k, device) for p, (_, k) in zip(prompts, trial)] \
            if mode != "teacher" else None
        hits = teacher if teacher is not None else greedy
        disagree += sum(a != b for a, b in zip(teacher, greedy)) if mode == "both" else 0
        for d in depths:
            acc[L][d] = float(np.mean([h for h, (dd, _) in zip(hits, trial) if dd == d]))
    return acc, (disagree if mode == "both" else None)


def key_distances(tok, lengths, depths):
    """{length: {depth: how many tokens back from the answer the key line starts}} (the same for every 5-digit
    key): a key farther back than a model's pretraining length L0 is one it can only find past L0."""
    return {L: {d: passkey_prompt(tok, L, d, 10_000).distance for d in depths} for L in lengths}


def beyond(acc, distance, L0, L):
    """Mean accuracy at length L over the depths whose key lies farther back than L0 (None if there is none)."""
    far = [a for d, a in acc[L].items() if distance[L][d] > L0]
    return float(np.mean(far)) if far else None


# ----------------------------------------------------------------------------- the driver
# (a first reading may skip the driver: which models and documents, checks before evaluating, files out)
def model_specs(models):
    """'a=dir1,dir2' -> [("a", dir1), (name, dir2)]; a name is the folder's, or its parent's for final/ckpt_*."""
    specs = []
    for item in models.split(","):
        name, _, path = item.rpartition("=")
        p = Path(path.rstrip("/"))
        specs.append((name or (p.parent.name if p.name == "final" or p.name.startswith("ckpt_") else p.name), path))
    return specs


def load_docs(cfg, first_model):
    """(documents, tokenizer, description) from a prepare.py folder or from text/jsonl files. The tokenizer is
    --tokenizer, else the first model's own, else the one the prepared folder was made with, else web-bpe4k."""
    prepared = os.path.exists(os.path.join(cfg.data, cfg.split + ".json"))
    data = TokenDataset(cfg.data, cfg.split) if prepared else None
    tok = (load_tokenizer(cfg.tokenizer) if cfg.tokenizer else own_tokenizer(first_model)
           or load_tokenizer(data.meta["tokenizer"] if data else "web-bpe4k"))
    if data:
        made_by = own_tokenizer(data.meta["tokenizer"])  # None where its files are gone: then the sizes must agree
        if tok.n_vocab != data.meta["n_vocab"] or (made_by is not None and not same_tokenizer(made_by, tok)):
            raise ValueError(f"{cfg.data} was tokenized by {data.meta['tokenizer']} ({data.meta['n_vocab']} tokens), "
                             f"not by {tok.name} ({tok.n_vocab}): prepare it again with the model's tokenizer")
        return [data.doc(i) for i in range(len(data))], tok, f"{cfg.data} ({cfg.split})"
    docs = [np.array([start_id(tok)] + tok.encode(text)) for _, text in read_documents(cfg.data.split(","), cfg.key)]
    return docs, tok, cfg.data


def evaluate_models(cfg, progress=True):
    """Evaluate every model in cfg.models; write OUT/{ppl,passkey}.{json,md}, OUT/position_loss.json and
    PLOTS/{ppl,position_loss,passkey_NAME}.png."""
    device = pick_device(cfg.device)
    lengths = [int(x) for x in cfg.lengths.split(",")]
    pk_lengths = [int(x) for x in (cfg.passkey_lengths or cfg.lengths).split(",")]
    depths = [float(x) for x in cfg.passkey_depths.split(",")]
    specs = model_specs(cfg.models)
    claim_outputs(cfg)
    docs, tok, source = load_docs(cfg, specs[0][1])
    # what would fail after hours of perplexity fails now: a passkey length too short for the template, a length no
    # document holds, a model that is missing, not the tokenizer's, unreadable or not finite, an output folder that
    # holds another evaluation or is in use
    for L in pk_lengths if cfg.passkey_trials else []:
        passkey_prompt(tok, L, 0.0, 10_000)
    longest = max((len(d) - (len(d) > 0 and d[0] == start_id(tok)) for d in docs), default=0)
    for L in lengths:
        if longest < L:  # as perplexity() scores them
            raise ValueError(f"no document is long enough for a {L}-token window")
    for _, path in specs:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no such model folder")
        if os.path.exists(os.path.join(path, "config.json")):
            check_vocabulary(read_hf_config(path).vocab_size, path, tok)
    for _, path in specs:  # each loaded once now, then again in its turn: a load is short beside an evaluation
        load_model(cfg, path, tok)
    claim_outputs(cfg, lock=True)
    distance = key_distances(tok, pk_lengths, depths) if cfg.passkey_trials else {}
    cells = passkey_cells(distance, cfg.passkey_far)
    ppl, keys, disagree = {}, {}, {}
    for name, path in specs:
        model = load_model(cfg, path, tok).to(device).eval()
        L0, Lt = model.cfg.L0, model.cfg.max_seq_len
        print(f"{name}: {path}, L0 = {L0}, Lt = {Lt}, rope scaling {model.cfg.rope_scaling}")
        res = {}
        for L in lengths:
            cut = [d[:max(cfg.max_tokens, L) + 1] for d in docs] if cfg.max_tokens else docs
            with eval_memory(cfg, f"{name}'s perplexity at", L):
                res[L] = perplexity(model, cut, L, bos_id=start_id(tok), stride=cfg.stride, truncate=cfg.truncate,
                                    batch_tokens=cfg.batch_tokens, device=device, progress=progress)
        print(f"{name}: perplexity " + ", ".join(f"@{L}: {r['ppl']:.3f}" for L, r in res.items()))
        ppl[name] = {"path": path, "L0": L0, "Lt": Lt, "ppl": res}
        if cfg.passkey_trials:
            with eval_memory(cfg, f"{name}'s passkeys up to", max(pk_lengths)):
                keys[name], disagree[name] = passkey_accuracy(model, tok, cells, cfg.passkey_trials, cfg.seed,
                                                              cfg.passkey_mode, device, cfg.batch_tokens)
            print(f"{name}: passkey " + ", ".join(
                f"@{L}: {np.mean(list(a.values())):.0%}" + ("" if beyond(keys[name], distance, L0, L) is None else
                                                             f" ({beyond(keys[name], distance, L0, L):.0%} beyond L0)")
                for L, a in keys[name].items()) + ("" if disagree[name] is None else
                                                   f"; teacher forcing and generation disagree on {disagree[name]}"))
        del model  # before the next one loads
    write_results(cfg, f"{source}, tokenizer {tok.name}", ppl, keys, distance, disagree)
    return ppl, keys


def load_model(cfg, path, tok):
    """A model to evaluate, on the CPU: the tokenizer's, and with finite weights, as train.py requires of a model."""
    model = from_pretrained(path, cfg.max_seq_len or None, getattr(torch, cfg.dtype))
    check_vocabulary(model.cfg.vocab_size, path, tok)
    if not weights_finite(model):
        raise ValueError(f"{path}: its weights are not all finite")
    return model


def eval_memory(cfg, what, L):
    """Memory that runs out in an evaluation as one line naming the length and the windows a pass holds."""
    rows = max(1, cfg.batch_tokens // L)
    fix = (f"lower --batch_tokens={cfg.batch_tokens}" if rows > 1 else
           f"one window of {L} tokens is the least a pass holds: evaluate shorter lengths, or on more memory")
    return out_of_memory(f"evaluating {what} {L} tokens, up to {rows} window{'s' * (rows > 1)} a pass", fix)


def plots_dir(cfg):
    """Where the figures go: the --out folder (plots=auto), another folder, or "" (none)."""
    return cfg.out if cfg.plots == "auto" else cfg.plots


def claim_outputs(cfg, lock=False):
    """An output folder holds one evaluation, so that its tables and figures are of the same models and settings:
    --out with another's results (its ppl.json, written last) is refused naming its models, as is --plots with
    another's figures (its ppl.png: plots/ holds the README's). With lock, --out is made and locked for this
    process's life (train.py's lock), so that a second evaluation into it meanwhile is refused naming this one."""
    earlier = os.path.join(cfg.out, "ppl.json")
    if os.path.exists(earlier):
        try:
            with open(earlier) as f:
                models = " of " + ", ".join(json.load(f)["models"])
        except (OSError, ValueError, KeyError, TypeError):
            models = ""
        raise ValueError(f"{cfg.out} holds an earlier evaluation{models} ({earlier}): choose another --out, or "
                         "remove it")
    figures = plots_dir(cfg)
    if figures and os.path.realpath(figures) != os.path.realpath(cfg.out) and os.path.exists(
            os.path.join(figures, "ppl.png")):
        raise ValueError(f"--plots={cfg.plots} holds another evaluation's figures ({os.path.join(figures, 'ppl.png')}):"
                         " choose another --plots, or --plots= for none")
    if lock:
        os.makedirs(cfg.out, exist_ok=True)
        lock_folder(cfg.out, "evaluation", "--out")
        claim_outputs(cfg)  # again, now that no other evaluation can write it
        if figures:
            os.makedirs(figures, exist_ok=True)


def write_results(cfg, source, ppl, keys, distance=None, disagree=None):
    """The tables, JSON and figures of an evaluation, each written whole or not at all (util.atomic_open), and
    OUT/ppl.json last: its presence says the evaluation is complete."""
    import plots  # here, not at the top: train.py imports this file for perplexity() and needs no matplotlib
    figures = plots_dir(cfg)

    def write(name, text):
        with atomic_open(os.path.join(cfg.out, name)) as f:
            f.write(text)
    mode = "truncate" if cfg.truncate else f"sliding window, stride {cfg.stride or '= window'}"
    curves = {n: r["ppl"][cfg.position_len].pop("position") for n, r in ppl.items()} if cfg.position_len else {}
    for r in ppl.values():
        for v in r["ppl"].values():
            v.pop("position", None)
    ppl_json = json.dumps({"protocol": {"data": source, "mode": mode, "max_tokens": cfg.max_tokens}, "models": ppl},
                          indent=1)  # written last
    lengths = list(next(iter(ppl.values()))["ppl"])
    rows = [[name] + [f"{v:.2f}" if v < 1e4 else f"{v:.2e}" for v in (r["ppl"][L]["ppl"] for L in lengths)]
            for name, r in ppl.items()]
    write("ppl.md", f"Perplexity on {source}, {mode}, token-weighted.\n\n" + markdown(["model", *lengths], rows))
    if figures:
        plots.plot_perplexity({n: {L: v["ppl"] for L, v in r["ppl"].items()} for n, r in ppl.items()},
                              os.path.join(figures, "ppl.png"), plots.context_marks(ppl), f"Perplexity on {source}")
    if curves:
        n_windows = next(iter(ppl.values()))["ppl"][cfg.position_len]["windows"]
        write("position_loss.json", json.dumps({
            "protocol": {"data": source, "length": cfg.position_len, "windows": n_windows, "mode": mode},
            "models": curves}))
        if figures:
            plots.plot_position_loss(curves, os.path.join(figures, "position_loss.png"), plots.context_marks(ppl),
                                     n_windows)
    if not keys:
        write("ppl.json", ppl_json)
        return
    write("passkey.json", json.dumps({"protocol": {"trials_per_length": cfg.passkey_trials, "mode": cfg.passkey_mode,
                                                  "far": cfg.passkey_far, "seed": cfg.seed},
                                      "distance": distance, "models": keys, "disagreements": disagree}, indent=1))
    depths = sorted({d for acc in keys.values() for a in acc.values() for d in a})
    rows = [[name, L] + [f"{a[d]:.0%}" if d in a else "" for d in depths] + [f"{np.mean(list(a.values())):.0%}"]
            for name, acc in keys.items() for L, a in acc.items()]
    rows = [["key distance", L] + [distance[L][d] for d in depths] + [""] for L in distance] + rows
    write("passkey.md", f"Passkey retrieval accuracy, {cfg.passkey_trials} trials per length, {cfg.passkey_mode}; "
          "the first rows give how many tokens back from the answer each key line starts.\n\n"
          + markdown(["model", "length"] + [f"depth {d:.0%}" for d in depths] + ["mean"], rows))
    for name, acc in keys.items() if figures else ():
        plots.plot_passkey(acc, os.path.join(figures, f"passkey_{name}.png"), f"Passkey retrieval: {name}")
    write("ppl.json", ppl_json)


if __name__ == "__main__":
    cfg = parse_config(EvalConfig, sys.argv[1:], __doc__)
    on_signals()  # SIGTERM as Ctrl-C; a file-size limit as a full disk
    print(json.dumps(asdict(cfg)))
    try:
        evaluate_models(cfg)
    except (ValueError, OSError, ImportError, MemoryError) as e:  # a bad model, data or length, a full disk, too
        sys.exit(f"error: {e}")                                    # little memory: one line, no traceback
    except KeyboardInterrupt:
        print("interrupted: nothing written (results are written once every model is evaluated)", file=sys.stderr)
        sys.exit(exit_status())
