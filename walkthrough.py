"""walkthrough.py: PoSE in one pass -- one held-out document, one training window whose positions skip ahead, the model
extended to the target length, one forward pass. No training loop: train.py does this for every row of every batch.

    python walkthrough.py                 # the shipped tiny base, Lc = 128 -> Lt = 1024, in seconds
    python walkthrough.py --Lt=8192       # the paper's 64x

Read it beside pose.py (pose_window: the chunks) and model.py (LLaMA.extend_context: the RoPE scaling for Lt).
"""
import sys
from dataclasses import dataclass

import numpy as np
import torch

import pose
from checkpoint import from_pretrained
from config import parse_config
from prepare import CORPUS, read_documents
from tokenizer import load_tokenizer, start_id

BASE = "models/tiny_base"  # pretrained at L0 = 128 (configs/tiny_pretrain*.toml)


@dataclass
class Walk:
    Lc: int = 128    # the training window: tokens per example
    Lt: int = 1024   # the target length: positions reach up to Lt - 1

    def check(self):
        pose.check(self.Lc, self.Lt, "pose", 2, "skip")  # N = 2 chunks: Lc >= 2


def walk(cfg):
    # 1. one held-out document (a book the base never read), its first 5·Lc tokens: all a window may read
    tok = load_tokenizer(BASE)
    name, text = read_documents(CORPUS["eval"])[0]
    doc = np.array([start_id(tok)] + tok.encode(text[:40 * pose.DOC_CAP * cfg.Lc])[:pose.DOC_CAP * cfg.Lc - 1])
    print(f"document: {name}, {len(doc)} tokens read (BOS first)")

    # 2. one PoSE window: N = 2 chunks of Lc tokens in all, the second one's positions skipped ahead by u_1
    ch = pose.pose_window(len(doc), cfg.Lc, cfg.Lt, N=2, rng=np.random.default_rng(0))
    print(f"\none PoSE window, Lc = {cfg.Lc} -> Lt = {cfg.Lt} (pose.pose_window):\n{pose.describe(ch, cfg.Lt)}")
    pos, idx = pose.window_indices(ch)  # token k of the window is doc[idx[k]] at position pos[k]
    tokens = doc[idx]
    for i, (l, st) in enumerate(zip(ch.l, ch.st)):
        print(f"  c_{i} reads {tok.decode(tokens[st:st + min(l, 12)])!r}{' …' if l > 12 else ''}")

    # 3. the model, its RoPE scaled for Lt: s = Lt / L0 (the headline's PoSE-YaRN, configs/tiny_pose.toml)
    model = from_pretrained(BASE).eval()
    L0 = model.cfg.L0
    model.extend_context(cfg.Lt, "yarn_pose", beta_fast=4.0)
    print(f"\nmodel: {BASE}, pretrained at L0 = {L0}; extend_context({cfg.Lt}) gives s = Lt / L0 = {cfg.Lt / L0:g}:"
          f"\n  {model.cfg.rope_scaling}")

    # 4. one forward pass with the window's own positions: input tokens[:-1] at pos[:-1], targets tokens[1:]
    x, p, y = (torch.from_numpy(a)[None] for a in (tokens[:-1], pos[:-1], tokens[1:]))
    with torch.no_grad():
        loss = model(x, p, y, reduction="none").view(-1)    # (Lc - 1,) next-token losses
        plain = model(x, torch.arange(cfg.Lc - 1)[None], y)  # the same tokens at positions 0 … Lc - 2
    jump = ch.st[1] - 1  # the token whose target is chunk 1's first, predicted across the skip
    print(f"\nloss over the window {loss.mean():.3f} (at positions 0 … {cfg.Lc - 2} instead: {plain:.3f}); "
          f"predicting c_1's first token across the skip: {loss[jump]:.3f}")

    # 5. which relative distances q - k (query after key) this one window trains
    d = pos[:-1, None] - pos[None, :-1]
    seen = np.unique(d[d >= 0])
    far = seen[seen >= cfg.Lc]
    print(f"distances trained: {len(seen)} of the {cfg.Lt} in [0, Lt); {len(far)} of them at or beyond Lc"
          + (f" ({far.min()} … {far.max()}), which a plain {cfg.Lc}-token window never holds" if len(far) else ""))


if __name__ == "__main__":
    try:
        walk(parse_config(Walk, sys.argv[1:], __doc__))
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
