"""Reliability: SIGKILL-safe resume, NaN stops, one clear line per bad input, and nothing loaded can run code."""
import json
import math
import os
import random
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import prepare
import train
from checkpoint import from_pretrained, latest_checkpoint, load_tensors, save_pretrained
from model import LLaMA, ModelConfig
from tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = ["--dim=64", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--Lc=32", "--Lt=128", "--method=pose",
        "--rope_type=linear", "--batch_size=4", "--warmup_steps=2", "--eval_interval=0", "--eval_docs=2",
        "--eval_tokens=256", "--log_interval=1", "--device=cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Evil:
    """A pickle that runs code when loaded: it would make the folder `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def tiny_model(vocab_size=4096):
    torch.manual_seed(0)
    return LLaMA(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, max_seq_len=32))


def edit_config(path, **changes):
    c = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(c | changes))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A folder of good and bad inputs: data, models, checkpoints, files."""
    ws = tmp_path_factory.mktemp("ws")
    tok = load_tokenizer("web-bpe4k")
    for split, path in prepare.CORPUS.items():
        prepare.write_split(prepare.read_documents([path])[:8], tok, ws / "tok", split)
        prepare.write_split([("a", "In the beginning."), ("b", "Jesus wept.")], tok, ws / "short", split)
    save_pretrained(tiny_model(), ws / "good")
    for bad in ("trunc", "shape", "rope", "evil"):
        shutil.copytree(ws / "good", ws / bad)
    weights = (ws / "good" / "model.safetensors").read_bytes()
    (ws / "trunc" / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    edit_config(ws / "shape", intermediate_size=128)
    edit_config(ws / "rope", rope_scaling={"rope_type": "bogus", "factor": 2.0})
    (ws / "evil" / "model.safetensors").unlink()
    torch.save({"model.norm.weight": Evil(ws / "ran_code")}, ws / "evil" / "pytorch_model.bin")
    save_pretrained(tiny_model(vocab_size=256), ws / "small_vocab")
    run = ws / "evil_resume"  # a run whose latest checkpoint holds a train_state.pt that runs code
    shutil.copytree(ws / "good", run / "ckpt_0000001")
    torch.save({"step": Evil(ws / "ran_code")}, run / "ckpt_0000001" / "train_state.pt")
    (run / "latest").write_text("ckpt_0000001")
    (ws / "file.txt").write_text("a file, not a folder")
    (ws / "empty.txt").write_text("")
    (ws / "bad.toml").write_text("lr = = 1\n")
    (ws / "meta").mkdir()  # a Meta folder: its params.json does not say how long a context it was pretrained at
    (ws / "meta" / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 4096}))
    torch.save({}, ws / "meta" / "consolidated.00.pth")
    return ws


def listing(path):
    """Every file at or under `path` with its size and mtime: the same before and after iff no file was written
    (an empty folder may be made)."""
    files = [str(path)] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    return {f: (os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files}


# ----------------------------------------------------------------------------- crash-safe checkpoints
def test_sigkill_three_times_then_resume_gives_the_uninterrupted_weights(ws, tmp_path):
    """Killed at three random moments (one as soon as a save has begun), each time resumed: the final weights
    equal an uninterrupted run's bit for bit, and after every kill `latest` names a complete checkpoint."""
    args = [sys.executable, "train.py", f"--data_dir={ws / 'tok'}", *TINY, "--max_steps=16", "--ckpt_interval=1"]
    straight = subprocess.run(args + [f"--out_dir={tmp_path / 'straight'}"], cwd=ROOT, env=ENV, capture_output=True,
                              text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out, rng = tmp_path / "killed", random.Random(0)
    for i, step in enumerate([2 + rng.randint(0, 1), 6 + rng.randint(0, 1), 10 + rng.randint(0, 1)]):
        p = subprocess.Popen(args + [f"--out_dir={out}", f"--init_from={'resume' if i else 'scratch'}"], cwd=ROOT,
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            if line.startswith(f"step {step}/"):
                break
        if i < 2:  # a random moment shortly after step `step`: in a save, in a step, or between
            time.sleep(rng.uniform(0, 0.1))
        else:      # the moment a save (of step `step` or later) has begun
            while p.poll() is None and not any(d.startswith(".ckpt_") and int(d[6:13]) >= step
                                               for d in os.listdir(out)):
                pass
        p.send_signal(signal.SIGKILL)
        rest = p.communicate()[0]
        assert p.returncode == -signal.SIGKILL, f"run {i} ended before its kill at step {step}: {rest[-1000:]}"
        latest = latest_checkpoint(out)
        assert load_tensors(os.path.join(latest, "train_state.pt"))["step"] == int(latest[-7:])
        unfinished = [int(d[6:13]) for d in os.listdir(out) if d.startswith(".ckpt_")]
        assert all(int(latest[-7:]) < n for n in unfinished), "`latest` moved before its save was complete"
        from_pretrained(latest)  # complete: config and every weight
    resumed = subprocess.run(args + [f"--out_dir={out}", "--init_from=resume"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a, b = (load_file(d / "final" / "model.safetensors") for d in (tmp_path / "straight", out))
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == [], resumed.stdout


def tiny_cfg(ws, out_dir, **kw):
    return train.TrainConfig(**(dict(data_dir=str(ws / "tok"), out_dir=str(out_dir), dim=64, n_layers=2, n_heads=4,
                                 n_kv_heads=2, Lc=32, Lt=128, method="pose", rope_type="linear", batch_size=4,
                                 max_steps=6, warmup_steps=2, log_interval=1, eval_interval=0,
                                 ckpt_interval=1, device="cpu") | kw))


def test_a_failed_save_keeps_the_last_good_checkpoint(ws, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save_then_fail(*a, **k):  # the third checkpoint's train_state.pt: its weights are written by then
        calls.append(1)
        if len(calls) == 3:
            raise OSError("No space left on device")
        real_save(*a, **k)
    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        train.train(tiny_cfg(ws, tmp_path))
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("ckpt_")) == ["ckpt_0000002"]
    assert latest_checkpoint(tmp_path) == str(tmp_path / "ckpt_0000002")
    assert load_tensors(tmp_path / "ckpt_0000002" / "train_state.pt")["step"] == 2
    from_pretrained(tmp_path / "ckpt_0000002")
    assert not (tmp_path / "final").exists()


class NanGrad(torch.autograd.Function):
    """The identity, whose gradient is NaN: a finite loss with NaN gradients."""
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


@pytest.mark.parametrize("poison,message", [
    (lambda loss: loss * float("nan"), r"loss nan, gradient norm nan at step 4;"),
    (NanGrad.apply, r"loss \d+\.\d+, gradient norm nan at step 4;"),
])
def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(ws, tmp_path, monkeypatch, poison, message):
    real_forward, calls = LLaMA.forward, []

    def forward(self, *a, **k):  # the 4th training step goes wrong
        calls.append(1)
        loss = real_forward(self, *a, **k)
        return poison(loss) if len(calls) == 4 else loss
    monkeypatch.setattr(LLaMA, "forward", forward)
    good = str(tmp_path / "ckpt_0000003")
    with pytest.raises(FloatingPointError, match=message + f" stopped, the last good checkpoint is {re.escape(good)}$"):
        train.train(tiny_cfg(ws, tmp_path))
    assert latest_checkpoint(tmp_path) == good
    assert all(torch.isfinite(w).all() for w in load_file(os.path.join(good, "model.safetensors")).values())
    assert not (tmp_path / "ckpt_0000004").exists() and not (tmp_path / "final").exists()


@pytest.mark.parametrize("ckpt_interval,good", [(2, "ckpt_0000002"), (0, None)])
def test_weights_an_overflowing_lr_made_nan_are_never_saved(ws, tmp_path, monkeypatch, ckpt_interval, good):
    """An lr of 1e30 at step 3 (past what --lr accepts: as a schedule's bug would give it) without gradient clipping:
    step 4's loss is finite (RMSNorm turns the overflowed activations into zeros) and its NaN gradients go unmeasured,
    so the weights check is what keeps the NaN weights out of checkpoint 4 and final/."""
    real = train.get_lr
    monkeypatch.setattr(train, "get_lr", lambda step, cfg: 1e30 if step == 2 else real(step, cfg))
    named = re.escape(str(tmp_path / good)) if good else r"none \(no checkpoint was written before\)"
    with pytest.raises(FloatingPointError, match=r"^the weights are not finite after step 4: nothing saved; the last "
                                                 f"good checkpoint is {named}$"):
        train.train(tiny_cfg(ws, tmp_path, grad_clip=0.0, ckpt_interval=ckpt_interval, max_steps=4 + 2 * bool(good),
                             eval_docs=0))
    losses = [r["loss"] for r in map(json.loads, open(tmp_path / "log.jsonl")) if "loss" in r]
    assert len(losses) == 4 and all(map(math.isfinite, losses)), losses
    assert sorted(d for d in os.listdir(tmp_path) if "ckpt_" in d) == ([good] if good else [])
    assert not (tmp_path / "final").exists()
    if good:
        assert latest_checkpoint(tmp_path) == str(tmp_path / good)
        weights = load_file(tmp_path / good / "model.safetensors").values()
        assert all(w.isfinite().all() and w.abs().max() < 10 for w in weights)  # from before the overflow


# ----------------------------------------------------------------------------- one clear line per bad input
# id: (script and arguments, the last line of stderr as a regular expression, a path where no file may change)
# {ws}: the fixture's folder, {run}: a fresh out_dir for this case
TRAIN = ["train.py", "--data_dir={ws}/tok", "--out_dir={run}", *TINY, "--max_steps=4", "--ckpt_interval=1"]
EVAL = ["eval.py", "--data={ws}/tok", "--out={run}/results", "--plots={run}/plots", "--lengths=32",
        "--max_tokens=64", "--passkey_trials=0"]
CASES = {
    "missing checkpoint directory": (TRAIN + ["--init_from={ws}/nowhere"],
                                     r"error: {ws}/nowhere: no such checkpoint directory", "{run}"),
    "truncated safetensors": (TRAIN + ["--init_from={ws}/trunc"],
                              r"error: {ws}/trunc/model.safetensors: refused or unreadable as a weights-only "
                              r"checkpoint \(SafetensorError: Error while deserializing header: .*\)", "{run}"),
    "shapes disagree with config": (TRAIN + ["--init_from={ws}/shape"],
                                    r"error: {ws}/shape: 'layers.0.feed_forward.w1.weight' has shape \(\d+, 64\) in "
                                    r"the checkpoint, \(128, 64\) in the model built from its config", "{run}"),
    "unknown rope type in config.json": (TRAIN + ["--init_from={ws}/rope"],
                                         r"error: {ws}/rope/config.json: unknown rope type 'bogus'; expected one of "
                                         r"default, linear, .*", "{run}"),
    "Lt < Lc": (TRAIN + ["--Lt=16"], r"error: Lt=16 is shorter than Lc=32", "{run}"),
    "num_chunks > Lc": (TRAIN + ["--num_chunks=33"], r"error: num_chunks=33 must be between 1 and Lc=32", "{run}"),
    "no document >= Lc for pose": (TRAIN + ["--data_dir={ws}/short"],
                                   r"error: no document in {ws}/short has the 32 tokens a pose window needs", "{run}"),
    "missing data directory": (TRAIN + ["--data_dir={ws}/nowhere"],
                               r"error: {ws}/nowhere/train.json: no such prepared split \(prepare.py makes them\)",
                               "{run}"),
    "tokenizer vocabulary > model's": (TRAIN + ["--init_from={ws}/small_vocab"],
                                       r"error: {ws}/small_vocab has 256 token embeddings, the tokenizer "
                                       r"web-bpe4k 4096 tokens: they are not one model's \(prepare {ws}/tok with the "
                                       r"model's tokenizer\)",
                                       "{run}"),
    "unknown method": (TRAIN + ["--method=magic"],
                       r"error: unknown method 'magic'; expected one of pose, randpos, full, plain", "{run}"),
    "unknown command-line key": (TRAIN + ["--lerning_rate=1"],
                                 r"error: unknown config key 'lerning_rate' \(python train.py -h lists them\)",
                                 "{run}"),
    "out_dir cannot be written": (TRAIN[:2] + ["--out_dir={ws}/file.txt/run"] + TRAIN[3:],
                                  r"error: --out_dir={ws}/file.txt/run: expected a folder that can be written "
                                  r"\({ws}/file.txt is not a folder this process can write in\)", "{ws}/file.txt"),
    "pickle that runs code (model)": (TRAIN + ["--init_from={ws}/evil"],
                                      r"error: {ws}/evil/pytorch_model.bin: refused or unreadable as a weights-only "
                                      r"checkpoint \(UnpicklingError: Trying to load unsupported GLOBAL posix.mkdir "
                                      r"whose module posix is blocked.\)", "{run}"),
    "pickle that runs code (resume)": (TRAIN[:2] + ["--out_dir={ws}/evil_resume"] + TRAIN[3:] + ["--init_from=resume"],
                                       r"error: {ws}/evil_resume/ckpt_0000001/train_state.pt: refused or unreadable "
                                       r"as a weights-only checkpoint \(UnpicklingError: .*GLOBAL posix.mkdir.*\)",
                                       "{ws}/evil_resume"),
    "NaN loss": (TRAIN, r"error: loss nan, gradient norm nan at step 3; stopped, the last good checkpoint is "
                        r"{run}/ckpt_0000002", None),  # its checkpoints: test_nan_stops_... above
    "missing config file": (TRAIN + ["{ws}/nope.toml"],
                            r"error: {ws}/nope.toml: No such file or directory \(a .toml config file, or --key=value\)",
                            "{run}"),
    "config file that is not TOML": (TRAIN + ["{ws}/bad.toml"], r"error: {ws}/bad.toml: not valid TOML \(.*\)",
                                     "{run}"),
    "rope_type=longrope": (TRAIN + ["--rope_type=longrope"],
                           r"error: --rope_type=longrope needs per-dimension factors, which only a checkpoint's config "
                           r"gives: .*", "{run}"),
    "Meta checkpoint without L0": (TRAIN + ["--init_from={ws}/meta"],
                                   r"error: {ws}/meta is a Meta checkpoint, whose params.json does not record the "
                                   r"length it was pretrained at: give it \(LLaMA 2048, Llama-2 4096, Llama-3 8192\)",
                                   "{run}"),
    "eval: missing config file": (["eval.py", "{ws}/nope.toml"], r"error: {ws}/nope.toml: No such file or directory "
                                                                  r"\(a .toml config file, or --key=value\)", None),
    "eval: missing checkpoint directory": (EVAL + ["--models={ws}/nowhere"],
                                           r"error: {ws}/nowhere: no such model folder", "{run}"),
    "eval: truncated safetensors": (EVAL + ["--models={ws}/trunc"],
                                    r"error: {ws}/trunc/model.safetensors: refused or unreadable .*", "{run}"),
    "eval: pickle that runs code": (EVAL + ["--models={ws}/evil"],
                                    r"error: {ws}/evil/pytorch_model.bin: refused or unreadable as a weights-only "
                                    r"checkpoint \(UnpicklingError: .*GLOBAL posix.mkdir.*\)", "{run}"),
    "eval: tokenizer vocabulary > model's": (EVAL + ["--models={ws}/small_vocab"],
                                             r"error: {ws}/small_vocab has 256 token embeddings, the tokenizer "
                                             r"web-bpe4k 4096 tokens: .*", "{run}"),
    "eval: passkey length shorter than the template": (
        EVAL[:-1] + ["--models={ws}/good", "--passkey_lengths=20", "--passkey_trials=1"],
        r"error: 20 tokens is too short for the passkey template \(\d+ without filler\)", "{run}"),
    "eval: out folder cannot be written": (EVAL[:2] + ["--out={ws}/file.txt/results"] + EVAL[3:]
                                           + ["--models={ws}/good"],
                                           r"error: --out={ws}/file.txt/results: expected a folder that can be "
                                           r"written \({ws}/file.txt is not a folder this process can write in\)",
                                           "{ws}/file.txt"),
    "prepare: empty corpus": (["prepare.py", "--out={run}", "{ws}/empty.txt"],
                              r"prepare.py: error: train: no documents in {ws}/empty.txt", "{run}"),
}


def fill(text, ws, case, escape=lambda s: s):
    return text.format(ws=escape(str(ws)), run=escape(str(ws / "runs" / re.sub(r"\W+", "_", case))))


def nan_at_step_3(monkeypatch):
    real, calls = LLaMA.forward, []

    def forward(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k) * (float("nan") if len(calls) == 3 else 1.0)
    monkeypatch.setattr(LLaMA, "forward", forward)


def run_main(argv, capfd, monkeypatch, stdout=False):
    """`python SCRIPT ARGS...` run in this process (no second torch import): (exit status, stderr), and stdout too if
    asked. Any exception but SystemExit propagates, so a traceback fails the test."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", argv)
    capfd.readouterr()
    try:
        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()
    if isinstance(code, str):  # what the interpreter does with sys.exit("message")
        err, code = err + code + "\n", 1
    return (code, err, out) if stdout else (code, err)


@pytest.mark.parametrize("case", CASES)
def test_each_bad_input_gives_one_clear_line_and_writes_nothing(ws, case, capfd, monkeypatch):
    argv, message, keep = CASES[case]
    if case == "NaN loss":
        nan_at_step_3(monkeypatch)
    before = keep and listing(fill(keep, ws, case))
    code, err = run_main([fill(a, ws, case) for a in argv], capfd, monkeypatch)
    assert code not in (0, None)
    assert re.fullmatch(fill(message, ws, case, re.escape), err.strip().splitlines()[-1]), err
    assert before == (keep and listing(fill(keep, ws, case))), "a failed run wrote or changed files"
    assert not (ws / "ran_code").exists()


@pytest.mark.parametrize("case", ["missing checkpoint directory", "eval: pickle that runs code",
                                  "prepare: empty corpus"])
def test_as_a_separate_process_too(ws, case):
    """The in-process runs above stand for real ones: one real process per script shows the same last line."""
    argv, message, _ = CASES[case]
    r = subprocess.run([sys.executable, *(fill(a, ws, case) for a in argv)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert re.fullmatch(fill(message, ws, case, re.escape), r.stderr.strip().splitlines()[-1]), r.stderr


def test_evaluating_beyond_lt_without_scaling_warns_then_runs(ws, tmp_path):
    r = subprocess.run([sys.executable, "eval.py", f"--models={ws / 'good'}", f"--data={ws / 'tok'}", "--lengths=32,64",
                        "--max_tokens=64", "--passkey_trials=0", f"--out={tmp_path}", f"--plots={tmp_path}"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("UserWarning: lengths beyond the model's max_seq_len=32 (RoPE scaling: None) are extrapolation; "
            "evaluating them anyway") in r.stderr
    assert set(json.loads((tmp_path / "ppl.json").read_text())["models"]["good"]["ppl"]) == {"32", "64"}


# ----------------------------------------------------------------------------- a run owns its folder; Ctrl-C
def train_argv(ws, out, *more):
    return ["train.py", f"--data_dir={ws / 'tok'}", f"--out_dir={out}", *TINY, "--ckpt_interval=1", "--eval_docs=0",
            *more]


def test_nothing_is_written_through_a_symbolic_link(ws, tmp_path, capfd, monkeypatch):
    """Links planted where a run writes -- log.jsonl, .lock, a checkpoint's name and its temporary's, final/ -- lead
    out of out_dir: each is refused or replaced by the run's own file, and nothing outside is written."""
    outside, out = tmp_path / "outside", tmp_path / "run"
    outside.mkdir()
    (outside / "file").write_text("not the run's\n")
    train.train(tiny_cfg(ws, out, max_steps=2, eval_docs=0))
    before = listing(outside)
    for name, message in [("log.jsonl", f"{out}/log.jsonl is a symbolic link: a run writes only into its own files"),
                          (".lock", f"[Errno 40] Too many levels of symbolic links: '{out}/.lock'")]:
        os.rename(out / name, tmp_path / name)
        (out / name).symlink_to(outside / "file")
        code, err = run_main(train_argv(ws, out, "--init_from=resume", "--max_steps=4"), capfd, monkeypatch)
        assert code == 1 and err.strip().splitlines()[-1] == f"error: {message}", err
        os.remove(out / name)
        os.rename(tmp_path / name, out / name)
    shutil.rmtree(out / "final")
    for name, target in [("final", outside), ("ckpt_0000003", outside), ("ckpt_0000004", outside / "file"),
                         (".ckpt_0000003.x1y2z3", outside)]:
        (out / name).symlink_to(target)
    code, err = run_main(train_argv(ws, out, "--init_from=resume", "--max_steps=4"), capfd, monkeypatch)
    assert code == 0, err
    assert listing(outside) == before
    assert not [p for p in os.listdir(out) if os.path.islink(out / p)]
    assert sorted(p for p in os.listdir(out) if "ckpt_" in p) == ["ckpt_0000004"]
    from_pretrained(out / "final")
    from_pretrained(out / "ckpt_0000004")


def test_a_second_run_on_a_busy_out_dir_is_refused_naming_the_first(ws, tmp_path, capfd, monkeypatch):
    """While one process trains into out_dir (paused, so that the second surely finds it there), a second one that
    resumes into the same folder is refused with the first's pid; the first then finishes as if alone."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, *train_argv(ws, out, "--max_steps=20")], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:  # step 1 is logged just before its checkpoint is written
            if line.startswith("step 1/"):
                break
        first.send_signal(signal.SIGSTOP)
        while latest_checkpoint(out) is None and first.poll() is None:  # on, a little at a time, to its checkpoint
            first.send_signal(signal.SIGCONT)
            time.sleep(0.005)
            first.send_signal(signal.SIGSTOP)
        code, err = run_main(train_argv(ws, out, "--init_from=resume", "--max_steps=4"), capfd, monkeypatch)
    finally:
        first.send_signal(signal.SIGCONT)
        rest, first_err = first.communicate(timeout=120)
    assert code == 1 and err.strip().splitlines()[-1] == (f"error: {out} is in use by another run (pid {first.pid}); "
                                                          "wait for it, or choose another out_dir"), err
    assert first.returncode == 0, first_err[-2000:]
    assert f"saved {out}/final" in rest
    from_pretrained(out / "final")


def test_resuming_with_another_Lt_is_refused_and_with_the_same_continues(ws, tmp_path, capfd, monkeypatch):
    train.train(tiny_cfg(ws, tmp_path, max_steps=2, eval_docs=0))
    before = listing(tmp_path)
    code, err = run_main(train_argv(ws, tmp_path, "--init_from=resume", "--max_steps=3", "--Lt=256"), capfd,
                         monkeypatch)
    assert code == 1 and err.strip().splitlines()[-1] == (
        f"error: --Lt=256 differs from the run being resumed (Lt = 128 in {tmp_path}/ckpt_0000002): resume with its "
        "settings, or start another out_dir"), err
    assert listing(tmp_path) == before
    code, err = run_main(train_argv(ws, tmp_path, "--init_from=resume", "--max_steps=3"), capfd, monkeypatch)
    assert code == 0, err
    assert latest_checkpoint(tmp_path) == str(tmp_path / "ckpt_0000003")


@pytest.mark.parametrize("signum,status,said", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "stopped by SIGTERM")], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_checkpoints_its_step_and_says_how_to_resume(ws, tmp_path, capfd, monkeypatch, signum, status, said):
    """SIGINT (Ctrl-C) or SIGTERM (kill, docker stop, timeout, a scheduler) to a real `python train.py` mid-run: exit
    status 130 or 143, one last line naming the step and how to go on, a finite checkpoint of that step (none was due:
    ckpt_interval=0), and resuming from it finishes the run."""
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, *train_argv(ws, out, "--max_steps=1000", "--ckpt_interval=0")], cwd=ROOT,
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("step 3/"):
            break
    p.send_signal(signum)
    _, err = p.communicate(timeout=120)
    assert p.returncode == status and "Traceback" not in err, err[-2000:]
    last = re.fullmatch(rf"{said} at step (\d+); --init_from=resume continues from {re.escape(str(out))}",
                        err.strip().splitlines()[-1])
    assert last and int(last[1]) >= 3, err[-2000:]
    step = int(last[1])
    assert latest_checkpoint(out) == str(out / f"ckpt_{step:07d}") and not (out / "final").exists()
    assert load_tensors(out / f"ckpt_{step:07d}" / "train_state.pt")["step"] == step
    assert all(w.isfinite().all() for w in load_file(out / f"ckpt_{step:07d}" / "model.safetensors").values())
    code, err = run_main(train_argv(ws, out, "--init_from=resume", f"--max_steps={step + 2}"), capfd, monkeypatch)
    assert code == 0, err
    from_pretrained(out / "final")


# ----------------------------------------------------------------------------- nothing unsafe loaded
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol,why", [(None, "GLOBAL posix.mkdir"), (2, "GLOBAL posix.mkdir"),
                                          (4, "Unsupported operand")])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, protocol, why):
    """torch.save's zip format (read with mmap) and plain pickles (read whole): both refused, nothing run."""
    import pickle  # only to write the hostile files
    path = tmp_path / "pytorch_model.bin"
    if protocol is None:
        torch.save({"w": Evil(tmp_path / "ran_code")}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"w": Evil(tmp_path / "ran_code")}, f, protocol=protocol)
    with pytest.raises(ValueError, match=r"refused or unreadable as a weights-only checkpoint \(UnpicklingError: "
                                         f".*{why}"):
        load_tensors(path)
    assert not (tmp_path / "ran_code").exists()


def test_loaders_are_weights_only_everywhere():
    """Every torch.load passes weights_only=True, no np.load allows pickles, and nothing else unpickles."""
    sources = {p: open(os.path.join(ROOT, p)).read() for p in
               [f for f in os.listdir(ROOT) if f.endswith(".py")] + ["data/" + f for f in os.listdir(
                   os.path.join(ROOT, "data")) if f.endswith(".py")]}
    calls = [(p, m.start()) for p, s in sources.items() for m in re.finditer(r"\btorch\.load\(", s)]
    assert calls, "the scan found no torch.load at all: it is looking in the wrong place"
    for p, start in calls:
        depth, end = 0, start
        for end, ch in enumerate(sources[p][start:], start):  # to the call's closing parenthesis
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if ch == ")" and depth == 0:
                break
        assert "weights_only=True" in sources[p][start:end], f"{p}: {sources[p][start:end + 1]}"
    for p, s in sources.items():
        assert not re.search(r"allow_pickle\s*=\s*True|\bpickle\.loads?\(|\bimport pickle|\bdill\b|"
                             r"\bjoblib\b|\bcloudpickle\b", s), p


# ----------------------------------------------------------------------------- prepare.py: never half a split
def test_a_failed_prepare_leaves_the_previous_split_whole(ws, tmp_path, monkeypatch):
    tok = load_tokenizer("web-bpe4k")
    prepare.write_split([("a", "In the beginning God created the heaven and the earth.")], tok, tmp_path, "train")
    old = listing(tmp_path)

    def fail(*a, **k):
        raise OSError("No space left on device")
    monkeypatch.setattr(json, "dump", fail)  # the last of the three files
    with pytest.raises(OSError):
        prepare.write_split([("b", "Jesus wept. " * 50)], tok, tmp_path, "train")
    assert {k: v for k, v in listing(tmp_path).items() if not k.endswith(".tmp")} == old
    data = prepare.TokenDataset(tmp_path, "train")
    assert tok.decode(data.doc(0)[1:]) == "In the beginning God created the heaven and the earth."
