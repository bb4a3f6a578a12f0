"""checkpoint.py: weights in and out -- Hugging Face (LLaMA, Mistral, Qwen2 / Qwen2.5, Qwen3, Phi-3, Gemma) and Meta
checkpoints in, Hugging Face out, as the family it came from -- and the training checkpoints train.py resumes from
(the same Hugging Face folder, plus train_state.pt).

    model = from_pretrained("models/tinyllama")          # config.json + safetensors / pytorch_model.bin, sharded or not
    model = from_pretrained("llama-2-7b", max_seq_len=4096)  # Meta: params.json + consolidated.NN.pth
    save_pretrained(model, "out/run/final")              # a folder transformers loads unchanged, as its model_type
    save_checkpoint(...); latest_checkpoint("out/run")   # out/run/ckpt_STEP, written whole or not at all

model.py's names are Meta's (tok_embeddings, attention.wq, feed_forward.w1 ...), so Meta weights need no key map,
only their q/k rows permuted once (Meta pairs head dims (2i, 2i+1) for RoPE, Hugging Face (i, i + hd/2)); Hugging
Face weights need their family's key map (FAMILIES) and no permutation; any other model_type is refused by name.
Pickled weights are read with torch's weights_only loader, which refuses anything but tensors, so a checkpoint cannot
run code.
"""
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from lora import merge_lora
from model import ROPE_TYPES, LLaMA, ModelConfig, llama_ffn_dim, rope_frequencies, rope_inv_freq
from util import WriteError, atomic_path, umask, write_failed

# What each RoPE scaling type reads, as transformers defines them ("ntk" and "yarn_pose" are this project's: fixed
# NTK-aware scaling, and the official PoSE code's revised YaRN). A key outside this table is refused, never ignored:
# ignored, it would make a model that gives other numbers than transformers does. L0 = original_max_position_embeddings.
ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "ntk": ("alpha",),
    "dynamic": ("factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate"),
    "yarn_pose": ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
    "longrope": ("factor", "original_max_position_embeddings", "attention_factor", "short_factor", "long_factor"),
}
REQUIRED = {"linear": ("factor",), "ntk": ("alpha",), "dynamic": ("factor",), "yarn": (), "yarn_pose": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor"), "longrope": ("short_factor", "long_factor")}


def normalize_rope_scaling(rs, max_seq_len):
    """An HF-style scaling dict ('rope_type' or 'type') -> {'rope_type', its keys, L0}, or None for plain RoPE.
    L0 defaults to max_seq_len for the types that remember it (as transformers does); ValueError names any key
    that is unknown or missing."""
    rs = {k: v for k, v in (rs or {}).items() if k not in ("type", "rope_type", "rope_theta")} | {
        "rope_type": (rs or {}).get("rope_type", (rs or {}).get("type", "default"))}
    kind = rs["rope_type"]
    if kind not in ROPE_KEYS:
        raise ValueError(f"unknown rope type {kind!r}; expected one of default, {', '.join(ROPE_TYPES)}")
    if rs.get("partial_rotary_factor", 1.0) == 1.0:
        rs.pop("partial_rotary_factor", None)  # 1.0 rotates every dim, as here
    for key in rs:
        if key != "rope_type" and key not in ROPE_KEYS[kind]:
            raise ValueError(f"rope type {kind!r}: {key!r} is not implemented here (expected only "
                             f"{', '.join(ROPE_KEYS[kind]) or 'rope_theta'})")
    for key in REQUIRED.get(kind, ()):
        if not isinstance(rs.get(key), (int, float, list)):
            raise ValueError(f"rope type {kind!r} needs {key!r}, got {rs.get(key)!r}")
    check_rope_types(rs)
    if kind == "default":
        return None
    if "original_max_position_embeddings" in ROPE_KEYS[kind]:
        rs.setdefault("original_max_position_embeddings", max_seq_len)
    if kind in ("yarn", "longrope") and rs.get("factor") is None:  # transformers: the ratio of the two lengths
        rs["factor"] = max_seq_len / rs["original_max_position_embeddings"]
    key = "alpha" if kind == "ntk" else "factor"
    if kind != "longrope" and (not isinstance(rs[key], (int, float)) or not 1 <= rs[key] < math.inf):
        raise ValueError(f"rope type {kind!r} needs {key!r} >= 1, got {rs[key]!r}")
    return rs


def check_rope_types(rs):
    """A ValueError naming the first rope_scaling value of the wrong type (JSON's "32" is not 32, nor true 1): a
    number where the formulas compute with one, a length, a flag, or per-dimension numbers; null is "not given", as
    in transformers (its default, or REQUIRED's refusal)."""
    def number(v):  # its range is checked where it is used
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    for key, v in rs.items():
        if v is None:
            continue
        if key in ("short_factor", "long_factor"):
            ok, expected = isinstance(v, list) and v != [] and all(map(number, v)), "a list of numbers"
        elif key == "truncate":
            ok, expected = isinstance(v, bool), "true or false"
        elif key == "original_max_position_embeddings":
            ok, expected = number(v) and isinstance(v, int) and v >= 1, "a positive integer"
        else:
            ok, expected = key == "rope_type" or number(v), "a number"
        if not ok:
            raise ValueError(f"rope_scaling.{key} = {v!r}: expected {expected}")


# Hugging Face names -> ours ("{}" is the layer number, None: dropped). Ours are Meta's, so Meta needs no map.
HF_KEYS = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}


# The families: what each Hugging Face model_type adds to or changes in LLaMA, in one table, as transformers 5 builds
# them (a config.json without model_type is read as LLaMA's). Dropout rates (Qwen's attention_dropout, Phi-3's
# resid_pdrop, embd_pdrop) are ignored: they change training only, and this project trains without dropout.
QKV_BIAS = {f"model.layers.{{}}.self_attn.{p}_proj.bias": f"layers.{{}}.attention.w{p}.bias" for p in "qkv"}
QK_NORM = {f"model.layers.{{}}.self_attn.{p}_norm.weight": f"layers.{{}}.attention.{p}_norm.weight" for p in "qk"}
# Phi-3 fuses tensors: a tuple names ours whose rows it stacks, in order ([q; k; v] and [gate; up])
PHI3_KEYS = {k: v for k, v in HF_KEYS.items() if not k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                                 "gate_proj.weight", "up_proj.weight"))} | {
    "model.layers.{}.self_attn.qkv_proj.weight": tuple(f"layers.{{}}.attention.w{p}.weight" for p in "qkv"),
    "model.layers.{}.mlp.gate_up_proj.weight": ("layers.{}.feed_forward.w1.weight", "layers.{}.feed_forward.w3.weight"),
}


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model_type differs from LLaMA, read and written back (transformers' own classes decide)."""
    name: str                 # in messages
    architecture: str         # config.json's "architectures"
    keys: dict                # its tensor names -> ours
    flags: dict = field(default_factory=dict)     # model.py's ModelConfig flags it sets
    allowed: dict = field(default_factory=dict)   # config.json entries its class reads -> the values model.py runs
    window: str | None = None  # "all": sliding_window masks every layer; "qwen": only if use_sliding_window, on the
                               # layers from max_window_layers on (or as layer_types says); None: it has none
    rope_types: tuple | None = None  # the rope types its config class takes (None: all of transformers')
    defaults: dict = field(default_factory=dict)  # entries its config class fills in when config.json has none
    written: dict = field(default_factory=dict)   # entries config_to_hf writes for it


NO_WINDOW = {"use_sliding_window": False, "sliding_window": None}
FAMILIES = {
    "llama": Family("LLaMA", "LlamaForCausalLM", HF_KEYS,
                    allowed={"hidden_act": ("silu",), "attention_bias": (False,), "mlp_bias": (False,)},
                    written={"attention_bias": False, "mlp_bias": False}),
    "mistral": Family("Mistral", "MistralForCausalLM", HF_KEYS, allowed={"hidden_act": ("silu",)}, window="all",
                      written={"sliding_window": None}),
    "qwen2": Family("Qwen2", "Qwen2ForCausalLM", HF_KEYS | QKV_BIAS, {"qkv_bias": True},
                    allowed={"hidden_act": ("silu",)}, window="qwen", written=NO_WINDOW),
    "qwen3": Family("Qwen3", "Qwen3ForCausalLM", HF_KEYS | QK_NORM, {"qk_norm": True},  # its bias is on o too
                    allowed={"hidden_act": ("silu",), "attention_bias": (False,)}, window="qwen",
                    written=NO_WINDOW | {"attention_bias": False}),
    "phi3": Family("Phi-3", "Phi3ForCausalLM", PHI3_KEYS, allowed={"hidden_act": ("silu",)}, window="all",
                   rope_types=("longrope",), defaults={"original_max_position_embeddings": 4096},
                   written={"sliding_window": None}),
    "gemma": Family("Gemma", "GemmaForCausalLM", HF_KEYS, {"hidden_act": "gelu_tanh", "norm_offset": 1.0,
                                                           "embed_scale": True},
                    allowed={"hidden_act": ("gelu_pytorch_tanh", "gelu"),  # transformers reads gelu as tanh's
                             "attention_bias": (False,), "use_bidirectional_attention": (False,)},
                    written={"hidden_act": "gelu_pytorch_tanh", "attention_bias": False}),
}


def family(model_type):
    """The Family of a config.json's model_type, or a ValueError naming it and the ones supported."""
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(FAMILIES)})")
    return FAMILIES[model_type]


def _map_key(key, table):
    """Look a checkpoint key up in a table of '{}'-templated names; KeyError if it is not there."""
    parts = key.split(".")
    layer = next((p for p in parts if p.isdigit()), None)
    template = ".".join("{}" if p == layer else p for p in parts)
    target = table[template]
    if isinstance(target, tuple):
        return tuple(t.replace("{}", layer or "") for t in target)
    return None if target is None else target.replace("{}", layer or "")


def _permute_meta_qk(w, n_heads):
    """Meta pairs dims (2i, 2i+1) in each head, HF pairs (i, i + hd/2): reorder each head's rows once."""
    out, inp = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def load_tensors(path):
    """Tensors from safetensors, or from a torch pickle with weights_only, which refuses any code or object."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(str(path))
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # mmap needs torch's zip format; older pickles are read whole, as safely
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # one line of why: torch's refusal runs to many, of which the one naming what is unsupported is the reason
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
        why = next((line for line in lines if "unsupported" in line.lower()), lines[0]).split(". ")[0]
        raise ValueError(f"{path}: refused or unreadable as a weights-only checkpoint ({type(e).__name__}: {why})") from e


def config_from_hf(c):
    """Our ModelConfig from a Hugging Face config.json dict; ValueError for whatever would make another model."""
    fam = family(c.get("model_type", "llama"))  # a config.json without one is read as LLaMA's, as it always was
    c = fam.defaults | c
    rs = dict(c.get("rope_scaling") or c.get("rope_parameters") or {})  # the older key wins, as in transformers
    theta = c.get("rope_theta") or rs.get("rope_theta", 10000.0)
    kind, max_len = rs.get("rope_type", rs.get("type")), c.get("max_position_embeddings", 2048)
    if fam.rope_types and kind in ("su", "yarn"):  # Phi-3's older names, which transformers reads as longrope
        kind = rs["rope_type"] = "longrope"
        rs.pop("type", None)
    if fam.rope_types and kind not in (None, "default", *fam.rope_types):
        raise ValueError(f"rope type {kind!r} is not {fam.name}'s (transformers takes only default, "
                         f"{', '.join(fam.rope_types)})")
    if kind == "dynamic":  # transformers measures dynamic's growth from max_position_embeddings, and reads no L0
        if "original_max_position_embeddings" in rs:
            raise ValueError("rope type 'dynamic': transformers ignores 'original_max_position_embeddings' (it "
                             "measures growth from max_position_embeddings); remove it")
        rs["original_max_position_embeddings"] = max_len
    elif kind in ("yarn", "llama3", "longrope") and "original_max_position_embeddings" in c:
        rs["original_max_position_embeddings"] = c["original_max_position_embeddings"]  # Phi-3's place; HF's choice
    if c.get("partial_rotary_factor", 1.0) != 1.0:
        rs["partial_rotary_factor"] = c["partial_rotary_factor"]  # refused below, with the key named
    for key, ok in fam.allowed.items():
        if c.get(key) not in (None, *ok):
            raise ValueError(f"{key} = {c[key]!r} is not {fam.name}'s ({ok[0]!r}) and not supported")
    check_window(c, fam, max_len)
    rs = normalize_rope_scaling(rs, max_len)
    # L0: the scaling's own, else the top-level entry this project writes for every model it extends (plain RoPE
    # or fixed NTK keep no scaling dict to hold it), else derived from the scaling (ModelConfig)
    L0 = (rs or {}).get("original_max_position_embeddings") or c.get("original_max_position_embeddings")
    return ModelConfig(dim=c["hidden_size"], n_layers=c["num_hidden_layers"], n_heads=c["num_attention_heads"],
                       n_kv_heads=c.get("num_key_value_heads"), head_dim=c.get("head_dim"),
                       vocab_size=c["vocab_size"], hidden_dim=c["intermediate_size"],
                       norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=rs,
                       max_seq_len=max_len, L0=L0, tie_embeddings=c.get("tie_word_embeddings", False),
                       model_type=c.get("model_type", "llama"), **fam.flags,
                       token_ids={k: c[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in c})


def check_window(c, fam, max_len):
    """A sliding window that would mask some layer's attention within max_position_embeddings is refused (model.py
    attends to the whole window); one transformers would not apply, or only past that length, is ignored, as the
    exported model says (no window)."""
    window = c.get("sliding_window")
    if fam.window == "qwen":  # transformers drops the window unless use_sliding_window, then uses it from
        window = window if c.get("use_sliding_window") else None  # max_window_layers on
        layers = c.get("layer_types") or ["sliding_attention" if i >= c.get("max_window_layers", 28) else "full"
                                          for i in range(c["num_hidden_layers"])]
        window = window if "sliding_attention" in layers else None
    if fam.window and window is not None and window < max_len:
        raise ValueError(f"sliding_window = {window} is shorter than max_position_embeddings = {max_len}: a "
                         f"{fam.name} model with a sliding window is not supported")


def _fixed_divisors(cfg):
    """cfg's RoPE as longrope with the same divisor for short and long: any scaling that does not change with the
    length in use (linear, yarn, yarn_pose, llama3) is one; transformers runs it with our frequencies and factor."""
    inv, att = rope_inv_freq(cfg)
    divisors = (rope_frequencies(cfg.head_dim, cfg.rope_theta) / inv).tolist()
    return {"rope_type": "longrope", "short_factor": divisors, "long_factor": divisors,
            "factor": cfg.rope_scaling["factor"], "attention_factor": att, "original_max_position_embeddings": cfg.L0}


def config_to_hf(cfg):
    """The config.json of cfg's family (its model_type) that transformers reads as cfg, L0 recorded for every rope
    type; a ValueError if the family's config class cannot express cfg's RoPE scaling."""
    fam = family(cfg.model_type)
    rs, theta, max_len = dict(cfg.rope_scaling or {}), cfg.rope_theta, cfg.max_seq_len
    kind = rs.get("rope_type")
    if kind == "ntk":     # fixed NTK is plain RoPE with a larger base
        theta, rs = cfg.rope_theta * rs["alpha"] ** (cfg.head_dim / (cfg.head_dim - 2)), {}
    elif kind == "dynamic" and fam.rope_types and kind not in fam.rope_types:
        raise ValueError(f"rope type 'dynamic' cannot be written as {fam.name} (transformers takes only default, "
                         f"{', '.join(fam.rope_types)}; dynamic changes with the length in use): choose another")
    elif kind == "dynamic":  # HF reads L0 from max_position_embeddings for dynamic
        max_len = rs.pop("original_max_position_embeddings", max_len)
    elif kind == "yarn_pose" or (kind and fam.rope_types and kind not in fam.rope_types):
        rs = _fixed_divisors(cfg)  # transformers has no yarn_pose, Phi3Config no linear, yarn or llama3
    return {"architectures": [fam.architecture], "model_type": cfg.model_type, "hidden_act": "silu",
            "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
            "intermediate_size": cfg.hidden_dim, "rms_norm_eps": cfg.norm_eps, "rope_theta": theta,
            "rope_scaling": rs or None, "max_position_embeddings": max_len,
            "original_max_position_embeddings": cfg.L0,  # L0 for every rope type (transformers reads it as YaRN's)
            "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32"} | fam.written | (cfg.token_ids or {})


# config.json entries and the types they must have (bool is refused where a number is meant: JSON's true is not 4096)
HF_TYPES = {"hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int, "num_key_value_heads": int,
            "head_dim": int, "vocab_size": int, "intermediate_size": int, "max_position_embeddings": int,
            "original_max_position_embeddings": int, "rms_norm_eps": (int, float), "rope_theta": (int, float),
            "tie_word_embeddings": bool, "rope_scaling": dict, "rope_parameters": dict, "model_type": str,
            "sliding_window": int, "use_sliding_window": bool, "layer_types": list}


def read_json(path):
    """A JSON object from `path`, or a ValueError naming the file."""
    try:
        obj = json.loads(Path(path).read_text())
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(obj).__name__}")
    return obj


def check_hf_types(c):
    """A ValueError naming the first entry of a config.json dict with the wrong type or a size that cannot be."""
    for key, typ in HF_TYPES.items():
        v = c.get(key)
        if v is None:
            continue
        if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
            raise ValueError(f"{key} = {v!r}: expected {getattr(typ, '__name__', 'a number')}")
        if typ is int and v < 1:
            raise ValueError(f"{key} = {v}: expected a positive size")
        if typ == (int, float) and not 0 < v < math.inf:  # JSON's NaN and Infinity too
            raise ValueError(f"{key} = {v!r}: expected a finite number > 0")
    heads, kv = c.get("num_attention_heads"), c.get("num_key_value_heads") or c.get("num_attention_heads")
    if heads and kv and heads % kv:
        raise ValueError(f"num_attention_heads = {heads} is not a multiple of num_key_value_heads = {kv}")
    if heads and not c.get("head_dim") and c.get("hidden_size", 0) % (2 * heads):
        raise ValueError(f"hidden_size = {c['hidden_size']} does not split into {heads} heads of an even size")


def read_hf_config(path):
    """The ModelConfig of a Hugging Face folder, without reading its weights; errors name the file."""
    path = Path(path) / "config.json"
    c = read_json(path)
    try:
        check_hf_types(c)
        return config_from_hf(c)
    except KeyError as e:  # name the file: the message alone does not say which model it is
        raise ValueError(f"{path}: no {e} entry") from e
    except (ValueError, AssertionError) as e:
        raise ValueError(f"{path}: {e}") from e


def _read_hf(path):
    cfg = read_hf_config(path)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).exists():
            weight_map = read_json(path / index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) and "/" not in f
                                                           for f in weight_map.values()):
                raise ValueError(f"{path / index}: expected a 'weight_map' of tensor names to shard files in {path}")
            files = sorted(set(weight_map.values()))
            for f in files:
                if not (path / f).is_file():
                    raise FileNotFoundError(f"{path / index} names {f}, which is not in {path}")
            break
    else:
        files = [f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).exists()][:1]
    if not files:
        raise FileNotFoundError(f"{path}: no model.safetensors, pytorch_model.bin or shard index found")
    sd, keys = {}, FAMILIES[cfg.model_type].keys
    for f in files:
        for k, v in load_tensors(path / f).items():
            try:
                ours = _map_key(k, keys)
            except KeyError:
                raise ValueError(f"{path / f}: unexpected key {k!r} for {cfg.model_type}") from None
            if ours is not None:
                sd[ours] = v
    return cfg, sd


def _read_meta(path, max_seq_len):
    p = read_json(path / "params.json")
    for key in ("dim", "n_layers", "n_heads"):
        if not isinstance(p.get(key), int) or isinstance(p.get(key), bool) or p[key] < 1:
            raise ValueError(f"{path / 'params.json'}: {key} = {p.get(key)!r}: expected a positive integer")
    shards = sorted(path.glob("consolidated.*.pth"))
    if not shards:
        raise FileNotFoundError(f"{path}: params.json but no consolidated.*.pth shards")
    parts = [load_tensors(s) for s in shards]
    if "tok_embeddings.weight" not in parts[0]:
        raise ValueError(f"{shards[0]}: no 'tok_embeddings.weight': not a Meta LLaMA shard")
    if p["n_heads"] % p.get("n_kv_heads", p["n_heads"]):
        raise ValueError(f"{path / 'params.json'}: n_heads = {p['n_heads']} is not a multiple of n_kv_heads")
    rs = None
    if p.get("use_scaled_rope"):  # Llama 3.1+: the llama3 frequency rule lives in Meta's code, not in params
        rs = {"rope_type": "llama3", "factor": p.get("rope_scaling_factor", 8.0), "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    emb = parts[0]["tok_embeddings.weight"]
    n_vocab = p.get("vocab_size", -1)
    if n_vocab <= 0:  # LLaMA 1 leaves it to the tokenizer; the embedding is split on vocab iff its width is full
        n_vocab = emb.shape[0] * (len(parts) if emb.shape[1] == p["dim"] else 1)
    cfg = ModelConfig(dim=p["dim"], n_layers=p["n_layers"], n_heads=p["n_heads"], n_kv_heads=p.get("n_kv_heads"),
                      vocab_size=n_vocab, norm_eps=p.get("norm_eps", 1e-5), rope_theta=p.get("rope_theta", 10000.0),
                      rope_scaling=rs, max_seq_len=max_seq_len,
                      hidden_dim=llama_ffn_dim(p["dim"], p.get("multiple_of", 256), p.get("ffn_dim_multiplier")))
    return cfg, parts


def from_pretrained(path, max_seq_len=None, dtype=torch.float32):
    """A LLaMA from a Hugging Face directory (config.json) or a Meta one (params.json + consolidated.NN.pth).

    `max_seq_len` is for Meta checkpoints, whose params.json does not record the length they were pretrained at
    (LLaMA 2048, Llama-2 4096, Llama-3 8192); a Meta checkpoint without it is refused.
    `dtype` is the parameters' dtype (bf16 halves a 7B model's memory when only LoRA adapters are trained)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    if (path / "config.json").exists():
        cfg, sd = _read_hf(path)
        meta = False
    elif (path / "params.json").exists():
        if not max_seq_len:
            raise ValueError(f"{path} is a Meta checkpoint, whose params.json does not record the length it was "
                             "pretrained at: give it (LLaMA 2048, Llama-2 4096, Llama-3 8192)")
        cfg, parts = _read_meta(path, max_seq_len)
        meta = True
    else:
        raise FileNotFoundError(f"{path}: neither config.json (Hugging Face) nor params.json (Meta) found")
    with torch.device("meta"):
        model = LLaMA(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if meta:
        sd = {}
        for k in parts[0]:
            if k == "rope.freqs":
                continue
            if k not in expected:
                raise ValueError(f"{path}: unexpected key {k!r}")
            sd[k] = _merge_shards(k, [x[k] for x in parts], expected[k])
            if k.endswith(("attention.wq.weight", "attention.wk.weight")):
                sd[k] = _permute_meta_qk(sd[k], cfg.n_heads if k.endswith("wq.weight") else cfg.n_kv_heads)
    for names in [k for k in sd if isinstance(k, tuple)]:  # a fused tensor (Phi-3): our tensors' rows, stacked
        fused, rows = sd.pop(names), [expected[n][0] if n in expected else 0 for n in names]
        if fused.dim() != 2 or fused.shape[0] != sum(rows):
            raise ValueError(f"{path}: the fused tensor of {', '.join(names)} has shape {tuple(fused.shape)}, not "
                             f"{' + '.join(map(str, rows))} rows")
        sd.update(zip(names, fused.split(rows)))
    if cfg.tie_embeddings:
        sd.setdefault("output.weight", sd.get("tok_embeddings.weight"))
    for k, shape in expected.items():
        if k not in sd:
            raise ValueError(f"{path}: missing key {k!r} (expected shape {tuple(shape)})")
        if sd[k].shape != shape:
            raise ValueError(f"{path}: {k!r} has shape {tuple(sd[k].shape)} in the checkpoint, "
                             f"{tuple(shape)} in the model built from its config")
    model.load_state_dict(sd, assign=True)
    if cfg.tie_embeddings:  # assign=True gave each name its own Parameter: tie them again, or training unties them
        model.output.weight = model.tok_embeddings.weight
    model.cfg = cfg  # the RoPE again, now on the weights' device: the meta device's buffer holds no values
    return model.to(dtype)


def _merge_shards(key, shards, shape):
    """Meta model-parallel shards: replicated, or split along the one dim whose sizes add up to the model's."""
    if len(shards) == 1 or shards[0].shape == shape:
        return shards[0]
    for dim in range(len(shape)):
        if sum(s.shape[dim] for s in shards) == shape[dim]:
            return torch.cat(shards, dim=dim)
    raise ValueError(f"cannot merge {len(shards)} shards of {key!r} with shape {tuple(shards[0].shape)} "
                     f"into {tuple(shape)}")


def hf_state_dict(cfg, state):
    """Our state dict under cfg's family's names, fused tensors stacked again (a tied lm_head is not written: HF
    rebuilds it from the embedding); a ValueError names a tensor the family has no name for."""
    out, used = {}, {"output.weight"} if cfg.tie_embeddings else set()
    for hf, ours in FAMILIES[cfg.model_type].keys.items():
        if ours is None or (cfg.tie_embeddings and ours == "output.weight"):
            continue
        for i in range(cfg.n_layers) if "{}" in hf else [""]:
            names = [n.replace("{}", str(i)) for n in (ours if isinstance(ours, tuple) else (ours,))]
            out[hf.replace("{}", str(i))] = torch.cat([state[n] for n in names]) if len(names) > 1 else state[names[0]]
            used.update(names)
    if set(state) - used:
        raise ValueError(f"{sorted(set(state) - used)[0]!r} has no name in a {cfg.model_type} checkpoint")
    return out


def save_pretrained(model, path, state_dict=None, dtype=None, tokenizer_files=()):
    """Write a Hugging Face directory (config.json + model.safetensors) that transformers loads unchanged.

    `state_dict` (default: the model's) lets a caller save weights it gathered or merged itself; `dtype` casts
    them (e.g. bfloat16 to ship); `tokenizer_files` are copied beside them, so that the folder is a whole model.
    Each file is written to a temporary name and renamed, so a crash never leaves a half-written file."""
    path = Path(path)
    state = model.state_dict() if state_dict is None else state_dict
    config = config_to_hf(model.cfg)  # first: a scaling the family cannot express is refused before anything is written
    sd = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in hf_state_dict(model.cfg, state).items()}
    config |= {"torch_dtype": str(next(iter(sd.values())).dtype).removeprefix("torch.")}
    path.mkdir(parents=True, exist_ok=True)
    files = [("model.safetensors", lambda f: _save_safetensors(sd, f)),
             ("config.json", lambda f: Path(f).write_text(json.dumps(config, indent=2)))]
    files += [(Path(t).name, lambda f, t=t: shutil.copyfile(t, f)) for t in tokenizer_files]
    for name, write in files:
        with atomic_path(path / name) as tmp:  # a full disk: one line naming the file, no temporary left
            write(tmp)


def _save_safetensors(sd, path):
    """safetensors' save_file; a write the disk refuses is the OSError it was (safetensors raises its own
    SafetensorError, "... I/O error: No space left on device (os error 28)")."""
    from safetensors.torch import save_file
    try:
        save_file(sd, path, metadata={"format": "pt"})
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        code = re.search(r"os error (\d+)", str(e))
        raise (OSError(int(code[1]), os.strerror(int(code[1]))) if code else OSError(str(e))) from e


class _Writes:
    """A file's write(), keeping the OSError that torch.save reports only as a RuntimeError without its cause
    ("unexpected pos 704 vs 598")."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        self.f.flush()


def _torch_save(obj, path):
    """torch.save to `path`, synced to disk; a write the disk refuses is one WriteError naming the file."""
    try:
        with open(path, "wb") as f:
            writes = _Writes(f)
            try:
                torch.save(obj, writes)
            except RuntimeError:
                if writes.error is None:
                    raise
                raise writes.error from None
            f.flush()
            os.fsync(f.fileno())  # on disk before its folder is renamed into place (as save_pretrained's files)
    except OSError as e:
        raise write_failed(path, e) from e


# ----------------------------------------------------------------------------- a run's folder and its checkpoints
# A run owns its out_dir: a lock held for its life refuses a second process, a fresh run refuses a folder an earlier
# run left files in, and everything is written into a temporary name created fresh inside out_dir and then renamed
# into place -- never through a symbolic link, never half-written. Only finite weights are ever saved.
RUN_FILES = ("final", "log.jsonl", "latest")  # besides ckpt_*: what marks a folder as an earlier run's


_HELD = {}  # out_dir (real path) -> the file descriptor of its lock, held by this process


def claim_run_folder(out_dir, resume):
    """Lock out_dir for this process's life, or a ValueError naming the run that holds it; a fresh run (not resume)
    into a folder with an earlier run's files is refused too, but not into one that only holds the log of a start
    that stopped before its first checkpoint."""
    if os.path.islink(out_dir):
        raise ValueError(f"{out_dir} is a symbolic link: a run writes only into a real folder")
    earlier = sorted(n for n in (os.listdir(out_dir) if os.path.isdir(out_dir) else ())
                     if n in RUN_FILES or n.startswith("ckpt_"))
    if earlier == ["log.jsonl"]:  # the log of a start that failed before its first checkpoint: there is nothing to
        earlier = []              # continue, so the same command may start again (its log begins anew)
    if earlier and not resume:
        raise ValueError(f"{out_dir} holds an earlier run ({', '.join(earlier)}); --init_from=resume continues it, "
                         "or choose another out_dir")
    os.makedirs(out_dir, exist_ok=True)
    lock_folder(out_dir)
    for name in os.listdir(out_dir):  # half-written temporaries of a run that was killed: only the lock's holder
        if name.startswith((".ckpt_", ".final.", ".latest.")):  # writes them, and that is now this process
            _remove(os.path.join(out_dir, name))


def lock_folder(folder, who="run", option="out_dir"):
    """Lock `folder` (it exists) for this process's life, or a ValueError naming the process that holds it: a flock
    on folder/.lock, which holds the holder's pid and which the kernel releases however the process ends."""
    if os.path.realpath(folder) in _HELD:  # this process's own earlier run (one that raised): let it go
        os.close(_HELD.pop(os.path.realpath(folder)))
    fd = os.open(os.path.join(folder, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(f"{folder} is in use by another {who} (pid {holder}); wait for it, or choose another "
                         f"{option}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[os.path.realpath(folder)] = fd


def open_log(out_dir, resume):
    """out_dir/log.jsonl for appending (resume) or as a new file, never through a symbolic link; unbuffered, so that
    each record is on its way to disk when log_record returns."""
    path = os.path.join(out_dir, "log.jsonl")
    if os.path.islink(path):
        raise ValueError(f"{path} is a symbolic link: a run writes only into its own files")
    def nofollow(name, flags):  # open()'s opener
        return os.open(name, flags | os.O_NOFOLLOW, 0o644)
    return open(path, "ab" if resume else "wb", buffering=0, opener=nofollow)


def log_record(log, record):
    """Append one JSON line to a run's log (open_log's file). A write the disk refuses is one WriteError naming the
    file, and the log is cut back to its whole lines, which every reader of it can parse."""
    data, end = (json.dumps(record) + "\n").encode(), os.lseek(log.fileno(), 0, os.SEEK_END)
    try:
        while data:
            data = data[log.write(data):]
    except OSError as e:
        os.ftruncate(log.fileno(), end)
        raise write_failed(log.name, e) from e


def latest_checkpoint(out_dir):
    """The folder out_dir/latest names (the last checkpoint whose every file was on disk); where `latest` is missing
    -- a crash between a first checkpoint's rename and the pointer's, or a hand that deleted it -- the newest
    complete checkpoint there (complete_checkpoint); None if there is none."""
    try:
        with open(os.path.join(out_dir, "latest")) as f:
            return os.path.join(out_dir, f.read().strip())
    except (FileNotFoundError, NotADirectoryError):
        pass
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    for name in sorted((n for n in names if re.fullmatch(r"ckpt_\d{7}", n)), reverse=True):
        if complete_checkpoint(os.path.join(out_dir, name)):
            return os.path.join(out_dir, name)
    return None


def complete_checkpoint(path):
    """Whether `path` is a whole checkpoint: a real folder with its config.json and model.safetensors, and a
    train_state.pt that loads (it is written last)."""
    files = ("config.json", "model.safetensors", "train_state.pt")
    if os.path.islink(path) or not all(os.path.isfile(os.path.join(path, f)) for f in files):
        return False
    try:
        return isinstance(load_tensors(os.path.join(path, "train_state.pt")), dict)
    except ValueError:
        return False


def _replace(tmp, path):
    """Move the finished tmp (a file or folder) to path, removing what was there (a link itself, not its target);
    it gets the mode any new file or folder would (mkdtemp and mkstemp make them private)."""
    os.chmod(tmp, (0o777 if os.path.isdir(tmp) else 0o666) & ~umask())
    if os.path.isdir(tmp) or (os.path.isdir(path) and not os.path.islink(path)):
        _remove(path)  # a folder cannot be renamed over another; a file replaces its old self in one step
    os.replace(tmp, path)


def _write_atomic(path, text):
    """`text` as the file `path`, written aside and renamed into place; a write the disk refuses is one WriteError
    naming `path`, and leaves no temporary."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException as e:
        if tmp:
            _remove(tmp)
        if isinstance(e, OSError):
            raise write_failed(path, e) from e
        raise


@contextmanager
def _aside(path, out_dir):
    """A fresh temporary folder in out_dir for the block to write `path` (a checkpoint, final/) into, renamed into
    place when the block ends; if the block fails it is removed, and a write the disk refused is one WriteError
    naming the file by the name it was to have and the run's last good checkpoint, which is still its latest."""
    tmp = None
    try:
        tmp = tempfile.mkdtemp(dir=out_dir, prefix=f".{os.path.basename(path)}.")
        yield tmp
        _replace(tmp, path)
    except BaseException as e:
        if tmp:
            _remove(tmp)
        if not isinstance(e, OSError):
            raise
        why = str(write_failed(path, e)).replace(tmp, path) if tmp else str(write_failed(path, e))
        raise WriteError(f"{why}; the last good checkpoint is {last_good(out_dir)}") from e


def raw_model(model):
    """The LLaMA inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def weights_finite(model):
    """True if every weight is finite, on every rank (a collective under torchrun)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]  # FSDP2: this rank's shard
    ok = torch.tensor(float(all(bool(torch.isfinite(p).all()) for p in local)), device=local[0].device)
    if dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def last_good(out_dir):
    """What a stopped run says it leaves: its latest checkpoint (every one kept is finite), or that there is none."""
    return latest_checkpoint(out_dir) or "none (no checkpoint was written before)"


def _refuse_nonfinite(model, out_dir, what):
    if not weights_finite(model):
        raise FloatingPointError(f"the weights are not finite {what}: nothing saved; the last good checkpoint is "
                                 f"{last_good(out_dir)}")


def full_state(model, optimizer=None):
    """Whole (unsharded, CPU) state dicts of the model and optimizer, also under DDP and FSDP (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=opts) if optimizer else (get_model_state_dict(model, options=opts), None)


def save_model(model, cfg, path, tok_files=()):
    """The model, adapters merged, as a Hugging Face directory with its tokenizer (every rank must call it), written
    aside and renamed into place; refused if any weight is not finite."""
    _refuse_nonfinite(model, cfg.out_dir, "at the end of training")
    sd, _ = full_state(model)
    if not dist.is_initialized() or dist.get_rank() == 0:
        with _aside(path, cfg.out_dir) as tmp:
            save_pretrained(raw_model(model), tmp, merge_lora(sd, cfg.lora_rank, cfg.lora_alpha),
                            tokenizer_files=tok_files)


def save_checkpoint(model, optimizer, scaler, step, rng, cfg, base_from, tok_files=()):
    """out_dir/ckpt_STEP: the merged model as a HF directory + train_state.pt (optimizer, RNGs, step, config, and
    under LoRA the trained weights); then `latest` is switched to it and older checkpoints beyond keep_checkpoints
    are deleted. The pointer moves only once the directory is complete, so a crash mid-save leaves the last good one;
    weights that are not finite are never saved (and so every checkpoint kept is finite)."""
    _refuse_nonfinite(model, cfg.out_dir, f"after step {step}")
    model_sd, optim_sd = full_state(model, optimizer)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    name = f"ckpt_{step:07d}"
    trained = {k for k, p in raw_model(model).named_parameters() if p.requires_grad}
    with _aside(os.path.join(cfg.out_dir, name), cfg.out_dir) as tmp:
        save_pretrained(raw_model(model), tmp, merge_lora(model_sd, cfg.lora_rank, cfg.lora_alpha),
                        tokenizer_files=tok_files)
        _torch_save({"trained": {k: v for k, v in model_sd.items() if k in trained} if cfg.lora_rank else {},
                     "optimizer": optim_sd, "scaler": scaler.state_dict(), "step": step, "base_from": base_from,
                     "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "config": asdict(cfg)},
                    os.path.join(tmp, "train_state.pt"))
    try:
        _write_atomic(os.path.join(cfg.out_dir, "latest"), name)
    except WriteError as e:
        raise WriteError(f"{e}; the last good checkpoint is {last_good(cfg.out_dir)}") from e
    old = sorted(d for d in os.listdir(cfg.out_dir) if d.startswith("ckpt_") and d != name)
    for d in old[:max(len(old) - cfg.keep_checkpoints + 1, 0)]:
        _remove(os.path.join(cfg.out_dir, d))


def _remove(path):
    """Delete a file or folder; a symbolic link is unlinked, never followed."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
