"""A single-file LLaMA (RMSNorm, SwiGLU, GQA, RoPE with every common scaling) that takes explicit positions.

Read it top to bottom: config -> RoPE and its scalings -> RMSNorm -> attention -> MLP -> block -> the model. The
one thing PoSE needs from a model is `forward(idx, pos)`: every row of a batch carries its own, possibly skipped,
integer positions, and cos/sin are computed per row; `LLaMA.extend_context` gives the RoPE its scaling for the
target length (s = Lt / L0). A first reading takes rope_linear and rope_yarn_pose (the paper's two scalings),
`RoPE`, `Attention`, `LLaMA.extend_context` and `LLaMA.forward`, and may skip what is marked so. RoPE uses Hugging
Face's rotate-half layout (dim i is paired with dim i + head_dim/2); reading and writing checkpoints (HF and Meta)
is checkpoint.py's job. The few ways Qwen2, Qwen3 and Gemma differ from LLaMA are flags in ModelConfig, each off by
default: LLaMA's path is unchanged.
"""
import math
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from chunked_loss import chunked_cross_entropy



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
    L0: int | None = None              # the length its RoPE was pretrained at; None: the scaling's
                                       # original_max_position_embeddings, max_seq_len / factor for linear, else
                                       # max_seq_len (a model that was never extended)
    tie_embeddings: bool = False
    # How other families differ from LLaMA, one flag each (checkpoint.py sets them from a Hugging Face config.json;
    # a first reading may skip them: for LLaMA each is off):
    qkv_bias: bool = False             # Qwen2 / Qwen2.5: biases on the q, k and v projections
    qk_norm: bool = False              # Qwen3: an RMSNorm over each head's q and k before RoPE, to steady attention
    hidden_act: str = "silu"           # Gemma: "gelu_tanh", the MLP gated by tanh-approximated GELU (GeGLU)
    norm_offset: float = 0.0           # Gemma: its norms scale by (1 + w) and store w, so 1.0
    embed_scale: bool = False          # Gemma: embeddings times sqrt(dim), in their own dtype
    model_type: str = "llama"          # the Hugging Face family it was read from, written back as that
    token_ids: dict | None = None      # its config.json's bos / eos / pad token ids, written back unchanged

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        self.head_dim = self.head_dim or self.dim // self.n_heads
        self.hidden_dim = self.hidden_dim or llama_ffn_dim(self.dim)
        rs = self.rope_scaling or {}
        if rs and rs.get("rope_type") not in ROPE_SCALINGS:
            raise ValueError(f"unknown rope type {rs.get('rope_type')!r}; expected one of {', '.join(ROPE_SCALINGS)}")
        remembered = rs.get("original_max_position_embeddings")
        if self.L0 is None:
            linear = rs.get("rope_type") == "linear"
            self.L0 = remembered or (round(self.max_seq_len / rs["factor"]) if linear else self.max_seq_len)
        assert remembered in (None, self.L0), f"L0={self.L0} but the RoPE scaling remembers {remembered}"
        assert self.n_heads % self.n_kv_heads == 0, f"n_heads {self.n_heads} not a multiple of n_kv_heads {self.n_kv_heads}"
        assert self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}"
        assert self.hidden_act in ("silu", "gelu_tanh"), f"hidden_act {self.hidden_act!r}: expected silu or gelu_tanh"


# ----------------------------------------------------------------------------- RoPE and its scalings
# RoPE rotates pair i of a head's dims, (i, i + d/2), by pos · inv_freq_i radians, inv_freq_i = base^(-2i/d): pair i
# turns once every 2π · base^(2i/d) positions (its wavelength), pair 0 fastest. A model pretrained on L0 positions
# has seen pair i turn through at most L0 · inv_freq_i radians. To reach Lt = s · L0, each scaling below changes
# inv_freq (and may scale cos and sin by an attention factor) so that positions in [0, Lt) give angles the model
# knows. Each takes (d, base, rs, L0, seq_len) -- head dim, rope_theta, the rope_scaling dict, the pretraining
# length and the longest position in use -- and returns (inv_freq, attention_factor), inv_freq in float64. Five
# are transformers' own definitions (tested against it); `yarn_pose` (the official PoSE code's) and fixed `ntk` are
# not in transformers, and checkpoint.py exports them as what it runs identically (longrope with fixed divisors, and
# plain RoPE with a larger rope_theta).
def rope_frequencies(d, base):
    """Plain RoPE (Su et al. 2021): inv_freq_i = base^(-2i/d) for pairs i = 0 … d/2 − 1."""
    return 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)


def rope_linear(d, base, rs, L0, seq_len):
    """Position interpolation (Chen et al. 2023), the PoSE paper's first choice: every frequency divided by s, so
    position p turns every pair exactly as p / s did in pretraining, and [0, Lt) lands on [0, L0)."""
    return rope_frequencies(d, base) / rs["factor"], 1.0


def yarn_keep(d, base, rs, L0):
    """YaRN's ramp over the pairs (d/2,): 1 for a pair kept as pretrained, 0 for one divided by s, linear between.
    Pair i turns L0 · base^(-2i/d) / 2π times over L0, so it turns r times at i = d · ln(L0 / (2π · r)) / (2 ln base):
    pairs that turn more than beta_fast times are kept (their angles over Lt are ones they have seen many times
    over), fewer than beta_slow times interpolated (their angles past L0 would be new)."""
    def pair_turning(r):
        return d * math.log(L0 / (2 * math.pi * r)) / (2 * math.log(base))
    low, high = pair_turning(rs.get("beta_fast") or 32), pair_turning(rs.get("beta_slow") or 1)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    return 1 - ((torch.arange(d // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)


def yarn_attention_factor(rs):
    """YaRN's temperature: cos and sin times m = 0.1 ln s + 1 scale every attention logit q·k by m² (the YaRN
    paper's fit, sqrt(1/t) = 0.1 ln s + 1); DeepSeek's variant divides two such terms; attention_factor overrides."""
    def m(mscale=1.0):
        return 0.1 * mscale * math.log(rs["factor"]) + 1.0 if rs["factor"] > 1 else 1.0
    if rs.get("attention_factor"):
        return rs["attention_factor"]
    return m(rs["mscale"]) / m(rs["mscale_all_dim"]) if rs.get("mscale") and rs.get("mscale_all_dim") else m()


def rope_yarn_pose(d, base, rs, L0, seq_len):
    """The PoSE paper's PoSE-YaRN, the official code's "revised" YaRN: yarn_keep's ramp blends the divisors,
    inv_freq / ((1 − keep) · s + keep), where transformers' YaRN blends the frequencies; the same temperature."""
    keep = yarn_keep(d, base, rs, L0)
    return rope_frequencies(d, base) / ((1 - keep) * rs["factor"] + keep), yarn_attention_factor(rs)


# (a first reading may skip the other scalings, down to ROPE_SCALINGS: the same idea, other rules)
def rope_ntk(d, base, rs, L0, seq_len):
    """Fixed NTK-aware scaling (bloc97 2023): base' = base · α^(d/(d−2)), nothing else. The slowest pair
    (i = d/2 − 1) turns at base'^(−(d−2)/d) = base^(−(d−2)/d) / α, exactly α times slower (interpolated, as
    linear would), while pair 0 keeps inv_freq 1 (extrapolated); pairs between are divided by less than α."""
    return rope_frequencies(d, base * rs["alpha"] ** (d / (d - 2))), 1.0


def rope_dynamic(d, base, rs, L0, seq_len):
    """Dynamic NTK (transformers' "dynamic"): fixed NTK whose α follows the longest position in use,
    α = s · L / L0 − (s − 1) with L = max(seq_len, L0): plain RoPE (α = 1) up to L0, then growing with L."""
    L, s = max(seq_len or 0, L0), rs["factor"]
    return rope_frequencies(d, base * (s * L / L0 - (s - 1)) ** (d / (d - 2))), 1.0


def rope_yarn(d, base, rs, L0, seq_len):
    """YaRN (Peng et al. 2023) as transformers defines it: inv_freq · keep + inv_freq / s · (1 − keep) with
    yarn_keep's ramp, cos and sin times yarn_attention_factor."""
    inv_freq, keep = rope_frequencies(d, base), yarn_keep(d, base, rs, L0)
    return inv_freq / rs["factor"] * (1 - keep) + inv_freq * keep, yarn_attention_factor(rs)


def rope_llama3(d, base, rs, L0, seq_len):
    """Llama 3.1's rule: wavelengths shorter than L0 / high_freq_factor keep their frequency, longer than
    L0 / low_freq_factor are divided by s, and between the two the frequency is blended by how many times the
    pair turns over L0."""
    inv_freq, s, lo, hi = rope_frequencies(d, base), rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    turns = L0 * inv_freq / (2 * math.pi)                  # L0 / wavelength
    keep = ((turns - lo) / (hi - lo)).clamp(0, 1)           # 0: ÷ s (long wavelengths), 1: kept (short ones)
    return inv_freq / s * (1 - keep) + inv_freq * keep, 1.0


def rope_longrope(d, base, rs, L0, seq_len):
    """LongRoPE (Ding et al. 2024, Phi-3): a searched divisor per pair, short_factor while every position is below
    L0 and long_factor past it; cos and sin times sqrt(1 + ln s / ln L0)."""
    s = rs["factor"]
    divisors = rs["long_factor"] if (seq_len or 0) > L0 else rs["short_factor"]
    att = rs.get("attention_factor") or (math.sqrt(1 + math.log(s) / math.log(L0)) if s > 1 else 1.0)
    return rope_frequencies(d, base) / torch.tensor(divisors, dtype=torch.float64), att


ROPE_SCALINGS = {"linear": rope_linear, "yarn_pose": rope_yarn_pose, "ntk": rope_ntk, "dynamic": rope_dynamic,
                 "yarn": rope_yarn, "llama3": rope_llama3, "longrope": rope_longrope}  # rope_type -> its rule
ROPE_TYPES = tuple(ROPE_SCALINGS)


def rope_inv_freq(cfg, seq_len=None):
    """inv_freq (head_dim/2,) in float64 and the attention factor of cfg's RoPE; `seq_len` matters only for
    'dynamic' and 'longrope', which change with the longest position in use."""
    if not cfg.rope_scaling:
        return rope_frequencies(cfg.head_dim, cfg.rope_theta), 1.0
    rule = ROPE_SCALINGS[cfg.rope_scaling["rope_type"]]
    return rule(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.L0, seq_len)


def scaling_for(rope_type, s, L0, beta_fast=32.0, beta_slow=1.0):
    """The rope_scaling dict of `rope_type` with factor s for a model pretrained at L0 (None for 'none'): what
    extend_context gives a model. YaRN, llama3, dynamic and longrope remember L0; linear and NTK need only s."""
    if rope_type == "none":
        return None
    rs = {"rope_type": rope_type} | ({"alpha": s} if rope_type == "ntk" else {"factor": s})
    if rope_type == "llama3":
        rs |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    if rope_type not in ("linear", "ntk"):
        rs["original_max_position_embeddings"] = L0
    if rope_type in ("yarn", "yarn_pose"):
        rs |= {"beta_fast": beta_fast, "beta_slow": beta_slow}
    return rs


class RoPE(nn.Module):
    """cos and sin of each row's own integer positions, computed from inv_freq in float32 on every call. The
    scalings that change with the longest position in use (dynamic, longrope) take the batch's, as transformers'
    do: every row of a batch then turns by the same frequencies."""

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
    def __init__(self, dim, eps, offset=0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.ones(dim) - offset)  # a scale of 1 either way

    def forward(self, x):
        xf = x.float()  # the variance in float32, as LLaMA does, then back to the input dtype
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:  # Gemma scales in float32 and rounds once, where LLaMA rounds before scaling
            return ((self.offset + self.weight.float()) * normed).type_as(x)
        return self.weight * normed.type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, self.nh * self.hd, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, self.nkv * self.hd, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, self.nkv * self.hd, bias=cfg.qkv_bias)
        self.wo = nn.Linear(self.nh * self.hd, cfg.dim, bias=False)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:  # one weight of head_dim each, shared by every head
            self.q_norm, self.k_norm = RMSNorm(self.hd, cfg.norm_eps), RMSNorm(self.hd, cfg.norm_eps)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.nh, self.hd).transpose(1, 2)   # (B, nh, T, hd)
        k = self.wk(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.wv(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)                      # each head's vector, over hd
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
        self.act = F.silu if cfg.hidden_act == "silu" else partial(F.gelu, approximate="tanh")

    def forward(self, x):
        return self.w2(self.act(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_offset)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_offset)
        self.feed_forward = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class LLaMA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_offset)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.cfg = cfg  # and with it self.rope (the setter below)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    @property
    def cfg(self):
        return self._cfg

    @cfg.setter
    def cfg(self, cfg):
        """A new config brings its own RoPE: the frequencies can never lag behind the scaling the config names."""
        self._cfg = cfg
        self.rope = RoPE(cfg).to(self.tok_embeddings.weight.device)

    def extend_context(self, Lt, rope_type, L0=None, factor=None, beta_fast=32.0, beta_slow=1.0):
        """Give the model the RoPE scaling `rope_type` (see ROPE_SCALINGS, or 'none') for positions [0, Lt); returns it.

        The factor is s = Lt / L0, L0 being the length the model was *pretrained* at (its config's, or `L0` for a Meta
        checkpoint, which does not record it), not the training window Lc: Llama-2 (L0 = 4096) trained on 2k windows
        for 16k gets s = 4. `factor` overrides s."""
        L0 = L0 or self.cfg.L0
        s = factor or Lt / L0
        if rope_type != "none" and s <= 1:
            raise ValueError(f"Lt={Lt} is within the length the model was pretrained at (L0={L0}): there is nothing "
                             "to extend (rope_type=keep or none), or set rope_factor")
        rs = scaling_for(rope_type, s, L0, beta_fast, beta_slow)
        self.cfg = replace(self.cfg, rope_scaling=rs, max_seq_len=max(Lt, L0), L0=L0)
        return self

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
        if self.cfg.embed_scale:
            x = x * torch.tensor(self.cfg.dim ** 0.5, dtype=x.dtype)
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, None if cache is None else cache[i])
        x = self.norm(x)
        if targets is None:
            return self.output(x).float()
        # = F.cross_entropy(self.output(x).float(), targets, ignore_index=-1), without ever holding the (B, T, V)
        # logits: at T = 16k and a 32k vocabulary they would be 2 GiB in float32, more than the model's activations
        # (chunked_loss.py; it is memory, not PoSE)
        return chunked_cross_entropy(x, self.output.weight, targets, reduction)

    # (a first reading may skip the rest: generation with a KV cache, for passkey retrieval)
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
