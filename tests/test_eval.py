"""eval.py and plots.py: perplexity scores every token once and agrees with plain logits, passkey prompts and
scoring are right, the driver writes its tables and figures, and every plot renders with Agg."""
import json
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import passkey
import plots
import pose
from checkpoint import save_pretrained
from config import parse_config
from eval import (
    EvalConfig,
    beyond,
    evaluate_models,
    key_distances,
    passkey_accuracy,
    passkey_cells,
    perplexity,
    windows,
)
from model import LLaMA, ModelConfig
from tokenizer import load_tokenizer

V = 4096


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("web-bpe4k")


def tiny(seed=0, max_seq_len=128):
    torch.manual_seed(seed)
    return LLaMA(ModelConfig(dim=64, n_layers=2, n_heads=4, vocab_size=V, max_seq_len=max_seq_len)).eval()


def random_docs(lengths, seed=0, bos=V - 1):
    rng = np.random.default_rng(seed)
    return [np.concatenate([[bos], rng.integers(0, V - 1, n - 1)]) for n in lengths]


class Recorder(nn.Module):
    """Stands in for a model: records every (input, targets) batch perplexity() sends; the loss of each token is
    its target's value to the power `power`, so sums of the scored losses say which tokens were scored."""

    def __init__(self, power=1):
        super().__init__()
        self.cfg, self.calls, self.power = ModelConfig(max_seq_len=10**6), [], power

    def forward(self, idx, pos=None, targets=None, reduction="mean"):
        self.calls.append((idx.clone(), targets.clone()))
        return targets.double().clamp(min=0).pow(self.power).flatten()


@pytest.mark.parametrize("n,ctx,stride", [(8, 8, 8), (9, 8, 8), (9, 8, 3), (50, 8, 1), (50, 8, 5), (51, 16, 16)])
def test_the_windows_score_every_token_once_with_its_context(n, ctx, stride):
    plan = windows(n, ctx, stride)
    scored = [i for a, b, s in plan for i in range(s, b)]
    assert scored == list(range(n)), "every token once, in order"
    for k, (a, b, s) in enumerate(plan):
        assert b - a <= ctx and a <= s <= b
        assert k == 0 or s - a >= ctx - stride, "after the first window a token sees >= ctx - stride before it"
    assert windows(n, ctx, stride, truncate=True) == [(0, ctx, 0)] and windows(ctx - 1, ctx, 1, truncate=True) == []


@pytest.mark.parametrize("n,ctx,stride,truncate", [(8, 8, 8, False), (9, 8, 3, False), (50, 8, 1, False),
                                                   (51, 16, 16, False), (50, 8, 0, True), (80, 16, 0, True)])
def test_perplexity_scores_the_planned_tokens_from_the_tokens_before_them(n, ctx, stride, truncate):
    doc = np.arange(n + 1)  # BOS = 0, then x_i = i + 1: a target's value says where it sits in the document
    expected = np.arange(1, ctx + 1) if truncate else np.arange(1, n + 1)
    for power in (1, 2):  # the sum and the sum of squares of the scored targets: each token once, none missed
        rec = Recorder(power)
        out = perplexity(rec, [doc, doc], ctx, bos_id=0, stride=stride, truncate=truncate, batch_tokens=3 * ctx)
        assert out["tokens"] == 2 * len(expected)
        assert out["nll"] * out["tokens"] == pytest.approx(2 * (expected.astype(float) ** power).sum())
    for x, y in rec.calls:
        assert x.shape[1] <= ctx and (x[:, 0] == 0).all(), "a window is BOS + at most ctx - 1 text tokens"
        rows, cols = torch.nonzero(y != -1, as_tuple=True)
        before = torch.where(cols == 0, 0, y[rows, cols] - 1)  # the token before the target, or the window's BOS
        assert (x[rows, cols] == before).all(), "each target is predicted from the tokens before it"


def test_a_document_shorter_than_a_window_is_left_out_with_a_warning():
    long, short = np.arange(41), np.arange(10)
    with pytest.warns(UserWarning, match="1 of 2 documents are shorter than a 16-token window: left out at 16"):
        out = perplexity(Recorder(), [long, short], 16, bos_id=0)
    assert out["tokens"] == 40
    with pytest.raises(ValueError, match="no document is long enough for a 16-token window"), pytest.warns(UserWarning):
        perplexity(Recorder(), [short], 16, bos_id=0)


def test_uniform_logits_give_the_vocabulary_size():
    model = tiny()
    with torch.no_grad():
        model.output.weight.zero_()  # every logit 0: each token has probability 1/V
    docs = random_docs([300, 77])
    for kw in ({"stride": 48}, {"truncate": True}):
        out = perplexity(model, docs, 64, bos_id=V - 1, **kw)
        assert out["ppl"] == pytest.approx(V, rel=1e-5)
    assert out["tokens"] == 2 * 64 and perplexity(model, docs, 64, bos_id=V - 1, stride=48)["tokens"] == 299 + 76


def test_loss_at_each_position_of_uniform_logits_is_log_v_everywhere():
    model = tiny()
    with torch.no_grad():
        model.output.weight.zero_()
    out = perplexity(model, random_docs([300, 200, 129]), 64, bos_id=V - 1)  # back-to-back 64-token windows
    assert out["windows"] == 4 + 3 + 2 and len(out["position"]) == 64 and np.allclose(out["position"], math.log(V))
    assert perplexity(model, random_docs([300]), 64, bos_id=V - 1, stride=32)["windows"] == 8  # 0, 32, … 224


def test_loss_at_each_position_is_the_mean_over_full_windows():
    model = tiny(seed=3)
    docs = random_docs([200], seed=4)
    out = perplexity(model, docs, 64, bos_id=V - 1, stride=16)
    rows = [np.concatenate([[V - 1], docs[0][1 + a:1 + a + 64]]) for a in range(0, 200 - 64, 16)]  # full windows
    with torch.no_grad():
        t = torch.from_numpy(np.stack(rows))
        want = model(t[:, :-1], targets=t[:, 1:], reduction="none").view(len(rows), -1).mean(0).double().numpy()
    assert out["windows"] == len(rows) and np.allclose(out["position"], want, atol=1e-5)


def test_keys_beyond_lc_are_counted_by_their_distance(tok):
    distance = key_distances(tok, [128, 1024], [0.0, 0.5, 1.0])
    assert distance[1024][0.0] > 900 and distance[1024][1.0] < 64 and max(distance[128].values()) < 128
    acc = {128: {0.0: 1.0, 0.5: 1.0, 1.0: 1.0}, 1024: {0.0: 0.5, 0.5: 0.0, 1.0: 1.0}}
    assert beyond(acc, distance, 128, 1024) == 0.25 and beyond(acc, distance, 128, 128) is None


def test_chunked_loss_matches_plain_logits():
    model, ctx = tiny(seed=1, max_seq_len=1024), 600
    docs = random_docs([700, 650], seed=2)  # 2 windows x 600 tokens: more than one 1024-token loss chunk
    out = perplexity(model, docs, ctx, bos_id=V - 1, truncate=True, batch_tokens=2 * ctx)
    with torch.no_grad():
        nll = sum(F.cross_entropy(model(torch.from_numpy(d[None, :ctx]))[0], torch.from_numpy(d[1:ctx + 1]),
                                  reduction="sum").item() for d in docs)
    assert out["tokens"] == 2 * ctx and out["nll"] == pytest.approx(nll / (2 * ctx), rel=1e-5)


def test_windows_past_max_seq_len_warn_but_run():
    with pytest.warns(UserWarning, match="beyond the model's max_seq_len=128"):
        out = perplexity(tiny(), random_docs([300]), 256, bos_id=V - 1)
    assert out["tokens"] == 299


@pytest.mark.parametrize("length", [128, 300, 1000, 3000])
def test_passkey_prompt_length_and_depth(tok, length):
    rep = len(passkey.FILLER.split(" "))
    for depth in (0, 0.1, 0.25, 0.5, 0.9, 1):
        p = passkey.passkey_prompt(tok, length, depth, 31415)
        ids, answer = p.ids, p.answer
        assert length - 4 <= len(ids) + len(answer) <= length
        # where the key line and the question are: the exact tokens of each, and the key's distance from the answer
        assert tok.decode(ids[p.key_at:p.key_end]) == passkey.KEY_LINE.format(key=31415)
        assert tok.decode(ids[p.question_at:]) == passkey.QUESTION and p.distance == len(ids) - p.key_at
        assert ids[0] == tok.eos_id and tok.decode(answer) == " 31415"
        intro, before, key_line, after, question = tok.decode(ids[1:]).split("\n")
        assert (intro, key_line, question) == (passkey.INTRO, passkey.KEY_LINE.format(key=31415), passkey.QUESTION)
        n_before, n_after = len(before.split()), len(after.split())
        assert abs(n_before - depth * (n_before + n_after)) <= rep / 2, "the key sits at the requested depth"
        assert n_before % rep == 0 or n_after == 0, "the key line goes between repetitions"


class Copier(nn.Module):
    """A model built to copy: it predicts the token that followed the latest earlier occurrence of the last three
    tokens, looking back at most `window` tokens (else it predicts EOS). So it finds a key only when the key line
    is near the question: accuracy depends on length and depth. It runs under model.py's generate()."""
    generate = LLaMA.generate

    def __init__(self, window):
        super().__init__()
        self.cfg, self.window = ModelConfig(max_seq_len=10**6), window

    def new_cache(self):
        return [[None, None]]

    def forward(self, idx, pos=None, targets=None, cache=None):
        if cache is None and len(idx) > 1:  # a batch (teacher forcing): each row on its own
            return torch.cat([self(row[None]) for row in idx])
        seq = idx[0] if cache is None or cache[0][0] is None else torch.cat([cache[0][0], idx[0]])
        if cache is not None:
            cache[0][0] = seq
        T, t = len(seq), torch.arange(len(seq))
        grams = torch.stack([torch.cat([torch.full((k,), -1 - k), seq[:T - k]]) for k in range(3)], 1)  # (T, 3)
        back = t[:, None] - t[None]  # (T, T): how far back position s is from t
        match = (grams[:, None] == grams[None]).all(-1) & (back > 0) & (back <= self.window)
        src = torch.where(match, t[None], -1).max(1).values  # the latest matching earlier position, or -1
        nxt = torch.where(src >= 0, seq[(src + 1).clamp(max=T - 1)], V - 1)
        return F.one_hot(nxt, V).float()[None, -idx.shape[1]:]  # (1, T_new, V)


def test_generation_and_teacher_forcing_agree_on_a_copier(tok):
    model, cells = Copier(window=100), {128: [0, 0.5, 1], 256: [0, 0.5, 1]}
    gen, none = passkey_accuracy(model, tok, cells, trials=6, seed=3, mode="generate")
    teacher, disagree = passkey_accuracy(model, tok, cells, trials=6, seed=3, mode="both", batch_tokens=600)
    assert gen == teacher and none is None and disagree == 0
    assert gen[256][1] == 1 and gen[256][0] == 0, "the copier finds a near key and misses a far one"


def test_passkey_cells_keep_only_far_keys_beyond_the_threshold(tok):
    cells = passkey_cells(key_distances(tok, [128, 256, 1024], [0, 0.5, 1]), far=128)
    assert cells[128] == [0, 0.5, 1]  # within it, every depth: retrieval inside the window
    assert cells[256] == [0] and cells[1024] == [0, 0.5]  # the key at depth 1 sits near the question


def test_evaluate_models_writes_tables_and_plots(tmp_path, tok):
    text = tmp_path / "book.txt"
    text.write_text(" ".join([passkey.FILLER, passkey.INTRO] * 20))
    save_pretrained(tiny(), tmp_path / "run" / "final")
    cfg = parse_config(EvalConfig, [f"--models={tmp_path / 'run' / 'final'},b={tmp_path / 'run' / 'final'}",
                                      "--lengths=64,128", f"--data={text}", "--passkey_lengths=128",
                                      "--passkey_trials=1", "--passkey_depths=0,1", f"--out={tmp_path / 'res'}",
                                      f"--plots={tmp_path / 'plots'}"])
    evaluate_models(cfg, progress=False)
    ppl = json.loads((tmp_path / "res" / "ppl.json").read_text())["models"]
    n = len(tok.encode(text.read_text()))
    assert list(ppl) == ["run", "b"] and ppl["run"]["ppl"]["64"]["tokens"] == n
    assert ppl["run"]["ppl"]["128"] == ppl["b"]["ppl"]["128"] and ppl["run"]["L0"] == 128
    assert math.isfinite(ppl["run"]["ppl"]["64"]["ppl"])
    assert "| run |" in (tmp_path / "res" / "ppl.md").read_text()
    keys = json.loads((tmp_path / "res" / "passkey.json").read_text())["models"]
    assert set(keys["b"]["128"]) == {"0.0", "1.0"}
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"ppl.png", "passkey_run.png", "passkey_b.png"}
    assert "position" not in ppl["run"]["ppl"]["64"]  # the curve goes to position_loss.json, when asked for


def test_plots_render_with_agg(tmp_path):
    matplotlib.use("Agg")  # headless, as on a server or in CI
    rel, _ = pose.coverage("pose", 16, 64, n_samples=50, rng=np.random.default_rng(0))
    log = [{"step": 10, "loss": 5.0, "lr": 1e-3}, {"step": 20, "loss": 4.0, "lr": 1e-3},
           {"step": 20, "eval": {"128": 4.2, "1024": 6.0}}]
    bench = {"Full-length": {"4096": {"mem_gib": 20, "step_s": 2.0}, "8192": {"mem_gib": 31, "step_s": 4.1}},
             "PoSE": {"4096": {"mem_gib": 14.5, "step_s": 1.0}, "8192": {"mem_gib": 14.5, "step_s": 1.0}}}
    calls = {"ppl.png": lambda p: plots.plot_perplexity({"a": {128: 9.0, 1024: 2e3}}, p, {128: "L0", 1024: "Lt"}),
             "passkey.png": lambda p: plots.plot_passkey({128: {0.0: 1.0, 1.0: 0.5}, 256: {0.0: 0.0, 1.0: 0.2}}, p),
             "training.png": lambda p: plots.plot_training({"run": log}, p),
             "memory_time.png": lambda p: plots.plot_memory_time(bench, p),
             "coverage.png": lambda p: plots.plot_coverage([({"PoSE N = 2": rel}, 16, "16 -> 64")] * 2, p),
             "rope_scalings.png": lambda p: plots.plot_rope_scalings(*plots.rope_divisors(128, 8, 32), p),
             "steps.png": lambda p: plots.plot_steps({"run": {0: {128: 60.0, 1024: 70.0}, 25: {128: 50.0, 1024: 48.0}}},
                                                     p, (128, 1024))}
    for name, draw in calls.items():
        draw(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / name).stat().st_size > 10_000


def test_context_marks_label_the_pretraining_and_target_lengths():
    # a base (128 = 128), a PoSE run (128 -> 1024) and fixed NTK exported as plain RoPE, which records its L0 too
    models = {"base": {"L0": 128, "Lt": 128}, "pose": {"L0": 128, "Lt": 1024}, "ntk": {"L0": 128, "Lt": 1024}}
    assert plots.context_marks(models) == {128: "L0", 1024: "Lt"}
    assert plots.context_marks({"base": {"L0": 128, "Lt": 128}}) == {128: "L0"}
