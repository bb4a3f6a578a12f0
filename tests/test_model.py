"""model.py held against transformers' LlamaForCausalLM, and its own invariants (positions, cache, loss, I/O)."""
import json
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from checkpoint import (
    config_to_hf,
    from_pretrained,
    normalize_rope_scaling,
    save_pretrained,
)
from chunked_loss import chunked_cross_entropy
from model import LLaMA, ModelConfig, llama_ffn_dim, rope_inv_freq

transformers = pytest.importorskip("transformers")

V, L0 = 101, 64  # vocabulary and "pretraining" length of the tiny test models
ROPES = {  # rope type -> (HF rope_parameters, max_position_embeddings)
    "none": (None, L0),
    "linear": ({"rope_type": "linear", "factor": 4.0}, 4 * L0),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, L0),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0}, 4 * L0),
    "llama3": ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": L0}, 4 * L0),
    # every optional key transformers reads: DeepSeek's mscale pair, no truncation, other betas, no factor
    "yarn_mscale": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0, "mscale": 0.707,
                     "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2, "truncate": False}, 4 * L0),
    "yarn_no_factor": ({"rope_type": "yarn", "factor": None, "original_max_position_embeddings": L0}, 8 * L0),
    "longrope_no_factor": ({"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 4.0],
                            "long_factor": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5],
                            "original_max_position_embeddings": L0}, 4 * L0),
}
# skipped PoSE-style positions: a chunk at 0..9, then a jump past L0 (so dynamic grows and yarn/llama3 matter)
SKIPPED = torch.cat([torch.arange(10), torch.arange(10, 40) + 150])


def hf_llama(rope=None, max_pos=L0, kv_heads=2, tie=False, theta=10000.0, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, vocab_size=V, max_position_embeddings=max_pos, rope_theta=theta,
        rope_parameters=dict(rope, rope_theta=theta) if rope else None, tie_word_embeddings=tie,
        rms_norm_eps=1e-6, attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initialises norms to 1: randomise everything so a swapped weight shows
        for p in hf.parameters():
            p.normal_(0, 0.2)
    return hf


def hf_logits(hf, idx, pos):
    # An explicit mask: without one, recent transformers read a position jump as a new packed sequence.
    with torch.no_grad():
        return hf(idx, position_ids=pos.expand(idx.shape), attention_mask=torch.ones_like(idx)).logits


def tiny(**kw):
    cfg = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=V, hidden_dim=96, max_seq_len=L0,
               norm_eps=1e-6)
    torch.manual_seed(kw.pop("seed", 0))
    m = LLaMA(ModelConfig(**(cfg | kw))).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


def tokens(B=2, T=40, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list(ROPES))
@pytest.mark.parametrize("tie,kv_heads", [(False, 2), (True, 4)])
def test_matches_transformers(kind, tie, kv_heads, tmp_path):
    rope, max_pos = ROPES[kind]
    hf = hf_llama(rope, max_pos, kv_heads, tie)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path).eval()
    assert ours.cfg.tie_embeddings == tie and ours.cfg.n_kv_heads == kv_heads
    assert (ours.output.weight is ours.tok_embeddings.weight) == tie  # one parameter, one gradient
    idx = tokens()
    for pos in (torch.arange(idx.size(1)), SKIPPED):
        with torch.no_grad():
            diff = (ours(idx, pos) - hf_logits(hf, idx, pos)).abs().max().item()
        print(f"{kind} tie={tie} kv={kv_heads} max|diff|={diff:.2e}")
        assert diff <= 1e-4


@pytest.mark.parametrize("kind", ["none", "linear", "ntk", "dynamic", "yarn", "yarn_pose", "llama3"])
def test_save_pretrained_runs_in_transformers(kind, tmp_path):
    rs = {"none": None, "ntk": {"rope_type": "ntk", "alpha": 4.0},
          "yarn_pose": {"rope_type": "yarn_pose", "factor": 4.0, "original_max_position_embeddings": L0}}
    rs = rs[kind] if kind in rs else ROPES[kind][0]
    ours = tiny(rope_scaling=rs, max_seq_len=L0 if kind in ("none", "dynamic") else 4 * L0)
    save_pretrained(ours, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in tmp_path.iterdir())  # as any file, not 0600
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    idx = tokens()
    with torch.no_grad():
        diff = (ours(idx, SKIPPED) - hf_logits(hf, idx, SKIPPED)).abs().max().item()
    print(f"save_pretrained {kind}: max|diff|={diff:.2e}")
    assert diff <= 1e-4
    back = from_pretrained(tmp_path).eval()  # and our own loader reads what we wrote
    with torch.no_grad():
        assert torch.allclose(back(idx, SKIPPED), ours(idx, SKIPPED), atol=1e-5)


def test_fixed_ntk_is_plain_rope_with_larger_base():
    d, a = 16, 8.0
    ntk = ModelConfig(dim=64, n_heads=4, rope_scaling={"rope_type": "ntk", "alpha": a})
    plain = ModelConfig(dim=64, n_heads=4, rope_theta=10000.0 * a ** (d / (d - 2)))
    assert torch.allclose(rope_inv_freq(ntk)[0], rope_inv_freq(plain)[0])
    assert config_to_hf(ntk)["rope_scaling"] is None


def test_revised_yarn_differs_from_yarn_only_on_the_ramp():
    kw = dict(dim=512, n_heads=4, max_seq_len=2048)  # head_dim 128: LLaMA-7B's
    yarn, att = rope_inv_freq(ModelConfig(**kw, rope_scaling={"rope_type": "yarn", "factor": 8.0}))
    pose, att2 = rope_inv_freq(ModelConfig(**kw, rope_scaling={"rope_type": "yarn_pose", "factor": 8.0}))
    base = rope_inv_freq(ModelConfig(**kw))[0]
    assert att == att2 == pytest.approx(0.1 * math.log(8) + 1)
    same = torch.isclose(yarn, pose, rtol=1e-12)
    assert same[:10].all() and same[-10:].all()  # fastest dims kept, slowest divided by 8, in both
    assert torch.allclose(yarn[:10], base[:10]) and torch.allclose(yarn[-10:], base[-10:] / 8)
    assert (~same).sum() >= 5  # they are different models in between: the blend is of divisors, not frequencies
    assert (pose[~same] < yarn[~same]).all()  # a harmonic blend interpolates more than an arithmetic one


def test_L0_is_the_pretraining_length():
    assert ModelConfig(max_seq_len=128).L0 == 128
    assert ModelConfig(max_seq_len=1024, rope_scaling={"rope_type": "linear", "factor": 8}).L0 == 128
    yarn = {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 256}
    assert ModelConfig(max_seq_len=2048, rope_scaling=yarn).L0 == 256
    assert normalize_rope_scaling({"type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4},
                                  8192)["original_max_position_embeddings"] == 8192  # HF's default: the max length


@pytest.mark.parametrize("rope", ["none", "linear", "ntk", "dynamic", "yarn", "yarn_pose", "llama3"])
def test_extend_context_records_L0_and_survives_export(rope, tmp_path):
    """Every rope type, 'none' and fixed NTK included (neither keeps a scaling dict to hold it), records the length
    the model was pretrained at, and a saved and reloaded model still knows it."""
    m = tiny().extend_context(8 * L0, rope)
    assert m.cfg.L0 == L0 and m.cfg.max_seq_len == 8 * L0
    save_pretrained(m, tmp_path)
    assert from_pretrained(tmp_path).cfg.L0 == L0


def test_extend_context_leaves_no_old_frequencies_behind():
    """The RoPE follows the config: an extended model gives exactly what a model built with that config does."""
    m, idx = tiny(), tokens()
    m.extend_context(4 * L0, "yarn", beta_fast=8.0)
    built = LLaMA(m.cfg).eval()
    built.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert torch.equal(m(idx, SKIPPED), built(idx, SKIPPED))
        assert torch.equal(m.rope.inv_freq, rope_inv_freq(m.cfg)[0].float())
    m.cfg = ModelConfig(**(vars(m.cfg) | {"rope_scaling": None, "L0": None}))  # setting a config rebuilds it too
    assert torch.equal(m.rope.inv_freq, rope_inv_freq(ModelConfig(**vars(m.cfg)))[0].float())


def test_extend_context_refuses_nothing_to_extend():
    with pytest.raises(ValueError, match="within the length the model was pretrained at"):
        tiny().extend_context(L0, "linear")


@pytest.mark.parametrize("rs,message", [
    ({"type": "bogus", "factor": 2.0}, "unknown rope type 'bogus'"),
    ({"rope_type": "linear"}, "needs 'factor'"),
    ({"rope_type": "linear", "factor": 0.5}, "needs 'factor' >= 1"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}, "needs 'high_freq_factor'"),
    ({"rope_type": "longrope", "long_factor": [1.0] * 8}, "needs 'short_factor'"),
    ({"rope_type": "linear", "factor": 2.0, "original_max_position_embeddings": 64}, "'original_max_position_"
                                                                                     "embeddings' is not implemented"),
    ({"rope_type": "yarn", "factor": 2.0, "extrapolation_factor": 1.0}, "'extrapolation_factor' is not implemented"),
    ({"rope_type": "default", "partial_rotary_factor": 0.5}, "'partial_rotary_factor' is not implemented"),
])
def test_rope_scaling_keys_are_implemented_or_refused(rs, message):
    with pytest.raises(ValueError, match=message):
        normalize_rope_scaling(rs, 256)


def test_unknown_rope_type_in_our_own_config():
    with pytest.raises(ValueError, match="unknown rope type 'bogus'"):
        ModelConfig(rope_scaling={"rope_type": "bogus", "factor": 2.0})


@pytest.mark.parametrize("extra,message", [
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 32}},
     "transformers ignores 'original_max_position_embeddings'"),
    ({"partial_rotary_factor": 0.5}, "'partial_rotary_factor' is not implemented"),
    ({"hidden_act": "gelu"}, "hidden_act = 'gelu' is not LLaMA's"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "mscale": 1.0, "typo": 1}}, "'typo' is not implemented"),
])
def test_hf_configs_that_would_be_another_model_are_refused(tmp_path, extra, message):
    hf_llama().save_pretrained(tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    c.pop("rope_parameters", None)
    (tmp_path / "config.json").write_text(json.dumps(c | extra))
    with pytest.raises(ValueError, match=message):
        from_pretrained(tmp_path)


def test_positions_none_equals_arange_and_rows_are_independent():
    m, idx = tiny(rope_scaling={"rope_type": "linear", "factor": 4.0}), tokens(B=3)
    with torch.no_grad():
        assert torch.equal(m(idx), m(idx, torch.arange(idx.size(1))))
        pos = torch.stack([torch.arange(40), SKIPPED, torch.arange(40) * 3 + 7])
        batched = m(idx, pos)
        for b in range(3):
            assert torch.allclose(batched[b], m(idx[b:b + 1], pos[b])[0], atol=1e-5)
        assert not torch.allclose(batched[1], m(idx[1:2])[0], atol=1e-3)  # positions really matter


def test_rope_tables_stay_float32_under_bf16_autocast():
    m, idx = tiny(), tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, sin = m.rope(SKIPPED.expand(2, -1) + 10_000)
        loss_bf16 = m(idx, targets=idx)
    assert cos.dtype == sin.dtype == torch.float32
    assert abs(loss_bf16.item() - m(idx, targets=idx).item()) < 0.1


@pytest.mark.parametrize("chunk", [7, 1024])
def test_chunked_loss_equals_plain_cross_entropy(chunk):
    m, idx = tiny(), tokens()
    targets = idx.roll(-1, 1).clone()
    targets[:, -1] = -1
    h = torch.randn(2, 40, 64, requires_grad=True)
    W = m.output.weight
    ref = F.cross_entropy((h @ W.t()).flatten(0, 1), targets.flatten(), ignore_index=-1)
    got = chunked_cross_entropy(h, W, targets, chunk=chunk)
    assert torch.allclose(got, ref, atol=1e-6)
    g_ref, = torch.autograd.grad(ref, h)
    g_got, = torch.autograd.grad(got, h)
    assert torch.allclose(g_got, g_ref, atol=1e-6)
    s = chunked_cross_entropy(h, W, targets, reduction="sum", chunk=chunk)
    assert torch.allclose(s, ref * 78, atol=1e-4)  # 2 rows x 39 scored tokens


def test_gradient_checkpointing_gives_the_same_gradients():
    m, idx = tiny(), tokens()
    m.train()
    m(idx, targets=idx).backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.gradient_checkpointing = True
    m(idx, targets=idx).backward()
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(m.parameters(), ref))


@pytest.mark.parametrize("kind", ["none", "dynamic"])
def test_kv_cache_generation_equals_greedy_without_cache(kind):
    m = tiny(rope_scaling=ROPES[kind][0])
    idx, pos = tokens(B=2, T=12), SKIPPED[-12:]  # a prompt whose positions start past a skip
    out = m.generate(idx, 8, pos=pos)
    ref = idx
    for _ in range(8):
        p = torch.cat([pos, pos[-1] + torch.arange(1, ref.size(1) - 12 + 1)])
        ref = torch.cat([ref, m(ref, p)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)
    sampled = m.generate(idx, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 20)


def write_meta_checkpoint(m, path, n_shards=2, vocab_split=False):
    """A random model written the way Meta's model-parallel code stores it: (2i, 2i+1) q/k pairs, sharded."""
    cfg = m.cfg
    path.mkdir()
    json.dump({"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
               "vocab_size": cfg.vocab_size if vocab_split else -1, "multiple_of": 32, "norm_eps": cfg.norm_eps,
               "rope_theta": cfg.rope_theta}, open(path / "params.json", "w"))

    def unpermute(w, h):  # inverse of HF's permutation
        out, inp = w.shape
        return w.view(h, 2, out // h // 2, inp).transpose(1, 2).reshape(out, inp)

    split_dim = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1,
                 "tok_embeddings": 0 if vocab_split else 1}
    shards = [{"rope.freqs": torch.zeros(cfg.head_dim // 2)} for _ in range(n_shards)]
    for k, w in m.state_dict().items():
        name = k.split(".")[-2]
        if name in ("wq", "wk"):
            w = unpermute(w, cfg.n_heads if name == "wq" else cfg.n_kv_heads)
        parts = w.chunk(n_shards, split_dim[name]) if name in split_dim else [w] * n_shards
        for shard, part in zip(shards, parts):
            shard[k] = part.clone()
    for i, shard in enumerate(shards):
        torch.save(shard, path / f"consolidated.{i:02d}.pth")


@pytest.mark.parametrize("vocab_split", [False, True])
def test_meta_checkpoint_round_trip(tmp_path, vocab_split):
    m = tiny(vocab_size=128, hidden_dim=llama_ffn_dim(64, 32))
    write_meta_checkpoint(m, tmp_path / "meta", vocab_split=vocab_split)
    loaded = from_pretrained(tmp_path / "meta", max_seq_len=L0).eval()
    assert loaded.cfg.hidden_dim == m.cfg.hidden_dim and loaded.cfg.vocab_size == 128
    idx = tokens()
    with torch.no_grad():
        assert (loaded(idx, SKIPPED) - m(idx, SKIPPED)).abs().max() <= 1e-5


def test_meta_rows_are_really_permuted(tmp_path):
    m = tiny()
    write_meta_checkpoint(m, tmp_path / "meta", n_shards=1)
    shard = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    assert not torch.equal(shard["layers.0.attention.wq.weight"], m.layers[0].attention.wq.weight)


def test_sharded_safetensors_and_bin(tmp_path):
    hf = hf_llama()
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    (tmp_path / "binonly").mkdir()
    (tmp_path / "binonly" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "binonly" / "pytorch_model.bin")
    idx = tokens()
    for d in ("sharded", "binonly"):
        with torch.no_grad():
            assert (from_pretrained(tmp_path / d).eval()(idx) - hf_logits(hf, idx, torch.arange(40))).abs().max() <= 1e-4


class Evil:
    def __reduce__(self):
        return (print, ("this ran code",))


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither config.json"):
        from_pretrained(tmp_path / "empty")
    hf = hf_llama()
    hf.save_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").rename(tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained(tmp_path / "ok")
    (tmp_path / "weights").rename(tmp_path / "ok" / "model.safetensors")
    c = json.loads((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "ok" / "config.json").write_text(json.dumps(c | {"intermediate_size": 128}))
    with pytest.raises(ValueError, match=r"'layers.0.feed_forward.w1.weight' has shape \(96, 64\) in the "
                                         r"checkpoint, \(128, 64\) in the model"):
        from_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "config.json").write_text(json.dumps(c | {"rope_scaling": {"type": "bogus", "factor": 2}}))
    with pytest.raises(ValueError, match="unknown rope type 'bogus'"):
        from_pretrained(tmp_path / "ok")
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "config.json").write_text(json.dumps(c))
    with open(tmp_path / "evil" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.norm.weight": Evil()}, f)
    with pytest.raises(ValueError, match="refused or unreadable as a weights-only checkpoint"):
        from_pretrained(tmp_path / "evil")


def test_chunked_loss_weight_gradient():
    h, W = torch.randn(2, 40, 64, requires_grad=True), torch.randn(V, 64, requires_grad=True)
    targets = tokens()
    targets[0, :5] = -1
    for chunk in (7, 1024):
        ref = F.cross_entropy((h @ W.t()).flatten(0, 1), targets.flatten(), ignore_index=-1)
        got = chunked_cross_entropy(h, W, targets, chunk=chunk)
        for a, b in zip(torch.autograd.grad(3 * ref, (h, W)), torch.autograd.grad(3 * got, (h, W))):
            assert torch.allclose(a, b, atol=1e-6)
