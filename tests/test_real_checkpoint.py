"""The full-scale path on a checkpoint shaped like a real one: a Hugging Face LLaMA folder written by transformers,
with a tokenizer.json, tied embeddings, GQA, and a pretraining length L0 that is neither the training window Lc nor
the target Lt. prepare.py -> train.py (PoSE + LoRA on a bfloat16 base) -> the exported folder, which transformers
runs with our logits at skipped positions and which eval.py evaluates with its own tokenizer."""
import json
import os
import subprocess
import sys

import pytest
import torch

import prepare
from checkpoint import from_pretrained

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = os.environ | {"OMP_NUM_THREADS": "1"}
L0, Lc, Lt = 256, 64, 1024  # s = Lt / L0 = 4, where Lt / Lc would say 16


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A "downloaded" model folder and a corpus prepared with its tokenizer.json."""
    root = tmp_path_factory.mktemp("real")
    texts = [text for _, text in prepare.read_documents(prepare.CORPUS["train"])[:6]]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>"],
                                                                  initial_alphabet=alphabet))
    model_dir = root / "base"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=tok.get_vocab_size(), tie_word_embeddings=True,
                                   max_position_embeddings=L0, bos_token_id=0, eos_token_id=1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save(str(model_dir / "tokenizer.json"))
    (root / "books").mkdir()
    for i, text in enumerate(texts):
        (root / "books" / f"{i}.txt").write_text(text)
    for split in ("train", "eval"):
        r = run("prepare.py", str(root / "books"), f"--tokenizer={model_dir}", f"--out={root / 'tok'}",
                f"--split={split}", f"--min_len={Lt + 1}")
        assert r.returncode == 0, r.stderr
    return root


@pytest.mark.parametrize("rope", ["linear", "yarn_pose"])
def test_pose_lora_on_a_real_checkpoint_exports_what_transformers_runs(real, rope):
    out = real / f"run_{rope}"
    r = run("train.py", f"--data_dir={real / 'tok'}", f"--init_from={real / 'base'}", "--method=pose", f"--Lc={Lc}",
            f"--Lt={Lt}", f"--rope_type={rope}", "--lora_rank=4", "--lora_train_norms=true",
            "--lora_train_embeddings=true", "--base_dtype=bfloat16", "--dtype=bfloat16", "--batch_size=2",
            "--max_steps=3", "--lr=1e-2", "--eval_docs=1", "--eval_tokens=0", "--log_interval=1", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((out / "final" / "config.json").read_text())
    scaling = config["rope_scaling"]
    assert config["max_position_embeddings"] == Lt and scaling["factor"] == Lt / L0  # 4, not Lt / Lc = 16
    if rope == "yarn_pose":  # exported as longrope with fixed divisors; it remembers L0
        assert scaling["rope_type"] == "longrope" and scaling["original_max_position_embeddings"] == L0
    assert (out / "final" / "tokenizer.json").exists()

    ours = from_pretrained(out / "final").eval()
    hf = transformers.LlamaForCausalLM.from_pretrained(out / "final", dtype=torch.float32).eval()
    idx = torch.randint(0, config["vocab_size"], (1, 48), generator=torch.Generator().manual_seed(0))
    pos = torch.cat([torch.arange(16), torch.arange(16, 48) + 900])[None]  # a PoSE window: a jump past L0
    with torch.no_grad():
        ref = hf(idx, position_ids=pos, attention_mask=torch.ones_like(idx)).logits
        assert (ours(idx, pos) - ref).abs().max() <= 1e-4

    r = run("eval.py", f"--models={out / 'final'}", f"--data={real / 'tok'}", "--lengths=64,256",
            "--passkey_trials=0", "--max_tokens=512", f"--out={out / 'res'}", f"--plots={out / 'plots'}")
    assert r.returncode == 0, r.stderr[-3000:]
    ppl = json.loads((out / "res" / "ppl.json").read_text())["models"]["run_" + rope]
    assert ppl["L0"] == L0 and ppl["Lt"] == Lt and all(v["ppl"] > 1 for v in ppl["ppl"].values())


def test_a_bfloat16_base_trains_float32_norms_at_the_papers_learning_rate(real, tmp_path):
    import numpy as np

    import train
    from prepare import TokenDataset
    cfg = train.TrainConfig(data_dir=str(real / "tok"), init_from=str(real / "base"), method="pose", Lc=Lc, Lt=Lt,
                            rope_type="linear", lora_rank=4, lora_train_norms=True, lora_train_embeddings=True,
                            base_dtype="bfloat16", dtype="bfloat16", lr=2e-5, weight_decay=0.0)
    model = train.load_model(cfg)  # from init_from, extended, with adapters
    norm, emb = model.norm.weight, model.tok_embeddings.weight
    assert norm.dtype == emb.dtype == torch.float32 and model.layers[0].attention.wq.base.weight.dtype == torch.bfloat16
    assert model.output.weight is emb  # still tied: one parameter
    before = norm.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    x, pos, y = train.get_batch(TokenDataset(cfg.data_dir, "train"), cfg, np.random.default_rng(0), 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, pos, y).backward()
    opt.step()
    moved = (norm.detach() - before).abs()
    assert 0 < moved.max() < 1e-4  # an Adam step of ~lr: invisible in bfloat16 (spacing 2^-7 near 1.0)
    assert torch.equal(before.bfloat16().float(), (before + 2e-5).bfloat16().float())  # as it would have been


def test_extend_context_uses_the_pretraining_length(real):
    for rope in ("linear", "ntk", "dynamic", "yarn", "yarn_pose", "llama3"):
        m = from_pretrained(real / "base").extend_context(Lt, rope).cfg.rope_scaling
        assert m.get("factor", m.get("alpha")) == Lt / L0, rope
        assert rope in ("linear", "ntk") or m["original_max_position_embeddings"] == L0, rope
    again = from_pretrained(real / "base").extend_context(Lt, "yarn").extend_context(2 * Lt, "yarn").cfg
    assert again.rope_scaling["factor"] == 2 * Lt / L0 and again.L0 == L0  # relative to L0, not to Lt
    with pytest.raises(ValueError, match="within the length the model was pretrained at"):
        from_pretrained(real / "base").extend_context(L0, "linear")


def test_eval_refuses_a_tokenizer_that_is_not_the_models(real, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("In the beginning " * 200)
    r = run("eval.py", f"--models={real / 'base'}", f"--data={text}", "--tokenizer=web-bpe4k", "--lengths=64",
            "--passkey_trials=0", f"--out={tmp_path}", f"--plots={tmp_path}")
    assert r.returncode != 0
    assert "token embeddings, the tokenizer web-bpe4k 4096 tokens" in r.stderr.strip().splitlines()[-1]
    r = run("eval.py", f"--models={real / 'base'}", f"--data={real / 'tok'}", "--tokenizer=web-bpe4k", "--lengths=64",
            "--passkey_trials=0", f"--out={tmp_path}", f"--plots={tmp_path}")
    assert r.returncode != 0 and "prepare it again with the model's tokenizer" in r.stderr.strip().splitlines()[-1]
