"""When the machine fails a run -- a full disk, SIGTERM, memory that runs out -- or a start fails: one line that says
what happened and what was kept, the last good checkpoint still the latest, no half-written or temporary file, and
the folder usable again. Each fault is a real one, in a child process: a file-size limit (RLIMIT_FSIZE: the write
fails with EFBIG, as a full disk's fails with ENOSPC, since the scripts ignore SIGXFSZ), a signal, an address-space
limit (RLIMIT_AS)."""
import fcntl
import glob
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import prepare
import reproduce
import train
from checkpoint import from_pretrained, latest_checkpoint, load_tensors
from eval import EvalConfig, plots_dir
from test_reliability import ENV, ROOT, listing, run_main, tiny_cfg, train_argv, ws  # noqa: F401 (a fixture)
from tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def limited(argv, file_size=None, memory=None, timeout=120):
    """`python ARGV` with a file-size limit, or with `memory` bytes of address space above what the child holds once
    torch is imported (a CUDA build maps far more than a CPU one): the CompletedProcess."""
    if memory:
        argv = ["-c", "import resource, runpy, sys, torch, util; n = util.proc_status('VmSize') + " + str(memory) +
                "; resource.setrlimit(resource.RLIMIT_AS, (n, n)); sys.argv = " + repr(list(map(str, argv))) +
                "; runpy.run_path(sys.argv[0], run_name='__main__')"]
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))) if file_size else None
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


def last_line(r):
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r.stderr.strip().splitlines()[-1]


def temporaries(folder):
    """Files and folders a write left behind under a temporary name (the run's .lock is its own)."""
    return [os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder) for n in dirs + files
            if n.startswith(".") and n != ".lock"]


# ----------------------------------------------------------------------------- a full disk
def test_a_full_disk_keeps_the_last_checkpoint_and_names_the_file(ws, tmp_path, capfd, monkeypatch):
    """train_state.pt (5 MB) past a 4 MB file-size limit, model.safetensors (2.6 MB) within it: the run ends with one
    line naming the file, the cause and the last good checkpoint, which is still `latest` and loads; nothing of the
    failed checkpoint is left, the log holds whole lines only, and a resume once there is room continues."""
    out = tmp_path / "run"
    train.train(tiny_cfg(ws, tmp_path / "first", max_steps=1, eval_docs=0))  # this process keeps its lock: a copy
    shutil.copytree(tmp_path / "first", out, ignore=shutil.ignore_patterns(".lock"))
    r = limited(train_argv(ws, out, "--init_from=resume", "--max_steps=3"), file_size=4_000_000)
    assert r.returncode == 1 and last_line(r) == (f"error: {out}/ckpt_0000002/train_state.pt: could not be written "
                                                  f"(File too large); the last good checkpoint is {out}/ckpt_0000001")
    assert latest_checkpoint(out) == str(out / "ckpt_0000001") and temporaries(out) == []
    assert sorted(p for p in os.listdir(out) if "ckpt" in p) == ["ckpt_0000001"]
    assert load_tensors(out / "ckpt_0000001" / "train_state.pt")["step"] == 1
    from_pretrained(out / "ckpt_0000001")
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == [1, 2]
    code, err = run_main(train_argv(ws, out, "--init_from=resume", "--max_steps=3"), capfd, monkeypatch)
    assert code == 0, err
    assert latest_checkpoint(out) == str(out / "ckpt_0000003")


def test_a_full_disk_leaves_the_prepared_split_and_the_figure_that_were_there(tmp_path):
    """prepare.py's train.bin (1.5 MB) and pose.py's figure (70 kB) past a file-size limit: one line naming the file;
    the split and the figure that were there are untouched, and no temporary is left."""
    tok = load_tokenizer("web-bpe4k")
    prepare.write_split([("a", "In the beginning God created the heaven and the earth.")], tok, tmp_path, "train")
    (tmp_path / "coverage.png").write_bytes(b"the figure that was there")
    before = listing(tmp_path)
    r = limited(["prepare.py", f"--out={tmp_path}"], file_size=1_000_000)
    assert r.returncode == 2 and last_line(r) == (f"prepare.py: error: {tmp_path}/train.bin: could not be written "
                                                  "(File too large)")
    r = limited(["pose.py", "--Lc=8", "--Lt=32", "--n_samples=10", f"--out={tmp_path / 'coverage.png'}"],
                file_size=20_000)
    assert r.returncode == 1 and last_line(r) == f"error: {tmp_path}/coverage.png: could not be written (File too large)"
    assert listing(tmp_path) == before and temporaries(tmp_path) == []
    assert prepare.TokenDataset(tmp_path, "train").meta["n_docs"] == 1


# ----------------------------------------------------------------------------- SIGTERM
def test_sigterm_to_reproduce_stops_its_runs_at_a_checkpoint_and_names_them(tmp_path):
    """SIGTERM to `python reproduce.py` while its two train.py children run: both get it (each in a session of its
    own, so a terminal's Ctrl-C too reaches them once), write a checkpoint of their step and stop; reproduce.py waits
    for them, names them and the runs not started, and exits 143. No child is left holding its run's lock, and each
    stopped run is one reproduce.py resumes."""
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{reproduce.MARKS[0]}\nold\n{reproduce.MARKS[1]}\n")
    runs = tmp_path / "runs"
    p = subprocess.Popen([sys.executable, "reproduce.py", "--quick=true", "--quick_steps=1000", "--batch_size=2",
                          "--workers=2", f"--runs_dir={runs}", f"--out={tmp_path / 'results'}",
                          f"--plots={tmp_path / 'plots'}", f"--readme={readme}"], cwd=ROOT, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:  # both children past their start
        logs = glob.glob(str(runs / "*" / "seed1337" / "stdout.txt"))
        if len(logs) == 2 and all("training into" in open(f).read() for f in logs):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "Traceback" not in err, err[-3000:]
    last = re.fullmatch(r"stopped by SIGTERM: train (\S+) seed 1337, train (\S+) seed 1337 stopped \(a run at a "
                        r"checkpoint of its step\), 2 not started; finished runs and evaluations are kept, and python "
                        r"reproduce\.py continues \(it resumes a stopped run from its checkpoint\)",
                        err.strip().splitlines()[-1])
    assert last, err[-3000:]
    cfg = reproduce.ReproConfig(quick=True, steps=1000, batch_size=2)
    for name in last.groups():
        run = runs / name / "seed1337"
        with open(run / ".lock") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a child still held it
        step = load_tensors(os.path.join(latest_checkpoint(run), "train_state.pt"))["step"]
        assert (run / "stdout.txt").read_text().strip().splitlines()[-1] == (
            f"stopped by SIGTERM at step {step}; --init_from=resume continues from {run}")
        args = reproduce.train_args(cfg, next(r for r in reproduce.RUNS if r.name == name), 1337, str(run))
        assert reproduce.run_state(str(run), args) == "resume"


# ----------------------------------------------------------------------------- memory, and a start that failed
def test_a_batch_beyond_memory_is_one_line_and_the_same_folder_starts_again(ws, tmp_path, capfd, monkeypatch):
    """8192 rows of 32 tokens (about 5 GB of activations) with 1.5 GiB of address space to spare: the CPU
    allocator's refusal ends the run with one line naming batch_size, the window and the memory asked for. The
    folder, holding only the log of that failed start, takes the command again with a batch that fits (resume says
    why it cannot)."""
    out = tmp_path / "run"
    r = limited(train_argv(ws, out, "--batch_size=8192", "--max_steps=2"), memory=3 * 2**29)
    assert r.returncode == 1 and re.fullmatch(
        r"error: out of memory in step 1, batch_size=8192 rows of Lc=32 tokens \(asked for \d+\.\d\d GiB more\): lower "
        r"--batch_size \(a higher --grad_accum keeps the batch\) or set --grad_checkpointing=true; stopped, the last "
        r"good checkpoint is none \(no checkpoint was written before\)", last_line(r)), r.stderr[-3000:]
    assert sorted(os.listdir(out)) == [".lock", "log.jsonl"]
    code, err = run_main(train_argv(ws, out, "--init_from=resume", "--max_steps=2"), capfd, monkeypatch)
    assert code == 1 and err.strip().splitlines()[-1] == (
        f"error: --init_from=resume: {out} has no checkpoint (its run stopped before the first): start it again "
        "without --init_from=resume"), err
    code, err = run_main(train_argv(ws, out, "--max_steps=2"), capfd, monkeypatch)
    assert code == 0, err
    from_pretrained(out / "final")


def test_resume_without_latest_takes_the_newest_complete_checkpoint(ws, tmp_path, capfd, monkeypatch):
    """`latest` gone (a crash right after a first checkpoint's rename, or a hand), a newer checkpoint cut short: the
    resume takes the newest complete one and says so."""
    out = tmp_path / "run"
    train.train(tiny_cfg(ws, out, max_steps=2, eval_docs=0, keep_checkpoints=2))
    os.remove(out / "latest")
    shutil.copytree(out / "ckpt_0000002", out / "ckpt_0000003")
    os.truncate(out / "ckpt_0000003" / "train_state.pt", 1000)
    code, err, stdout = run_main(train_argv(ws, out, "--init_from=resume", "--max_steps=4"), capfd, monkeypatch,
                                 stdout=True)
    assert code == 0, err
    assert f"{out}/latest is missing: resuming from the newest complete checkpoint there" in stdout
    assert f"resumed from {out}/ckpt_0000002 at step 2" in stdout
    assert latest_checkpoint(out) == str(out / "ckpt_0000004")


# ----------------------------------------------------------------------------- eval.py's outputs
def test_an_evaluation_never_writes_over_another(ws, tmp_path, capfd, monkeypatch):
    """By default results and figures go to a folder of their own, not the README's plots/; a second evaluation into a
    folder that holds one is refused naming its models, as is one while another holds the folder's lock."""
    cfg = EvalConfig()
    assert plots_dir(cfg) == cfg.out == "out/eval"
    out = tmp_path / "eval"
    argv = ["eval.py", f"--models={ws / 'good'}", f"--data={ws / 'tok'}", "--lengths=32", "--max_tokens=64",
            "--passkey_trials=0", f"--out={out}"]
    code, err = run_main(argv, capfd, monkeypatch)
    assert code == 0, err
    assert {"ppl.json", "ppl.md", "ppl.png"} <= set(os.listdir(out)) and temporaries(out) == []
    before = listing(out)
    code, err = run_main(argv[:1] + [f"--models=other={ws / 'good'}"] + argv[2:], capfd, monkeypatch)
    assert code == 1 and err.strip().splitlines()[-1] == (f"error: {out} holds an earlier evaluation of good "
                                                          f"({out}/ppl.json): choose another --out, or remove it"), err
    assert listing(out) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242")
        lock.flush()
        code, err = run_main(argv[:-1] + [f"--out={busy}"], capfd, monkeypatch)
    assert code == 1 and err.strip().splitlines()[-1] == (f"error: {busy} is in use by another evaluation (pid 4242); "
                                                          "wait for it, or choose another --out"), err
    assert os.listdir(busy) == [".lock"]


def test_weights_are_checked_before_anything_is_evaluated(ws, tmp_path, capfd, monkeypatch):
    """A second model with a NaN weight is refused before the first is evaluated (eval.py loads every model first)."""
    nan = tmp_path / "nan"
    shutil.copytree(ws / "good", nan)
    from safetensors.torch import load_file, save_file
    weights = load_file(nan / "model.safetensors")
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, nan / "model.safetensors")
    code, err = run_main(["eval.py", f"--models={ws / 'good'},{nan}", f"--data={ws / 'tok'}", "--lengths=32",
                          "--max_tokens=64", "--passkey_trials=0", f"--out={tmp_path / 'out'}"], capfd, monkeypatch)
    assert code == 1 and err.strip().splitlines()[-1] == f"error: {nan}: its weights are not all finite", err
    assert "perplexity" not in err and not (tmp_path / "out" / "ppl.json").exists()
    assert torch.isnan(load_file(nan / "model.safetensors")["model.norm.weight"][0])
