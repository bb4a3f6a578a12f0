"""A single-file LLaMA (RMSNorm, SwiGLU, GQA, RoPE with every common scaling) that takes explicit positions.

Read it top to bottom: config -> RoPE and its scalings -> RMSNorm -> attention -> MLP -> block -> the loss -> the
model. The one thing PoSE needs from a model is `forward(idx, pos)`: every row of a batch carries its own, possibly
skipped, integer positions, and cos/sin are computed per row. RoPE uses Hugging Face's rotate-half layout (dim i is
paired with dim i + head_dim/2); reading and writing checkpoints (HF and Meta) is checkpoint.py's job.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

ROPE_TYPES = ("linear", "ntk", "dynamic", "yarn", "yarn_pose", "llama3", "longrope")  # None: plain RoPE


def llama_ffn_dim(dim, multiple_of=256, ffn_dim_multiplier=None):
    """Meta's rule for the SwiGLU hidden size: 2/3 of 4*dim, times an optional multiplier, rounded up."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class ModelConfig:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int | None = None      # None: plain multi-head attention; fewer than n_heads: GQA
    head_dim: int | None = None        # None: dim // n_heads
    vocab_size: int = 4096
    hidden_dim: int | None = None      # SwiGLU width; None: Meta's rule
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None   # e.g. {"rope_type": "linear", "factor": 8.0}; HF configs: checkpoint.py
    max_seq_len: int = 2048            # the context the model is meant for (the target length once extended)
    tie_embeddings: bool = False

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        self.head_dim = self.head_dim or self.dim // self.n_heads
        self.hidden_dim = self.hidden_dim or llama_ffn_dim(self.dim)
        if self.rope_scaling and self.rope_scaling.get("rope_type") not in ROPE_TYPES:
            raise ValueError(f"unknown rope type {self.rope_scaling.get('rope_type')!r}; expected one of "
                             f"{', '.join(ROPE_TYPES)}")
        assert self.n_heads % self.n_kv_heads == 0, f"n_heads {self.n_heads} not a multiple of n_kv_heads {self.n_kv_heads}"
        assert self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}"

    @property
    def original_len(self):
        """L0, the length the RoPE was pretrained at: the scaling's original_max_position_embeddings where it keeps
        one, max_seq_len / factor for linear (which does not), else max_seq_len."""
        rs = self.rope_scaling or {}
        if "original_max_position_embeddings" in rs:
            return rs["original_max_position_embeddings"]
        return round(self.max_seq_len / rs["factor"]) if rs.get("rope_type") == "linear" else self.max_seq_len


# ----------------------------------------------------------------------------- RoPE
def rope_inv_freq(cfg, seq_len=None):
    """inv_freq (head_dim/2,) in float64 and the attention factor that multiplies cos and sin.

    `seq_len` matters only for 'dynamic', whose base grows with the longest position seen, and 'longrope',
    which switches from short to long divisors past L0 (both HF semantics)."""
    d, base, rs = cfg.head_dim, cfg.rope_theta, cfg.rope_scaling or {"rope_type": "default"}
    kind, s, L0 = rs["rope_type"], rs.get("factor", 1.0), cfg.original_len
    if kind == "ntk":     # fixed NTK-aware: a larger base, nothing else; exported as a new rope_theta
        base = base * rs["alpha"] ** (d / (d - 2))
    if kind == "dynamic":
        L = max(seq_len or 0, L0)
        base = base * ((s * L / L0) - (s - 1)) ** (d / (d - 2))
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    if kind == "linear":  # position interpolation: every position divided by s
        return inv_freq / s, 1.0
    if kind in ("yarn", "yarn_pose"):
        # dims that turn fewer than beta_slow times over L0 are interpolated, more than beta_fast kept, a ramp between
        def corr_dim(rot):
            return d * math.log(L0 / (rot * 2 * math.pi)) / (2 * math.log(base))
        low, high = corr_dim(rs.get("beta_fast") or 32), corr_dim(rs.get("beta_slow") or 1)
        if rs.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
        keep = 1 - ramp       # 1: keep the original frequency (extrapolate), 0: divide by s (interpolate)
        if kind == "yarn":    # transformers' blend of the two frequencies
            inv_freq = inv_freq / s * (1 - keep) + inv_freq * keep
        else:                 # the official PoSE code's "revised" blend of the divisors instead
            inv_freq = inv_freq / ((1 - keep) * s + keep)

        def mscale(m=1.0):
            return 0.1 * m * math.log(s) + 1.0 if s > 1 else 1.0
        att = mscale(rs["mscale"]) / mscale(rs["mscale_all_dim"]) if rs.get("mscale") and rs.get("mscale_all_dim") \
            else mscale()
        return inv_freq, rs.get("attention_factor") or att
    if kind == "longrope":
        divisors = rs["long_factor"] if (seq_len or 0) > L0 else rs["short_factor"]
        att = rs.get("attention_factor") or (math.sqrt(1 + math.log(s) / math.log(L0)) if s > 1 else 1.0)
        return inv_freq / torch.tensor(divisors, dtype=torch.float64), att
    if kind == "llama3":
        lo, hi = rs["low_freq_factor"], rs["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        smooth = ((L0 / wavelen - lo) / (hi - lo)).clamp(0, 1)  # 0 for long wavelengths (÷s), 1 for short (kept)
        return inv_freq / s * (1 - smooth) + inv_freq * smooth, 1.0
    return inv_freq, 1.0


class RoPE(nn.Module):
    """cos/sin tables gathered at arbitrary integer positions, always in float32."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        inv_freq, self.attention_factor = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, pos):
        inv_freq = self.inv_freq
        if self.cfg.rope_scaling and self.cfg.rope_scaling["rope_type"] in ("dynamic", "longrope"):
            inv_freq = rope_inv_freq(self.cfg, int(pos.max()) + 1)[0].float().to(pos.device)
        # bf16 angles are wrong by whole radians at large positions, so autocast is switched off here
        with torch.autocast(pos.device.type, enabled=False):
            angles = pos[..., None].float() * inv_freq       # (B, T, hd/2)
            angles = torch.cat((angles, angles), dim=-1)      # (B, T, hd): rotate-half layout
            return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor


def apply_rope(x, cos, sin):
    """Rotate pairs (i, i + hd/2) of x (B, nh, T, hd) by the angles behind cos/sin (B, 1, T, hd), in float32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(x)


# ----------------------------------------------------------------------------- the transformer
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()  # the variance in float32, as LLaMA does, then back to the input dtype
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, self.nh * self.hd, bias=False)
        self.wk = nn.Linear(cfg.dim, self.nkv * self.hd, bias=False)
        self.wv = nn.Linear(cfg.dim, self.nkv * self.hd, bias=False)
        self.wo = nn.Linear(self.nh * self.hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.nh, self.hd).transpose(1, 2)   # (B, nh, T, hd)
        k = self.wk(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.wv(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        P = 0
        if cache is not None:  # a list [k, v] this layer owns; keys are cached already rotated
            P = 0 if cache[0] is None else cache[0].size(2)
            if P:
                k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)  # (B, nkv, P+T, hd)
            cache[:] = [k, v]
        # causal over the whole window: later chunks see earlier ones, whatever their positions
        mask = None if P == 0 or T == 1 else torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(P)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=P == 0 and T > 1,
                                           enable_gqa=self.nkv != self.nh)            # (B, nh, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class _LinearCrossEntropy(torch.autograd.Function):
    """The summed cross-entropy of logits h @ weight.T, h (N, dim) and targets (N,), one chunk of rows at a time.

    d loss / d logits = softmax(logits) - onehot(target) is known as soon as a chunk's logits are, so the forward
    pass turns them into that chunk's share of dh and dweight at once and drops them: peak memory is one chunk of
    logits, and the (N, V) projection runs once, where recomputing it in the backward pass (checkpointing) would
    run it twice -- on a small model most of the FLOPs. The backward pass only scales the two gradients."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk):
        need_h, need_w = ctx.needs_input_grad[:2]
        total = torch.zeros((), device=h.device)
        dh, dw = torch.empty_like(h) if need_h else None, None
        for i in range(0, h.size(0), chunk):
            hc, tc = h[i:i + chunk], targets[i:i + chunk]
            logits = (hc @ weight.t()).float()                            # (n, V)
            scored, t = (tc != -1).unsqueeze(1), tc.clamp(min=0).unsqueeze(1)  # (n, 1): -1 marks an ignored target
            top, target_logit = logits.amax(-1, keepdim=True), logits.gather(1, t)
            p = logits.sub_(top).exp_()                                    # in place: softmax times its sum
            sum_p = p.sum(-1, keepdim=True)
            total += ((sum_p.log() + top - target_logit) * scored).sum()  # logsumexp - the target's logit
            p.mul_(scored / sum_p).scatter_add_(1, t, -scored.float())    # softmax - onehot; 0 where ignored
            p = p.to(weight.dtype)
            if need_h:
                dh[i:i + chunk] = p @ weight
            if need_w:  # summed in the weight's dtype, whatever autocast computes the product in
                dw_chunk = (p.t() @ hc).to(weight.dtype)
                dw = dw_chunk if dw is None else dw.add_(dw_chunk)
        ctx.grads = dh, dw  # neither an input nor an output, so kept on ctx, and scaled in place below
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        if ctx.grads is None:
            raise RuntimeError("chunked_cross_entropy's gradients are precomputed for one backward pass, not two")
        (dh, dw), ctx.grads = ctx.grads, None
        return None if dh is None else dh.mul_(g), None if dw is None else dw.mul_(g), None, None


def chunked_cross_entropy(h, weight, targets, reduction="mean", chunk=1024):
    """Cross-entropy of logits h @ weight.T without ever holding all (B, T, V) of them. Targets of -1 are ignored.

    A sum or mean under autograd is _LinearCrossEntropy's. Per-token losses (reduction "none") under autograd
    recompute each chunk in the backward pass instead: their weight gradient cannot be summed ahead of time."""
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    if reduction != "none" and torch.is_grad_enabled():
        total = _LinearCrossEntropy.apply(h, weight, targets, chunk)
    else:
        def nll(hc, tc):
            return F.cross_entropy((hc @ weight.t()).float(), tc, ignore_index=-1, reduction="none")
        parts = []
        for i in range(0, h.size(0), chunk):
            hc, tc = h[i:i + chunk], targets[i:i + chunk]
            parts.append(checkpoint(nll, hc, tc, use_reentrant=False) if torch.is_grad_enabled() else nll(hc, tc))
        losses = torch.cat(parts)
        if reduction == "none":
            return losses
        total = losses.sum()
    return total if reduction == "sum" else total / (targets != -1).sum().clamp(min=1)


class LLaMA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.rope = RoPE(cfg)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, pos=None, targets=None, cache=None, reduction="mean"):
        """idx (B, T) token ids; pos (B, T) or (T,) integer positions, None for 0..T-1.

        Returns logits (B, T, V) in float32, or with targets (B, T) the loss (see chunked_cross_entropy).
        `cache` is a list of per-layer [k, v] lists from `new_cache()`, filled in place."""
        B, T = idx.shape
        if pos is None:
            pos = torch.arange(T, device=idx.device)
        assert not pos.is_floating_point(), f"positions must be integers, got {pos.dtype}"
        pos = pos.expand(B, T) if pos.dim() == 1 else pos
        assert pos.shape == (B, T), f"pos has shape {tuple(pos.shape)}, expected {(B, T)} or {(T,)}"
        cos, sin = (t.unsqueeze(1) for t in self.rope(pos))  # (B, 1, T, hd), broadcast over heads
        x = self.tok_embeddings(idx)                        # (B, T, dim)
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, None if cache is None else cache[i])
        x = self.norm(x)
        if targets is None:
            return self.output(x).float()
        return chunked_cross_entropy(x, self.output.weight, targets, reduction)

    def new_cache(self):
        return [[None, None] for _ in self.layers]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, pos=None, generator=None):
        """Greedy (temperature 0) or sampled continuation of idx (B, T) with a KV cache.

        New tokens take positions last_prompt_position + 1, + 2, ..., so a prompt with skipped positions
        continues from where its positions end."""
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device).expand(B, T) if pos is None else pos.expand(B, T)
        cache, out = self.new_cache(), idx
        logits = self(idx, pos, cache=cache)[:, -1]          # (B, V)
        next_pos = pos[:, -1:]
        for _ in range(max_new_tokens):
            if temperature == 0:
                tok = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                tok = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            out, next_pos = torch.cat((out, tok), dim=1), next_pos + 1
            logits = self(tok, next_pos, cache=cache)[:, -1]
        return out
