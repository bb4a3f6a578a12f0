"""lora.py: LoRA (Hu et al. 2021) for fine-tuning a large model on one GPU: frozen weights, small trained adapters.

Each chosen projection W becomes W x + (alpha / r) · B A x, A (r, in) and B (out, r) trained, B starting at zero so
training starts from the base model; merge_lora folds B A back into W for export. LongLoRA (Chen et al. 2023)
extends context this way with the embeddings and norms also trained, as configs/llama2_7b_pose_16k.toml does.
"""
import math

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) · B A x with W frozen; B starts at zero, so training starts from the base model."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def add_lora(model, rank, alpha, targets, train_embeddings=False, train_norms=False):
    """Freeze the model, put adapters on the projections named in `targets` (of wq, wk, wv, wo, w1, w2, w3), unfreeze
    embeddings / norms if asked. What is trained is float32 whatever the frozen base's dtype: at lr 2e-5, AdamW's
    steps are far below bfloat16's spacing near 1.0 (2^-7), so a bfloat16 norm weight would never move."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for parent in (layer.attention, layer.feed_forward):
            for name in [n for n, _ in parent.named_children() if n in targets]:  # module order: the same adapters
                                                                                   # for a seed, whatever the hash seed
                setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha))
    for name, p in model.named_parameters():
        if (train_embeddings and name.startswith(("tok_embeddings", "output"))) or \
           (train_norms and name.endswith("norm.weight")):
            p.requires_grad_(True)
        if p.requires_grad:
            p.data = p.data.float()  # in place: a tied embedding stays one parameter
    return model


def merge_lora(sd, rank, alpha):
    """A full state dict with LoRA adapters -> the plain model's, each B·A·(alpha / rank) folded into its weight
    (a state dict without adapters comes back as it is)."""
    scale, out = alpha / max(rank, 1), {}
    for k, v in sd.items():
        if k.endswith(".base.weight"):
            stem = k[:-len(".base.weight")]
            out[stem + ".weight"] = v + (sd[stem + ".B"] @ sd[stem + ".A"]).to(v.dtype) * scale
        elif k.endswith(".base.bias"):  # a biased projection (Qwen2's q, k, v): the bias is the base's, unchanged
            out[k[:-len(".base.bias")] + ".bias"] = v
        elif not k.endswith((".A", ".B")):
            out[k] = v
    return out
