"""train.py on a tiny model: every method runs, loss falls, resume is exact, DDP/FSDP match one process, LoRA."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pose
import prepare
import train
from checkpoint import from_pretrained
from config import parse_config
from model import LLaMA, ModelConfig
from passkey import passkey_example
from tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tok"))
    tok = load_tokenizer("web-bpe4k")
    for split, path in prepare.CORPUS.items():
        docs = prepare.read_documents([path])[:8]  # a few books are plenty for a few steps
        prepare.write_split(docs, tok, out, split)
    return out


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("tests must not touch the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def tiny_cfg(data_dir, out_dir, **kw):
    base = dict(data_dir=data_dir, out_dir=str(out_dir), dim=64, n_layers=2, n_heads=4, n_kv_heads=2, Lc=32,
                Lt=32, batch_size=4, max_steps=4, lr=3e-3, warmup_steps=2, log_interval=2, eval_interval=0,
                ckpt_interval=0, eval_docs=2, eval_tokens=256)
    return train.TrainConfig(**(base | kw))


def final_weights(out_dir):
    return load_file(os.path.join(out_dir, "final", "model.safetensors"))


def log_losses(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.parametrize("method,rope", [("plain", "keep"), ("pose", "linear"), ("full", "linear"),
                                         ("randpos", "linear"), ("pose", "yarn")])
def test_each_method_runs_and_saves_an_extended_hf_model(data_dir, tmp_path, method, rope, no_network):
    train.train(tiny_cfg(data_dir, tmp_path, method=method, Lt=32 if method == "plain" else 128, rope_type=rope))
    cfg = json.load(open(tmp_path / "final" / "config.json"))
    if method != "plain":
        assert cfg["rope_scaling"]["rope_type"] == rope and cfg["rope_scaling"]["factor"] == 4.0
        assert cfg["max_position_embeddings"] == 128
    assert all(np.isfinite(log_losses(tmp_path)))
    assert from_pretrained(tmp_path / "final").cfg.max_seq_len == cfg["max_position_embeddings"]


def test_get_batch_shapes_and_shift(data_dir):
    data, rng = prepare.TokenDataset(data_dir, "train"), np.random.default_rng(0)
    x, pos, y = train.get_batch(data, tiny_cfg(data_dir, "x", method="pose", Lt=256), rng, 3)
    assert x.shape == pos.shape == y.shape == (3, 31)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one, within each window
    assert (pos.diff(dim=1) > 0).all() and pos.max() < 256 and (pos[:, 0] == 0).all()
    assert (pos.diff(dim=1) > 1).any()  # some window really skips


@pytest.mark.parametrize("method", ["pose", "full", "randpos", "plain"])
def test_every_window_starts_with_its_documents_bos(data_dir, method):
    data, bos = prepare.TokenDataset(data_dir, "train"), load_tokenizer("web-bpe4k").eos_id
    for start in ("doc", "random"):
        cfg = tiny_cfg(data_dir, "x", method=method, Lt=256, start=start)
        x, pos, _ = train.get_batch(data, cfg, np.random.default_rng(0), 16)
        assert (x[:, 0] == bos).all() and (method == "randpos" or (pos[:, 0] == 0).all())
        for row, p in zip(x.numpy(), pos.numpy()):
            jumps = np.flatnonzero(np.diff(p) > 1) if method == "pose" else []
            n = min(8, jumps[0] + 1) if len(jumps) else 8  # tokens of chunk 0
            at_a_start = any(np.array_equal(row[:n], data.doc(i)[:n]) for i in range(len(data)))
            assert at_a_start == (start == "doc") or n == 1  # random: BOS, then a stretch from further in


@pytest.mark.parametrize("method", ["plain", "full"])
def test_random_start_windows_reach_the_end_of_a_document(tmp_path, method):
    doc = "In the beginning God created the heavens and the earth. " * 6  # 79 tokens with BOS
    prepare.write_split([("book", doc)], load_tokenizer("web-bpe4k"), tmp_path, "train")
    data = prepare.TokenDataset(tmp_path, "train")
    cfg = tiny_cfg(str(tmp_path), "x", method=method, Lc=32, Lt=64, start="random")
    _, _, y = train.get_batch(data, cfg, np.random.default_rng(0), 400)
    assert (y[:, -1] == data.doc(0)[-1]).any()  # some window ends where the document does: every token is read


def test_loss_falls_on_a_fixed_batch(data_dir):
    torch.manual_seed(0)
    m = LLaMA(ModelConfig(dim=64, n_layers=2, n_heads=4, vocab_size=4096, max_seq_len=32))
    x, pos, y = train.get_batch(prepare.TokenDataset(data_dir, "train"), tiny_cfg(data_dir, "x"),
                            np.random.default_rng(0), 4)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = m(x, pos, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_lr_schedule():
    cfg = train.TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert train.get_lr(0, cfg) == pytest.approx(0.1) and train.get_lr(9, cfg) == pytest.approx(1.0)
    assert train.get_lr(60, cfg) == pytest.approx(0.55) and train.get_lr(110, cfg) == pytest.approx(0.1)
    cfg.decay = "cosine"
    assert train.get_lr(60, cfg) == pytest.approx(0.55) and train.get_lr(35, cfg) > 0.55 + 0.2


class Crash(Exception):
    pass


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_resume_is_bit_exact(data_dir, tmp_path, monkeypatch, lora_rank):
    kw = dict(method="pose", Lt=128, rope_type="linear", max_steps=6, ckpt_interval=3, lora_rank=lora_rank)
    train.train(tiny_cfg(data_dir, tmp_path / "straight", **kw))

    real_save = train.save_checkpoint
    def save_then_crash(*a, **k):
        real_save(*a, **k)
        raise Crash
    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train.train(tiny_cfg(data_dir, tmp_path / "crashed", **kw))
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    assert open(tmp_path / "crashed" / "latest").read() == "ckpt_0000003"
    train.train(tiny_cfg(data_dir, tmp_path / "crashed", **kw | {"init_from": "resume"}))

    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "crashed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert log_losses(tmp_path / "straight")[-1] == log_losses(tmp_path / "crashed")[-1]


def test_lora_trains_only_adapters_and_merges_exactly(data_dir, tmp_path):
    train.train(tiny_cfg(data_dir, tmp_path / "base", max_steps=1))
    base = final_weights(tmp_path / "base")
    cfg = tiny_cfg(data_dir, tmp_path / "lora", init_from=str(tmp_path / "base" / "final"), lora_rank=4,
                   lora_targets="wq,wv", lora_train_norms=True, lr=1e-2)
    lora_model = train.train(cfg)
    merged = final_weights(tmp_path / "lora")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight", "norm.weight", "layernorm.weight"))
                           for k in changed)
    assert any("q_proj" in k for k in changed) and any("layernorm" in k for k in changed)
    idx = torch.randint(0, 4096, (2, 32))
    with torch.no_grad():
        ref = lora_model.eval()(idx)
        got = from_pretrained(tmp_path / "lora" / "final").eval()(idx)
    assert (ref - got).abs().max() < 1e-5


@pytest.mark.parametrize("fsdp", [False, True])
def test_torchrun_two_processes_match_one(data_dir, tmp_path, fsdp):
    args = [f"--data_dir={data_dir}", "--dim=64", "--n_layers=2", "--n_heads=4", "--Lc=32", "--Lt=128",
            "--method=pose", "--rope_type=linear", "--max_steps=4", "--log_interval=1", "--eval_interval=0",
            "--eval_docs=2", "--eval_tokens=256", "--ckpt_interval=0", "--device=cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "train.py", *args, "--batch_size=4", f"--out_dir={tmp_path / 'one'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", *args, "--batch_size=2", f"--fsdp={fsdp}", f"--out_dir={tmp_path / 'two'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = log_losses(tmp_path / "one"), log_losses(tmp_path / "two")
    assert len(a) == len(b) == 4
    assert np.allclose(a, b, rtol=0, atol=1e-5), (a, b)
    wa, wb = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


@pytest.mark.parametrize("argv,message", [
    (["--nope=1"], "unknown config key 'nope'"),
    (["--method=magic"], "unknown method 'magic'"),
    (["--Lc=64", "--Lt=32"], "Lt=32 is shorter than Lc=64"),
    (["--num_chunks=0"], "num_chunks=0 must be between 1 and Lc"),
    (["--max_steps=many"], "--max_steps=many: expected an integer"),
    (["--init_from=resume", "--out_dir=/nonexistent/run"], "has no checkpoint"),
])
def test_bad_command_lines_fail_with_one_clear_line(data_dir, argv, message):
    r = subprocess.run([sys.executable, "train.py", f"--data_dir={data_dir}", *argv], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert message in r.stderr.strip().splitlines()[-1]


def test_help_lists_every_key():
    r = subprocess.run([sys.executable, "train.py", "-h"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0
    assert all(f"--{k}=" in r.stdout for k in train.TrainConfig.__dataclass_fields__)


def test_configs_parse():
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        cfg = parse_config(train.TrainConfig, [os.path.join(ROOT, "configs", name)])
        cfg.check()


def test_a_fresh_run_never_overwrites_an_old_one(data_dir, tmp_path):
    train.train(tiny_cfg(data_dir, tmp_path, max_steps=2, ckpt_interval=1))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match="holds an earlier run"):
        train.train(tiny_cfg(data_dir, tmp_path, max_steps=2))
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("method,skip", [("pose", "pose"), ("pose", "between"), ("plain", "between"),
                                         ("randpos", "between")])
def test_passkey_rows_begin_with_the_prompt_at_the_positions_drawn_or_the_skip_between(data_dir, method, skip):
    """passkey_skip=pose keeps the window's positions; between moves PoSE's skip between key and question (and
    leaves other methods' positions alone)."""
    tok = load_tokenizer("web-bpe4k")
    cfg = tiny_cfg(data_dir, "x", method=method, Lc=128, Lt=1024, passkey_share=1.0, passkey_skip=skip)
    data, rng = prepare.TokenDataset(data_dir, "train"), np.random.default_rng(0)
    moved = 0
    for _ in range(20):
        tokens, pos = pose.sample(data.doc(0), cfg.Lc, cfg.Lt, method, cfg.num_chunks, rng=rng)
        state = rng.bit_generator.state
        row, p = train.passkey_row(tokens, pos, tok, cfg, rng)
        rng.bit_generator.state = state
        example, prompt = passkey_example(tok, len(tokens), rng)  # the same draws: the row's own prompt
        assert np.array_equal(row[:len(example)], example) and len(row) == len(tokens)
        assert np.array_equal(row[len(example):], tokens[:len(tokens) - len(example)])
        if method != "pose" or skip == "pose":
            assert np.array_equal(p, pos)
            continue
        jumps = np.flatnonzero(np.diff(p) > 1) + 1  # where a skip lands
        assert (np.diff(p) > 0).all() and p[0] == 0 and p[-1] < cfg.Lt
        assert len(jumps) <= 1 and (len(jumps) == 0 or prompt.key_end <= jumps[0] <= prompt.question_at)
        moved += not np.array_equal(p, pos)
    assert method != "pose" or skip == "pose" or moved > 10  # the skip did move, in most rows


def test_passkey_share_needs_room_for_the_template(data_dir):
    cfg = tiny_cfg(data_dir, "x", passkey_share=1.0)  # Lc = 32 < the 96-token template
    with pytest.raises(ValueError, match="too short for the passkey template"):
        train.get_batch(prepare.TokenDataset(data_dir, "train"), cfg, np.random.default_rng(0), 2,
                    load_tokenizer("web-bpe4k"))


def test_lora_adapters_are_the_same_for_a_seed_whatever_the_hash_seed():
    """Adapters are made in module order: iterating a set of names (string hashes vary per process) once gave the
    same seed different starting adapters."""
    code = ("import torch; from model import LLaMA, ModelConfig; from lora import add_lora; torch.manual_seed(0); "
            "m = LLaMA(ModelConfig(dim=64, n_layers=1, n_heads=4, vocab_size=64)); torch.manual_seed(1); "
            "add_lora(m, 4, 8, ['wq', 'wk', 'wv', 'wo']); print(m.layers[0].attention.wq.A.detach().sum().item())")
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                          env=os.environ | {"PYTHONHASHSEED": str(h), "OMP_NUM_THREADS": "1"}).stdout for h in (1, 2)}
    assert len(out) == 1, out
