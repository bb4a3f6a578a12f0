"""Every model family checkpoint.py reads, held against transformers on tiny checkpoints transformers itself writes:
each loads with transformers' logits at skipped (PoSE) positions, for plain RoPE and the scalings its checkpoints
ship; trains a PoSE + LoRA step from its folder; is written back as its own family (model_type, class, tensor names,
biases), which transformers reloads with our logits. Any other model_type ends with one line naming it."""
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

import prepare
import train
from checkpoint import FAMILIES, from_pretrained, save_pretrained
from tokenizer import WEB_BPE, load_tokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

V, L0 = 101, 64  # vocabulary and "pretraining" length of the tiny checkpoints
SKIPPED = torch.cat([torch.arange(10), torch.arange(10, 40) + 150])  # a chunk at 0..9, then one past L0
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=None, pad_token_id=None)
OWN = {  # model_type -> its transformers config class, and what its real checkpoints set that the tiny one must too
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),       # v0.2 on; v0.1's 4096 window is refused
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),      # Qwen2.5-0.5B / 1.5B tie their embeddings
    "qwen3": ("Qwen3Config", {"head_dim": 16}),                   # Qwen3 states head_dim (128 at every size)
    "phi3": ("Phi3Config", {"original_max_position_embeddings": L0}),  # the class default is 4096
    "gemma": ("GemmaConfig", {"head_dim": 16}),                   # Gemma states head_dim (256), ties embeddings
}
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0}  # Qwen2.5's and Qwen3's long-context
LONGROPE = {"type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 4.0],  # Phi-3-*-128k: L0 only at
            "long_factor": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]}                     # the top level, no factor
SCALINGS = [  # (model_type, config.json's rope_scaling as the family's checkpoints write it, max_position_embeddings)
    ("llama", None, L0), ("llama", {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": L0}, 4 * L0),
    ("mistral", None, L0), ("qwen2", None, L0), ("qwen2", YARN, 4 * L0), ("qwen3", None, L0), ("qwen3", YARN, 4 * L0),
    ("phi3", None, L0), ("phi3", LONGROPE, 4 * L0), ("gemma", None, L0)]


def hf_folder(path, model_type, rope=None, max_pos=L0, vocab=V, **entries):
    """A checkpoint transformers writes (every weight random, so a swapped one shows), with `rope` written into its
    config.json as the family's checkpoints have it; transformers' model read back from that folder."""
    cls, own = OWN[model_type]
    torch.manual_seed(0)
    config = getattr(transformers, cls)(**SMALL, vocab_size=vocab, max_position_embeddings=max_pos, **own)
    hf = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(path)
    c = json.loads((path / "config.json").read_text())
    if rope:
        c["rope_scaling"] = rope
        c.pop("rope_parameters", None)
    (path / "config.json").write_text(json.dumps(c | entries))
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def max_diff(ours, hf, pos, seed=1):
    """max |ours − transformers| over the logits of random tokens at `pos`; an explicit mask, or transformers reads a
    position jump as the start of a new packed sequence."""
    idx = torch.randint(0, ours.cfg.vocab_size, (2, len(pos)), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = hf(idx, position_ids=pos.expand(idx.shape), attention_mask=torch.ones_like(idx)).logits
        return (ours(idx, pos) - ref).abs().max().item()


def kind(rope):
    return (rope or {}).get("type", (rope or {}).get("rope_type", "plain"))


@pytest.mark.parametrize("model_type,rope,max_pos", SCALINGS, ids=[f"{m}-{kind(r)}" for m, r, _ in SCALINGS])
def test_loads_with_transformers_logits(tmp_path, model_type, rope, max_pos):
    hf = hf_folder(tmp_path, model_type, rope, max_pos)
    ours = from_pretrained(tmp_path).eval()
    assert ours.cfg.model_type == model_type
    for pos in (torch.arange(40), SKIPPED):  # Phi-3: short factors, then long ones (past L0)
        diff = max_diff(ours, hf, pos)
        print(f"{model_type} {kind(rope)} positions up to {int(pos.max())}: max|diff| = {diff:.1e}")
        assert diff <= 1e-4


@pytest.mark.parametrize("model_type", [m for m in OWN if m != "llama"])  # llama: test_model.py
@pytest.mark.parametrize("rope_type", ["linear", "yarn_pose", "yarn"])
def test_exports_as_its_own_family(tmp_path, model_type, rope_type):
    hf_folder(tmp_path / "base", model_type)
    ours = from_pretrained(tmp_path / "base").eval().extend_context(4 * L0, rope_type)
    save_pretrained(ours, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == model_type and config["architectures"] == [FAMILIES[model_type].architecture]
    assert config["original_max_position_embeddings"] == L0 and config["max_position_embeddings"] == 4 * L0
    # the same tensors under the same names: Qwen2's biases, Qwen3's q/k norms, Phi-3's fused projections
    assert load_file(tmp_path / "out" / "model.safetensors").keys() == \
           load_file(tmp_path / "base" / "model.safetensors").keys()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert type(hf).__name__ == FAMILIES[model_type].architecture
    diff = max_diff(ours, hf, SKIPPED)
    print(f"{model_type} {rope_type} exported as {config['rope_scaling']['rope_type']}: max|diff| = {diff:.1e}")
    assert diff <= 1e-4
    again = from_pretrained(tmp_path / "out").eval()  # and our own loader reads it back as the same model
    with torch.no_grad():
        assert torch.allclose(again(SKIPPED[None] % V, SKIPPED), ours(SKIPPED[None] % V, SKIPPED), atol=1e-5)


def test_phi3_cannot_be_written_with_dynamic_scaling(tmp_path):
    hf_folder(tmp_path / "base", "phi3")
    ours = from_pretrained(tmp_path / "base").extend_context(4 * L0, "dynamic")
    with pytest.raises(ValueError, match=r"rope type 'dynamic' cannot be written as Phi-3 \(transformers takes only "
                                         r"default, longrope"):
        save_pretrained(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    for split, path in prepare.CORPUS.items():
        prepare.write_split(prepare.read_documents([path])[:4], load_tokenizer("web-bpe4k"), out, split)
    return out


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3", "phi3", "gemma"])  # llama: test_real_checkpoint
def test_a_pose_lora_step_from_the_folder_exports_what_transformers_runs(tmp_path, data_dir, model_type):
    base = tmp_path / "base"
    hf_folder(base, model_type, vocab=4096)
    shutil.copy(WEB_BPE, base)  # the data's tokenizer is the model's
    recipe = model_type == "qwen2"  # as configs/qwen2.5_1.5b_pose_128k.toml: transformers' YaRN, embeddings trained
    cfg = train.TrainConfig(data_dir=str(data_dir), init_from=str(base), out_dir=str(tmp_path / "run"), method="pose",
                            Lc=32, Lt=4 * L0, rope_type="yarn" if recipe else "yarn_pose", lora_rank=4,
                            lora_targets="wq,wk,wv,wo,w1,w2,w3", lora_train_norms=True, lora_train_embeddings=recipe,
                            batch_size=2, max_steps=2, lr=1e-2, warmup_steps=1, eval_docs=0, ckpt_interval=0,
                            log_interval=1, device="cpu")
    train.train(cfg)
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert after.keys() == before.keys()
    for k in after:  # LoRA moved every projection and norm (merged back, fused again for Phi-3), never a bias
        frozen = k.endswith(".bias") or (("embed" in k or "lm_head" in k) and not recipe)
        assert torch.equal(after[k], before[k]) == frozen, k
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final", attn_implementation="eager")
    assert type(hf).__name__ == FAMILIES[model_type].architecture
    diff = max_diff(from_pretrained(tmp_path / "run" / "final").eval(), hf.eval(), SKIPPED)
    print(f"{model_type} after a PoSE + LoRA step: max|diff| = {diff:.1e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("model_type,entries", [
    ("mistral", {"sliding_window": 4096}),  # transformers' default: past every length the model is meant for
    ("phi3", {"sliding_window": 262144}),   # Phi-3-*-128k's and Phi-3.5's
    ("qwen2", {"sliding_window": 16}),      # with use_sliding_window false, as every Qwen2.5 ships
    ("qwen3", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2, "layer_types": None}),
])
def test_a_window_transformers_does_not_apply_is_ignored(tmp_path, model_type, entries):
    hf = hf_folder(tmp_path, model_type, **entries)
    assert max_diff(from_pretrained(tmp_path).eval(), hf, torch.arange(40)) <= 1e-4  # 40 tokens: past a 16-window


@pytest.mark.parametrize("model_type,entries,message", [
    ("mistral", {"sliding_window": 16}, "sliding_window = 16 is shorter than max_position_embeddings = 64: a "
                                        "Mistral model with a sliding window is not supported"),
    ("phi3", {"sliding_window": 32}, "sliding_window = 32 is shorter than max_position_embeddings = 64: a Phi-3"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1, "layer_types": None},
     "sliding_window = 16 is shorter than max_position_embeddings = 64: a Qwen2"),
    ("qwen3", {"layer_types": ["full_attention", "sliding_attention"], "use_sliding_window": True,
               "sliding_window": 16}, "sliding_window = 16 is shorter .* a Qwen3"),
    ("phi3", {"partial_rotary_factor": 0.75},  # Phi-4-mini's
     "rope type 'default': 'partial_rotary_factor' is not implemented here"),
    ("phi3", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
     r"rope type 'linear' is not Phi-3's \(transformers takes only default, longrope\)"),
    ("qwen3", {"attention_bias": True}, r"attention_bias = True is not Qwen3's \(False\) and not supported"),
    ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention = True is not Gemma's"),
    ("llama", {"model_type": "olmo2"}, r"model_type 'olmo2' is not supported \(supported: llama, mistral, qwen2, "
                                       r"qwen3, phi3, gemma\)"),
])
def test_what_would_be_another_model_is_refused_in_one_line(tmp_path, model_type, entries, message):
    cls, own = OWN[model_type]
    getattr(transformers, cls)(**SMALL, vocab_size=V, max_position_embeddings=L0, **own).save_pretrained(tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(c | entries))
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}/config\.json: {message}"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "olmo2", "gpt_neox", "phi", "falcon", "starcoder2"])
def test_every_other_family_is_refused_by_name(tmp_path, model_type):
    transformers.AutoConfig.for_model(model_type, **SMALL, vocab_size=V).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"model_type '{model_type}' is not supported \(supported: llama, mistral, "
                                         r"qwen2, qwen3, phi3, gemma\)$"):
        from_pretrained(tmp_path)
