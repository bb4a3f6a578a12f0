"""reproduce.py: the paper's comparison in miniature, on CPU, with seeds: what the skip adds to interpolation, how far
it reaches (the paper's 64× and beyond), the paper's other experiments, and how sure the numbers are.

    python reproduce.py                 # every run and check (see the README for its measured time on 2 cores)
    python reproduce.py --quick=true    # the 2 × 2 at 8·Lc, one seed, fewer steps and tokens: about 4 minutes
    python reproduce.py --pretrain=true --base=models/my_base   # first pretrain a base (+30 min) into a new folder

One tiny pretrained base (L0 = Lc = 128) is fine-tuned on 128-token windows, every run on the base's own mixture
(configs/tiny_pose.toml: the books, half of the rows a passkey prompt, at the positions PoSE drew) for the same
steps and rows:
- the 2 × 2 that says what each part of PoSE does, at Lt = 8·Lc = 1024: positions plain (0 … 127) or skipped
  (PoSE, N = 2) × RoPE scaling none or the headline's PoSE-YaRN (s = 8, beta_fast 4), `seeds` seeds each but the
  two with PoSE-YaRN (PoSE and interpolation only), `long_seeds` each, compared by an exact permutation test; and
  PoSE with this project's variant of the passkey rows (the skip moved between key and question), `seeds` seeds;
- the paper's 64×: PoSE and interpolation only (N = 1) with Lt = 64·Lc = 8192 (s = 64), `long_seeds` seeds each,
  compared by the same test;
- the paper's other experiments: N = 3 chunks (Table 5) at 8× (one seed) and 64× (`seeds` seeds); PoSE at 64×
  with linear, fixed NTK and transformers' YaRN (Figure 4 / Table 2, one seed each); perplexity every
  `track_every` steps for PoSE, interpolation only and Full-length (Figure 3(c)); PoSE at Lt = 256·Lc = 32768;
- further rows at 8·Lc, one seed each: PoSE with linear interpolation, PoSE-YaRN with YaRN's beta_fast 32,
  RandPos, and Full-length (1024-token windows: 8× the tokens of every other run).
Then perplexity (at 8·Lc the paper's sliding window; past it the loss at every position of long windows, whose
running mean is the perplexity at each shorter length), passkey retrieval on keys farther back than Lc, for every
model; means and spreads over seeds, 95% intervals on every rate, and the paper's claims checked with them.
Runs go `workers` at a time, one CPU thread each, as separate `python train.py` / `python eval.py` processes (so
each run's peak memory is its own); every command is printed and every process's output kept in its run folder.
A finished run or evaluation whose settings match is reused, an unfinished one resumed, so an interrupted
reproduce.py continues where it stopped; a run folder made with other settings is refused, never overwritten.
Writes results/{summary.json, table.md, checks.md}, plots/, and the README's results section.
"""
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

import plots
from checkpoint import from_pretrained, latest_checkpoint, load_tensors, save_pretrained
from config import non_negative, parse_config, positive, writable
from eval import trials_per_depth
from train import TrainConfig
from util import SIGNALS, atomic_open, exit_status, markdown, on_signals, signal_name

Lc, Lt, Lt64, Lt256 = 128, 1024, 8192, 32768
SEED0 = 1337  # the first seed; the others follow it
HERE = os.path.dirname(os.path.abspath(__file__))
MARKS = ("<!-- results: written by reproduce.py -->", "<!-- /results -->")
HEADLINE = "PoSE-YaRN β4"  # configs/tiny_pose.toml's scaling: the official code's revised YaRN, beta_fast 4
SHORT = {"none": "none", HEADLINE: "yarnpose4", "PoSE-YaRN β32": "yarnpose32", "linear": "linear", "NTK": "ntk",
         "YaRN β4": "yarn4"}  # the scalings as run names spell them


@dataclass
class Run:
    positions: str     # plain (0 … Lc-1) | pose (skipped, N = 2) | pose3 (N = 3) | posebetween (N = 2, the passkey
                       # rows' skip moved between key and question) | randpos | full (Lt-token windows)
    scaling: str       # the RoPE scaling, as the tables name it
    Lt: int
    overrides: dict = field(default_factory=dict)  # of configs/tiny_pose.toml
    seeds: str = "seeds"  # how many seeds: ReproConfig's "seeds" or "long_seeds", or "one" (the first only)
    track: bool = False   # the first seed's run is also evaluated every track_every steps (Figure 3(c))

    @property
    def name(self):  # what it is: positions, scaling, target length
        return f"{self.positions}_{SHORT[self.scaling]}_{self.Lt // 1024}k"


RUNS = [  # the 2 × 2 first, the passkey rows' variant, the paper's 64×, its other experiments, then further rows
    Run("plain", "none", Lt, {"method": "plain", "rope_type": "none"}),
    Run("pose", "none", Lt, {"rope_type": "none"}),
    Run("plain", HEADLINE, Lt, {"method": "plain"}, seeds="long_seeds", track=True),
    Run("pose", HEADLINE, Lt, seeds="long_seeds", track=True),
    Run("posebetween", HEADLINE, Lt, {"passkey_skip": "between"}),
    Run("pose", HEADLINE, Lt64, {"Lt": Lt64}, seeds="long_seeds"),
    Run("plain", HEADLINE, Lt64, {"method": "plain", "Lt": Lt64}, seeds="long_seeds"),
    Run("pose3", HEADLINE, Lt, {"num_chunks": 3}, seeds="one"),
    Run("pose3", HEADLINE, Lt64, {"num_chunks": 3, "Lt": Lt64}),
    Run("pose", "linear", Lt64, {"rope_type": "linear", "Lt": Lt64}, seeds="one"),
    Run("pose", "NTK", Lt64, {"rope_type": "ntk", "Lt": Lt64}, seeds="one"),
    Run("pose", "YaRN β4", Lt64, {"rope_type": "yarn", "Lt": Lt64}, seeds="one"),
    Run("pose", HEADLINE, Lt256, {"Lt": Lt256}, seeds="one"),
    Run("pose", "linear", Lt, {"rope_type": "linear"}, seeds="one"),
    Run("pose", "PoSE-YaRN β32", Lt, {"yarn_beta_fast": 32.0}, seeds="one"),
    Run("randpos", HEADLINE, Lt, {"method": "randpos"}, seeds="one"),
    Run("full", HEADLINE, Lt, {"method": "full"}, seeds="one", track=True),
]
TWO_BY_TWO = [r.name for r in RUNS[:4]]
PLAIN, POSE_NONE, SCALED, POSE = TWO_BY_TWO
BETWEEN, POSE64, SCALED64, POSE3, POSE3_64 = (r.name for r in RUNS[4:9])
SCALINGS64 = [r.name for r in RUNS[9:12]]  # PoSE at 64·Lc with linear, NTK, transformers' YaRN
POSE256 = RUNS[12].name
LINEAR, BETA32, RANDPOS, FULL = (r.name for r in RUNS[13:])
TRACKED = [r.name for r in RUNS if r.track]
LONG = {"64x": (Lt, 2 * Lt, 4 * Lt, Lt64), "256x": (Lt64, 2 * Lt64, Lt256)}  # the lengths read off the long windows


@dataclass
class ReproConfig:
    base: str = "models/tiny_base"   # the pretrained base, a Hugging Face folder (the shipped one by default)
    pretrain: bool = False           # first pretrain a base into --base (configs/tiny_pretrain*.toml); it must not exist
    quick: bool = False              # only the 2 × 2 at 8·Lc, one seed, and the quick_* settings below
    seeds: int = 3                   # seeds of the 2 × 2's unscaled rows, the passkey variant, N = 3 at 64× (1337, …)
    long_seeds: int = 7              # seeds of PoSE and interpolation only at 8× and 64×; the further rows get one
    steps: int = 200                 # fine-tuning steps of every run
    batch_size: int = 16             # rows per step of every run
    eval_tokens: int = 4096          # 8·Lc perplexity on the first eval_tokens tokens of each held-out book
    long_tokens: int = 16384         # 64·Lc: windows of 8192 tokens over the first long_tokens tokens of each book
    far_tokens: int = 32768          # 256·Lc: windows of 32768 tokens over the first far_tokens tokens of each book
    passkey_trials: int = 50         # per length and seed: keys farther back than Lc (at Lc: inside the window)
    track_every: int = 25            # Figure 3(c): steps between evaluations of the tracked runs ...
    track_tokens: int = 2048         # ... on the first track_tokens tokens of each held-out book
    quick_steps: int = 60            # --quick=true: steps (a minute a run on one thread of a 2-core laptop)
    quick_eval_tokens: int = 2048    # ... tokens per book
    quick_passkey_trials: int = 20   # ... trials per length
    workers: int = 2                 # processes at a time, each with one CPU thread
    runs_dir: str = ""               # the runs' folders; "": out/repro, or out/repro_quick with --quick=true
    out: str = "results"             # tables and JSON
    plots: str = "plots"             # figures
    readme: str = "README.md"        # whose results section (between its markers) is rewritten

    def check(self):
        positive(self, "seeds", "long_seeds", "steps", "batch_size", "eval_tokens", "long_tokens", "far_tokens",
                 "track_every", "quick_steps", "quick_eval_tokens", "workers")
        non_negative(self, "passkey_trials", "quick_passkey_trials")
        for name, least in (("eval_tokens", Lt), ("quick_eval_tokens", Lt), ("track_tokens", Lt),
                            ("long_tokens", Lt64), ("far_tokens", Lt256)):
            if getattr(self, name) < least:
                raise ValueError(f"--{name}={getattr(self, name)}: expected at least {least} (a window)")
        if self.pretrain and os.path.exists(self.base):
            raise ValueError(f"--base={self.base} exists: --pretrain=true writes a new base, so name a new folder "
                             "(or remove this one yourself)")
        if not self.pretrain and not os.path.isfile(os.path.join(self.base, "model.safetensors")):
            raise ValueError(f"--base={self.base}: no model.safetensors there (--pretrain=true makes a base)")
        writable(self, "out", "plots")  # what is written at the end is checked before any run starts
        writable(self, "readme", file=True)
        readme_section(self.readme)


# ----------------------------------------------------------------------------- running jobs
class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, once the jobs it stopped have stopped: which they were, and how to go on."""


class Jobs:
    """Commands run `workers` at a time, one CPU thread each, with a line per start and end on the console.

    Each job runs in a session of its own, so that Ctrl-C at the terminal reaches it once, through stop(), which
    main() makes the handler of SIGINT and SIGTERM: the signal is passed on to every running job (train.py writes a
    checkpoint of its step and stops), no further job starts, and once the running ones have stopped run() raises
    Stopped, naming them. A second signal is passed on too (the jobs stop at once, without that checkpoint)."""

    def __init__(self, workers, clock=None):
        self.workers, self.env = workers, os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.clock = clock  # told of every finished job
        self.running, self.stopped, self.left, self.signum, self.failed = {}, [], 0, None, False
        self.lock = threading.RLock()  # reentrant: a second signal's handler may interrupt the first's

    def stop(self, signum, frame=None):
        """The handler of SIGINT and SIGTERM (see the class); with no job running, Stopped at once."""
        SIGNALS.append(signum)
        with self.lock:
            self.signum = signum
            for p in self.running.values():
                p.send_signal(signum)
            idle = not self.running
        if idle:
            raise Stopped(self.stopped_line())

    def stopped_line(self):
        """What a signal stopped, and how to go on."""
        why = "interrupted" if signal_name() == "SIGINT" else f"stopped by {signal_name()}"
        stopped = (f"{', '.join(self.stopped)} stopped (a run at a checkpoint of its step)" if self.stopped else
                   "no job was running") + (f", {self.left} not started" if self.left else "")
        return (f"{why}: {stopped}; finished runs and evaluations are kept, and python reproduce.py continues "
                "(it resumes a stopped run from its checkpoint)")

    def run(self, jobs):
        """jobs: [(label, argv, log file)]; stops at the first failure, naming its log, or at a signal (stop())."""
        t0, done = time.time(), []

        def one(job):
            label, argv, log = job
            with self.lock:  # a signal now finds the job running, or keeps it from starting
                if self.signum is not None:
                    self.left += 1
                if self.signum is not None or self.failed:
                    return
                print(f"$ {' '.join(argv)}  > {log}", flush=True)
                f = open(log, "w")
                p = self.running[label] = subprocess.Popen(argv, cwd=HERE, env=self.env, stdout=f,
                                                           stderr=subprocess.STDOUT, start_new_session=True)
            start = time.time()
            with f:
                rc = p.wait()
            with self.lock:
                del self.running[label]
                if rc and self.signum is not None:
                    self.stopped.append(label)
                    return
                self.failed = self.failed or bool(rc)
            if rc:
                raise RuntimeError(f"{label} failed (exit status {rc}): {tail(log)} (all of it: {log})")
            done.append(label)
            if self.clock:
                self.clock.tick()
            print(f"[{len(done)}/{len(jobs)}] {label}: {(time.time() - start) / 60:.1f} min "
                  f"({(time.time() - t0) / 60:.1f} min so far)", flush=True)

        with ThreadPoolExecutor(self.workers) as pool:
            for f in [pool.submit(one, j) for j in jobs]:
                f.result()
        if self.signum is not None:
            raise Stopped(self.stopped_line())


class Clock:
    """The wall-clock minutes a runs folder's training and evaluation took, summed over the invocations that worked
    in it (minutes.json there), written after every finished job: a full run stopped and resumed reports the time
    all of it took, less what the stopped jobs had done; an invocation that reuses everything adds nothing."""

    def __init__(self, runs_dir):
        self.path = os.path.join(runs_dir, "minutes.json")
        self.before = {"training": 0.0, "evaluation": 0.0, "invocations": 0}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.before |= json.load(f)
        self.now, self.phase, self.t0 = dict(self.before), None, None
        self.lock = threading.Lock()

    def start(self, phase):
        self.phase, self.t0 = phase, time.time()

    def tick(self):
        with self.lock:
            self.now[self.phase] = self.before[self.phase] + (time.time() - self.t0) / 60
            self.now["invocations"] = self.before["invocations"] + 1
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with atomic_open(self.path) as f:
                json.dump(self.now, f)


def tail(path):
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else "no output"


# ----------------------------------------------------------------------------- training
def train_args(cfg, run, seed, out_dir):
    """The overrides of configs/tiny_pose.toml for one run. A tracked run's first seed (not in --quick) evaluates
    itself every track_every steps, from step 0, on the first track_tokens tokens of the five held-out books: the
    same sample for every tracked run (evaluation reads no random numbers: the run trains as it would without)."""
    args = {"init_from": cfg.base, "max_steps": cfg.steps, "batch_size": cfg.batch_size, "seed": seed,
            "out_dir": out_dir, "eval_interval": 0, "eval_docs": 0, "ckpt_interval": 50}
    if run.track and seed == SEED0 and not cfg.quick:
        args |= {"eval_interval": cfg.track_every, "eval_docs": 5, "eval_tokens": cfg.track_tokens}
    return args | run.overrides


def run_state(out_dir, args):
    """'done' (final/ and a last checkpoint of these settings), 'resume' (a checkpoint of them), 'new' (nothing
    there), or a ValueError: a run folder made with other settings is never overwritten."""
    wanted = asdict(parse_config(TrainConfig, [os.path.join(HERE, "configs", "tiny_pose.toml")]
                                 + [f"--{k}={v}" for k, v in args.items()]))
    latest = latest_checkpoint(out_dir)
    if latest is None:  # a start that failed before its first checkpoint leaves its output, lock and log: new
        if os.path.isdir(out_dir) and any(n not in ("stdout.txt", ".lock", "log.jsonl") for n in os.listdir(out_dir)):
            raise ValueError(f"{out_dir} holds files of another run: remove it or choose another --runs_dir")
        return "new"
    state = load_tensors(os.path.join(latest, "train_state.pt"))
    differ = [k for k in wanted if k != "init_from" and state["config"].get(k) != wanted[k]]
    if differ:
        raise ValueError(f"{out_dir} holds a run with other settings ({', '.join(differ)}): remove it or choose "
                         "another --runs_dir")
    finished = state["step"] == wanted["max_steps"] and os.path.isdir(os.path.join(out_dir, "final"))
    return "done" if finished else "resume"


def training_jobs(cfg, plan):
    """The train.py commands still to run (longest first), checking every run folder before any starts."""
    jobs = []
    for run, seed, out_dir in plan:
        args = train_args(cfg, run, seed, out_dir)
        state = run_state(out_dir, args)
        if state == "done":
            continue
        os.makedirs(out_dir, exist_ok=True)
        args |= {"init_from": "resume"} if state == "resume" else {}
        jobs.append((f"train {run.name} seed {seed}", [sys.executable, "train.py", "configs/tiny_pose.toml"]
                     + [f"--{k}={v}" for k, v in args.items()], os.path.join(out_dir, "stdout.txt")))
    return sorted(jobs, key=lambda j: "--method=full" not in j[1])  # the longest first: the others fill around it


def make_base(cfg, jobs):
    """Pretrain in two stages (a quarter, then half of the rows passkey prompts) and write the result to --base in
    bfloat16 (8 MB), as LLaMA is shipped, with its tokenizer. Each stage's folder is reused or resumed as a run's."""
    for stage in ("tiny_pretrain", "tiny_pretrain_passkey"):
        stage_cfg = parse_config(TrainConfig, [f"configs/{stage}.toml"])
        if not os.path.isdir(os.path.join(stage_cfg.out_dir, "final")):
            resume = ["--init_from=resume"] if latest_checkpoint(stage_cfg.out_dir) else []
            os.makedirs(stage_cfg.out_dir, exist_ok=True)
            jobs.run([(stage, [sys.executable, "train.py", f"configs/{stage}.toml", *resume],
                       os.path.join(stage_cfg.out_dir, "stdout.txt"))])
    final = os.path.join(stage_cfg.out_dir, "final")
    tok = [os.path.join(final, f) for f in os.listdir(final) if f.endswith(".tiktoken")]
    save_pretrained(from_pretrained(final), cfg.base, dtype=torch.bfloat16, tokenizer_files=tok)


# ----------------------------------------------------------------------------- evaluation
DEPTHS = ",".join(str(d / 10) for d in range(11))  # key depths 0, 0.1, … 1: keys from ~40 to L − 50 tokens back


def eval_args(cfg, kind):
    """eval.py's options: at 8·Lc the paper's sliding window with stride Lc and passkeys (teacher-forced; "8x+gen"
    also greedy generation, to count where the two disagree); at 64·Lc ("64x") and 256·Lc ("256x") the loss at every
    position of windows of Lt64 / Lt256 tokens laid end to end over the first long_tokens / far_tokens tokens of each
    book (read_eval turns it into the perplexity at each shorter length)."""
    if kind.startswith("8x"):
        return {"lengths": f"{Lc},{2 * Lc},{4 * Lc},{Lt}", "stride": Lc, "max_tokens": cfg.eval_tokens,
                "position_len": Lt, "passkey_trials": cfg.passkey_trials, "passkey_far": Lc, "passkey_depths": DEPTHS,
                "passkey_mode": "both" if kind == "8x+gen" else "teacher"}
    L, tokens = (Lt64, cfg.long_tokens) if kind == "64x" else (Lt256, cfg.far_tokens)
    return {"lengths": str(L), "stride": L, "max_tokens": tokens, "position_len": L, "passkey_trials": 0}


def evaluation_jobs(cfg, models, retrained):
    """eval.py commands for [(label, model folder, kind, out folder)], skipping those already done with the same
    options (their request.json) on a model not trained again since (`retrained`: the run folders trained now)."""
    jobs = []
    for label, path, kind, out in models:
        args = eval_args(cfg, kind) | {"models": f"m={path}", "out": out, "plots": ""}
        request, results = os.path.join(out, "request.json"), os.path.join(out, "ppl.json")
        if os.path.exists(results) and os.path.exists(request) and os.path.dirname(path) not in retrained:
            with open(request) as f:
                if json.load(f) == args:
                    continue
        os.makedirs(out, exist_ok=True)
        if os.path.exists(results):
            os.remove(results)  # this reproduce.py's own, now stale: a new one marks the evaluation finished
        with open(request, "w") as f:
            json.dump(args, f)
        jobs.append((f"evaluate {label} ({kind})", [sys.executable, "eval.py", *(f"--{k}={v}" for k, v in args.items())],
                     os.path.join(out, "stdout.txt")))
    return jobs


def read_eval(out, kind="8x"):
    """One evaluation: {"ppl": {L: ppl}, "position": [loss at each position], "passkey": {L: {depth: acc}},
    "distance": {L: {depth: tokens}}} with int lengths and float depths. For a long evaluation ("64x", "256x") the
    perplexity at each length L of LONG[kind] is exp of the mean loss over positions 0 … L-1 of its windows: each
    window read as a document of its own whose first L tokens are scored (the official code's --truncate)."""
    def load(name):
        path = os.path.join(out, name)
        return json.load(open(path)) if os.path.exists(path) else None
    ppl, pos, keys = load("ppl.json"), load("position_loss.json"), load("passkey.json")
    res = {"ppl": {int(L): v["ppl"] for L, v in ppl["models"]["m"]["ppl"].items()},
           "position": pos["models"]["m"], "windows": pos["protocol"]["windows"]}
    if kind in LONG:
        res["ppl"] = {L: math.exp(float(np.mean(res["position"][:L]))) for L in LONG[kind]}
    if keys:
        res["passkey"] = {int(L): {float(d): a for d, a in c.items()} for L, c in keys["models"]["m"].items()}
        res["distance"] = {int(L): {float(d): n for d, n in c.items()} for L, c in keys["distance"].items()}
        res["trials"] = keys["protocol"]["trials_per_length"]
        res["disagreements"] = keys["disagreements"]["m"]  # None unless scored both ways
        res["scored"] = sum(trials_per_depth(res["trials"], c) * len(c) for c in res["passkey"].values())
    return res


# ----------------------------------------------------------------------------- statistics
@dataclass
class Est:
    """A number with its spread: mean, and (low, high) = mean ∓ sd over seeds, or a 95% interval for a rate."""
    mean: float
    low: float
    high: float
    n: int = 1             # seeds (or trials, for a rate)
    assumed: bool = False  # one seed: the spread is the seeded runs' typical one, not measured

    def __str__(self):
        return f"{self.mean:.2f} ± {(self.high - self.low) / 2:.2f}" + "*" * self.assumed


def over_seeds(values, rel_sd=None):
    """Mean ± sd of per-seed values; with one value, ± the relative sd `rel_sd` of the seeded runs (marked)."""
    m = float(np.mean(values))
    if len(values) > 1:
        sd = float(np.std(values, ddof=1))
        return Est(m, m - sd, m + sd, len(values))
    sd = (rel_sd or 0.0) * m
    return Est(m, m - sd, m + sd, 1, assumed=rel_sd is not None)


def wilson(k, n, z=1.96):
    """The 95% Wilson interval of a rate of k in n (Est, n = trials)."""
    if n == 0:
        return None
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return Est(p, max(0.0, c - h), min(1.0, c + h), n)


def verdict(a, b, factor=1.0):
    """Is a ≤ factor · b? 'PASS' or 'FAIL' when the two sides' spreads do not overlap, else 'no difference at this
    size' (a or b may be plain numbers: no spread)."""
    a, b = (x if isinstance(x, Est) else Est(x, x, x) for x in (a, b))
    if a.high <= factor * b.low:
        return "PASS"
    if a.low > factor * b.high:
        return "FAIL"
    return "no difference at this size"


def compare(a, b, p=None):
    """'x% lower' / 'x% higher' than b, or 'no difference at this size': when p, a permutation test's, is given and
    at least 0.05, else when the spreads overlap (one seed each: no spread to judge by, and said so)."""
    if p >= 0.05 if p is not None else verdict(a, b) == verdict(b, a) == "no difference at this size":
        return f"no difference at this size ({a.mean / b.mean - 1:+.1%})"
    one_seed = " (one seed: no spread to judge it by)" if a.n == b.n == 1 and a.low == a.high else ""
    return f"{abs(a.mean / b.mean - 1):.1%} {'lower' if a.mean < b.mean else 'higher'}{one_seed}"


def permutation_p(a, b):
    """Two-sided exact permutation test of two groups of per-seed perplexities: the share of all C(n, len(a)) ways to
    split the n = len(a) + len(b) values into groups of those sizes whose means of log perplexity differ at least as
    much as the observed groups' do. Exact and free of any assumption about the seeds' distribution; its smallest
    possible value is 2 / C(n, len(a)): 0.1 for 3 seeds against 3, so three seeds cannot reach p < 0.05."""
    x, k = np.log(np.asarray(list(a) + list(b), dtype=float)), len(a)
    total = x.sum()

    def gap(group):
        inside = x[list(group)].sum()
        return abs(inside / k - (total - inside) / (len(x) - k))
    observed = gap(range(k))
    splits = list(itertools.combinations(range(len(x)), k))
    return sum(gap(g) >= observed - 1e-12 for g in splits) / len(splits)


TEST = "; p: exact permutation test on log perplexity, a difference where p < 0.05"


def tested(s, a, b, L):
    """compare()'s words for models a and b at length L, judged by the permutation test and followed by its p where
    both have seeds to test (p < 0.05: a difference); with one seed on a side, by the spreads alone."""
    if min(s[a]["seeds"], s[b]["seeds"]) < 2:
        return compare(s[a]["ppl"][L], s[b]["ppl"][L])
    p = permutation_p(s[a]["per_seed"][L], s[b]["per_seed"][L])
    return f"{compare(s[a]['ppl'][L], s[b]['ppl'][L], p)}, p = {p:.3g}"


def summarize(evals, mems):
    """evals {model: [per-seed read_eval]} -> {model: {"ppl": {L: Est}, "passkey": {L: Est}, ...}}: perplexity
    mean ± sd over seeds (one-seed rows: ± the seeded runs' typical relative sd), passkey pooled over seeds and the
    depths whose key lies farther back than Lc (at Lc: all of them, inside the window), with 95% intervals."""
    rel = {}  # (the evaluation's lengths, length) -> the seeded runs' typical relative sd (root mean square)
    for seeds in evals.values():
        for L in seeds[0]["ppl"] if len(seeds) > 1 else ():
            e = over_seeds([s["ppl"][L] for s in seeds])
            rel.setdefault((tuple(seeds[0]["ppl"]), L), []).append(((e.high - e.low) / 2 / e.mean) ** 2)
    rel = {k: math.sqrt(np.mean(v)) for k, v in rel.items()}
    out = {}
    for name, seeds in evals.items():
        fixed = name.startswith("base")  # one model, not trained here: no seed to vary
        s = {"seeds": len(seeds), "ppl": {L: over_seeds([r["ppl"][L] for r in seeds],
                                                        None if fixed else rel.get((tuple(seeds[0]["ppl"]), L)))
                                          for L in seeds[0]["ppl"]},
             "per_seed": {L: [r["ppl"][L] for r in seeds] for L in seeds[0]["ppl"]}}
        if "passkey" in seeds[0]:
            s["passkey"] = {}
            for L in seeds[0]["passkey"]:
                hits = trials = 0
                for r in seeds:
                    cells = r["passkey"][L]
                    per_depth = trials_per_depth(r["trials"], cells)
                    far = [d for d in cells if L <= Lc or r["distance"][L][d] > Lc]
                    hits += sum(round(cells[d] * per_depth) for d in far)
                    trials += per_depth * len(far)
                s["passkey"][L] = wilson(hits, trials)
        if name in mems:
            s["mem_gib"] = over_seeds(mems[name])
        out[name] = s
    return out


# ----------------------------------------------------------------------------- tables, checks, text
def fmt(e, digits=2):
    """mean ± sd; one seed: the mean alone, or ± the seeded runs' typical spread, marked *."""
    if e is None:
        return "–"
    if e.n == 1 and not e.assumed:
        return f"{e.mean:.{digits}f}"
    return f"{e.mean:.{digits}f} ± {(e.high - e.low) / 2:.{digits}f}{'*' if e.assumed else ''}"


def rate(e):
    return "–" if e is None else f"{e.mean:.0%} [{e.low:.0%}, {e.high:.0%}]"


POSITIONS = {"plain": "plain (0 … 127)", "pose": "PoSE skip (N = 2)", "pose3": "PoSE skip (N = 3)",
             "posebetween": "PoSE, passkey rows' skip between key and question", "randpos": "RandPos",
             "full": "Full-length"}
L8, L64, L256 = (Lc, 2 * Lc, 4 * Lc, Lt), LONG["64x"], LONG["256x"]  # the lengths of each table


def home(name):
    """The evaluation a model's own target length calls for: 8x, 64x or 256x."""
    run = next((r for r in RUNS if r.name == name), None)
    return {Lt: "8x", Lt64: "64x", Lt256: "256x"}[run.Lt] if run else "8x"


def key(name, kind):
    """A model's entry in the results: its name for its own evaluation, name@kind for another (base@64x)."""
    return name if home(name) == kind else f"{name}@{kind}"


def describe(name):
    """(positions, scaling, trained for) of a model's entry (base@64x: the base)."""
    name = name.split("@")[0]
    if name == "base":
        return "–", "none", "–"
    run = next(r for r in RUNS if r.name == name)
    return POSITIONS[run.positions], run.scaling, f"{run.Lt // Lc}·Lc"


def ppl_table(s, names, lengths, extra=()):
    """Perplexity rows: run, positions, scaling, trained for, seeds, one column per length (+ extra columns)."""
    names = [n for n in names if n in s]
    return markdown(["run", "positions", "RoPE scaling", "trained for", "seeds"] + [f"ppl @{L}" for L in lengths]
                    + [h for h, _ in extra],
                    [[f"`{n}`", *describe(n), s[n]["seeds"]] + [fmt(s[n]["ppl"][L]) for L in lengths]
                     + [cell(n) for _, cell in extra] for n in names]) if names else ""


def tables(s):
    """Markdown: the perplexity and passkey tables at 8·Lc, the 64·Lc table and the 256·Lc table."""
    rows8 = ["base"] + [r.name for r in RUNS if r.Lt == Lt]
    ppl = ppl_table(s, rows8, L8, [("peak RSS GiB", lambda n: fmt(s[n]["mem_gib"]) if "mem_gib" in s[n] else "–")])
    keys = markdown(["run", "trials per length (all seeds)", f"inside Lc @{Lc}"] + [f"beyond Lc @{L}" for L in L8[1:]],
                    [[f"`{n}`", s[n]["passkey"][Lt].n] + [rate(s[n]["passkey"].get(L)) for L in L8]
                     for n in rows8 if n in s and "passkey" in s[n]])
    long = ppl_table(s, [key("base", "64x"), key(POSE, "64x"), POSE64, SCALED64, POSE3_64, *SCALINGS64,
                         key(POSE256, "64x")], L64)
    far = ppl_table(s, [key("base", "256x"), key(POSE64, "256x"), POSE256], L256)
    return ppl, keys, long, far


def two_by_two(s):
    """What each factor does, read off the numbers: the 2 × 2 at 8·Lc, the passkey rows' variant and the 64× pair,
    as markdown + text."""
    if not all(n in s for n in TWO_BY_TWO):
        return ""
    at = [Lc, Lt]
    grid = markdown(["at 128 / 1024 tokens", "no RoPE scaling", HEADLINE],
                    [["plain positions", " / ".join(fmt(s[PLAIN]["ppl"][L], 1) for L in at),
                      " / ".join(fmt(s[SCALED]["ppl"][L], 1) for L in at)],
                     ["PoSE skip", " / ".join(fmt(s[POSE_NONE]["ppl"][L], 1) for L in at),
                      " / ".join(fmt(s[POSE]["ppl"][L], 1) for L in at)]])

    def keys(n):
        return (f"keys beyond Lc at {2 * Lc} / {4 * Lc} / {Lt}: " + " / ".join(rate(s[n]["passkey"][L]) for L in L8[1:])
                + f"; inside the window at {Lc}: {rate(s[n]['passkey'][Lc])}")
    seeded = s[POSE]["seeds"] > 1 and s[SCALED]["seeds"] > 1
    lines = [f"- Interpolation alone ({SCALED} against {PLAIN}): at {Lt} tokens "
             f"{compare(s[SCALED]['ppl'][Lt], s[PLAIN]['ppl'][Lt])}; at {Lc}, "
             f"{compare(s[SCALED]['ppl'][Lc], s[PLAIN]['ppl'][Lc])}.",
             f"- The skip alone ({POSE_NONE} against {PLAIN}): at {Lt} {compare(s[POSE_NONE]['ppl'][Lt], s[PLAIN]['ppl'][Lt])}"
             f"; at {Lc}, {compare(s[POSE_NONE]['ppl'][Lc], s[PLAIN]['ppl'][Lc])}.",
             f"- **The skip on top of interpolation** ({POSE} against {SCALED}, {s[POSE]['seeds']} and "
             f"{s[SCALED]['seeds']} seeds{TEST * seeded}): "
             + "; ".join(f"at {L} {tested(s, POSE, SCALED, L)}" for L in L8)
             + f". Passkey, {POSE}: {keys(POSE)}; {SCALED}: {keys(SCALED)}."]
    if BETWEEN in s:
        both = seeded and s[BETWEEN]["seeds"] > 1
        lines.append(f"- **This project's passkey rows with the skip between key and question** ({BETWEEN} against "
                     f"{POSE}, {s[BETWEEN]['seeds']} and {s[POSE]['seeds']} seeds{TEST * both}): "
                     + "; ".join(f"at {L} {tested(s, BETWEEN, POSE, L)}" for L in L8)
                     + f". Passkey, {BETWEEN}: {keys(BETWEEN)}.")
    if POSE64 in s and SCALED64 in s:
        lines.append(f"- **At 64·Lc** ({POSE64} against {SCALED64}, both s = 64, {s[POSE64]['seeds']} and "
                     f"{s[SCALED64]['seeds']} seeds{TEST}): "
                     + "; ".join(f"at {L} {tested(s, POSE64, SCALED64, L)}" for L in L64) + ".")
    return grid + "\n" + "\n".join(lines) + "\n"


# The paper's numbers that the miniature's own tables are read beside (POSE_NOTES.md; LLaMA-7B, Proof-pile or PG-19)
PAPER_TABLE5 = {1: "2.83 / > 10³ (no interpolation: the paper's no-extension row)", 2: "2.95 / 2.60", 3: "2.93 / 2.59"}
PAPER_FIG4 = {"linear": "Table 2: PoSE-linear-128k degrades at the far target (31.18 at 128k)",
              "NTK": "Figure 4: fixed NTK breaks before the target length",
              "YaRN β4": "Figure 4: YaRN extends every model to its target (the paper's YaRN is the revised one)",
              HEADLINE: "Table 2: PoSE-YaRN-128k 9.32 / 10.36 / 10.77 / 11.33 at 32k / 64k / 96k / 128k"}


def table5(s):
    """The paper's Table 5 beside the miniature: chunks N = 1 (interpolation only), 2 and 3, at 8·Lc and 64·Lc."""
    if not all(n in s for n in (SCALED, POSE, POSE3, SCALED64, POSE64, POSE3_64)):
        return ""
    rows = [[f"N = {N}", PAPER_TABLE5[N]] + [" / ".join(fmt(s[n]["ppl"][L], 1) for L in at) + f" ({s[n]['seeds']})"
                                            for n, at in ((a, (Lc, Lt)), (b, (Lt, Lt64)))]
            for N, a, b in ((1, SCALED, SCALED64), (2, POSE, POSE64), (3, POSE3, POSE3_64))]
    return markdown(["chunks", "paper: 2k → 16k, ppl @2k / @16k", f"here 8·Lc: ppl @{Lc} / @{Lt} (seeds)",
                     f"here 64·Lc: ppl @{Lt} / @{Lt64} (seeds)"], rows) + (
        f"\nN = 3 against N = 2 at 64·Lc ({TEST.removeprefix('; ')}): "
        + "; ".join(f"at {L} {tested(s, POSE3_64, POSE64, L)}" for L in L64) + ".\n")


def scalings(s):
    """The paper's Figure 4 / Table 2 beside the miniature: PoSE at 64·Lc under each RoPE scaling."""
    names = [n for n in (*SCALINGS64, POSE64) if n in s]
    return markdown(["RoPE scaling (PoSE, 64·Lc)", "seeds"] + [f"ppl @{L}" for L in L64] + [f"@{Lt64} / @{Lt}",
                                                                                              "the paper"],
                    [[describe(n)[1], s[n]["seeds"]] + [fmt(s[n]["ppl"][L]) for L in L64]
                     + [f"{s[n]['ppl'][Lt64].mean / s[n]['ppl'][Lt].mean:.2f}×", PAPER_FIG4[describe(n)[1]]]
                     for n in names]) if names else ""


def track_table(tracks):
    """Figure 3(c) in numbers: perplexity at Lt on the tracked sample at each evaluated step, per tracked run."""
    if not tracks:
        return ""
    steps = sorted({st for t in tracks.values() for st in t})
    return markdown(["run"] + [f"step {st}" for st in steps],
                    [[f"`{n}`"] + [f"{math.exp(t[st][Lt]):.1f}" if st in t else "" for st in steps]
                     for n, t in tracks.items()])


def checks(s, tracks=None):
    """The paper's claims as rows (claim, verdict, the numbers), each judged with the spreads: 'no difference at
    this size' where the two sides overlap. A claim about a model this run did not train (or, for Figure 3(c), did
    not evaluate during fine-tuning: `tracks`) is marked 'not run'."""
    tracks = tracks or {}
    p = {n: v["ppl"] for n, v in s.items()}
    key_ = {n: v.get("passkey", {}) for n, v in s.items()}
    base64, base256 = key("base", "64x"), key("base", "256x")

    def ratio(name, num, den):  # per-seed ratio of two lengths' perplexities
        return over_seeds([a / b for a, b in zip(s[name]["per_seed"][num], s[name]["per_seed"][den])])

    def vs_base(name, base, L):
        return over_seeds([v / s[base]["per_seed"][L][0] for v in s[name]["per_seed"][L]])

    def below(a, b, lengths, alpha=0.01):  # a below b at every length, by the permutation test
        ps = {L: permutation_p(s[a]["per_seed"][L], s[b]["per_seed"][L]) for L in lengths}
        ok = all(p[a][L].mean < p[b][L].mean and ps[L] < alpha for L in lengths)
        return "PASS" if ok else "FAIL", "; ".join(f"{L}: {fmt(p[a][L])} vs {fmt(p[b][L])}, p = {ps[L]:.3g}"
                                                   for L in lengths)

    def steps_within(factor):
        if POSE not in tracks or FULL not in tracks:
            raise KeyError("tracked")  # PoSE or Full-length not evaluated during fine-tuning (--quick=true)
        pose, full = tracks[POSE], tracks[FULL]
        worst_ratio = max(math.exp(pose[st][Lt] - full[st][Lt]) for st in pose if st in full)
        return verdict(worst_ratio, 1.0, factor), f"PoSE / Full-length at most {worst_ratio:.3f}× (steps " + \
            ", ".join(f"{st}: {math.exp(pose[st][Lt]):.1f} / {math.exp(full[st][Lt]):.1f}" for st in sorted(pose)
                      if st in full) + ")"

    claims = [
        ("No extension (the base) degrades past Lc: ppl at 8·Lc ≥ 1.5× its ppl at Lc",
         lambda: verdict(1.5, p["base"][Lt].mean / p["base"][Lc].mean),
         lambda: f"{p['base'][Lt].mean:.1f} vs {p['base'][Lc].mean:.1f}"),
        ("Plain fine-tuning (Lc windows, no RoPE scaling) stays broken: ppl at 8·Lc ≥ 1.5× at Lc",
         lambda: verdict(1.5, ratio(PLAIN, Lt, Lc)), lambda: f"{fmt(p[PLAIN][Lt], 1)} vs {fmt(p[PLAIN][Lc], 1)}"),
        ("PoSE at 8·Lc ≤ 1.05× Full-length", lambda: verdict(p[POSE][Lt], p[FULL][Lt], 1.05),
         lambda: f"{fmt(p[POSE][Lt])} vs {fmt(p[FULL][Lt])} ({p[POSE][Lt].mean / p[FULL][Lt].mean:.3f}×)"),
        ("PoSE uses the longer context: its ppl at 8·Lc ≤ at Lc", lambda: verdict(ratio(POSE, Lt, Lc), 1.0),
         lambda: f"{fmt(p[POSE][Lt])} vs {fmt(p[POSE][Lc])}"),
        ("RandPos worse than PoSE at every length",
         lambda: worst([verdict(p[POSE][L], p[RANDPOS][L]) for L in L8]),
         lambda: ", ".join(f"{L}: {p[RANDPOS][L].mean:.1f}/{p[POSE][L].mean:.1f}" for L in L8)),
        (f"Passkey beyond Lc at 8·Lc = {Lt}: PoSE at least Full-length (95% intervals)",
         lambda: verdict(key_[FULL][Lt], key_[POSE][Lt]), lambda: f"{rate(key_[POSE][Lt])} vs {rate(key_[FULL][Lt])}"),
        ("The same with this project's passkey rows, the skip between key and question",
         lambda: verdict(key_[FULL][Lt], key_[BETWEEN][Lt]),
         lambda: f"{rate(key_[BETWEEN][Lt])} vs {rate(key_[FULL][Lt])}"),
        ("Passkey beyond Lc there: the base and plain fine-tuning ≤ 10%",
         lambda: worst([verdict(key_["base"][Lt], 0.1), verdict(key_[PLAIN][Lt], 0.1)]),
         lambda: f"base {rate(key_['base'][Lt])}, plain {rate(key_[PLAIN][Lt])}"),
        ("PoSE trains with less memory than Full-length", lambda: verdict(s[POSE]["mem_gib"], s[FULL]["mem_gib"]),
         lambda: f"peak RSS {fmt(s[POSE]['mem_gib'])} vs {fmt(s[FULL]['mem_gib'])} GiB (each its own process)"),
        (f"At 64·Lc: PoSE's ppl at {Lt64} ≤ 1.25× its own at {Lt}", lambda: verdict(ratio(POSE64, Lt64, Lt), 1.25),
         lambda: f"{fmt(p[POSE64][Lt64])} vs {fmt(p[POSE64][Lt])} ({ratio(POSE64, Lt64, Lt).mean:.3f}×)"),
        (f"At 64·Lc: PoSE's ppl at {Lt64} ≤ 0.6× the base's", lambda: verdict(vs_base(POSE64, base64, Lt64), 0.6),
         lambda: f"{fmt(p[POSE64][Lt64])} vs {p[base64][Lt64].mean:.2f} ({vs_base(POSE64, base64, Lt64).mean:.3f}×)"),
        (f"At 64·Lc: PoSE below interpolation only at {4 * Lt} and {Lt64} (exact permutation test on log perplexity, "
         "p < 0.01)", lambda: below(POSE64, SCALED64, (4 * Lt, Lt64))[0],
         lambda: below(POSE64, SCALED64, (4 * Lt, Lt64))[1]),
        ("Table 5: N = 3 chunks ≤ 1.05× N = 2 at every length, at 8·Lc and 64·Lc",
         lambda: worst([verdict(p[POSE3][L], p[POSE][L], 1.05) for L in L8]
                       + [verdict(p[POSE3_64][L], p[POSE64][L], 1.05) for L in L64]),
         lambda: f"{Lt}: {fmt(p[POSE3][Lt])} vs {fmt(p[POSE][Lt])}; {Lt64}: {fmt(p[POSE3_64][Lt64])} vs "
                 f"{fmt(p[POSE64][Lt64])}"),
        ("Figure 4: fixed NTK breaks before the target: its ppl at 64·Lc > 1.25× its own at 8·Lc",
         lambda: verdict(1.25, ratio(SCALINGS64[1], Lt64, Lt)),
         lambda: f"{fmt(p[SCALINGS64[1]][Lt64])} vs {fmt(p[SCALINGS64[1]][Lt])} "
                 f"({ratio(SCALINGS64[1], Lt64, Lt).mean:.2f}×)"),
        ("Table 2: PoSE-linear worse than PoSE-YaRN at the far target (64·Lc)",
         lambda: verdict(p[POSE64][Lt64], p[SCALINGS64[0]][Lt64]),
         lambda: f"{fmt(p[SCALINGS64[0]][Lt64])} vs {fmt(p[POSE64][Lt64])}"),
        ("Figure 4: every scaling's PoSE model below the base at 64·Lc",
         lambda: worst([verdict(p[n][Lt64], p[base64][Lt64]) for n in (*SCALINGS64, POSE64)]),
         lambda: ", ".join(f"{describe(n)[1]} {p[n][Lt64].mean:.1f}" for n in (*SCALINGS64, POSE64))
                 + f" vs base {p[base64][Lt64].mean:.1f}"),
        ("Figure 3(c): PoSE within 1.05× of Full-length's ppl at 8·Lc at every evaluation during fine-tuning "
         "(one seed each)", lambda: steps_within(1.05)[0], lambda: steps_within(1.05)[1]),
        (f"Beyond 64×: PoSE at 256·Lc, ppl at {Lt256} ≤ 1.25× its own at {Lt64}",
         lambda: verdict(ratio(POSE256, Lt256, Lt64), 1.25),
         lambda: f"{fmt(p[POSE256][Lt256])} vs {fmt(p[POSE256][Lt64])} ({ratio(POSE256, Lt256, Lt64).mean:.3f}×)"),
        (f"Beyond 64×: PoSE at 256·Lc, ppl at {Lt256} ≤ 0.6× the base's",
         lambda: verdict(vs_base(POSE256, base256, Lt256), 0.6),
         lambda: f"{fmt(p[POSE256][Lt256])} vs {p[base256][Lt256].mean:.2f} "
                 f"({vs_base(POSE256, base256, Lt256).mean:.3f}×)"),
    ]
    rows = []
    for claim, ok, numbers in claims:
        try:
            rows.append([claim, ok(), numbers()])
        except KeyError as missing:  # a model this run did not train, or did not track
            rows.append([claim, "not run", f"no {missing.args[0]} model in this run"])
    return markdown(["claim (paper)", "here", "measured (mean ± sd over seeds; rates with 95% intervals)"], rows)


def worst(verdicts):
    """FAIL if any fails, else 'no difference at this size' if any is, else PASS."""
    return next((v for v in ("FAIL", "no difference at this size") if v in verdicts), "PASS")


def readme_section(path):
    """(the README's text, where its results section starts, where it ends): a ValueError naming the file if it
    cannot be read or has no section between the markers (ReproConfig.check asks before any run starts)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--readme={path}: {getattr(e, 'strerror', None) or e}") from None
    start, end = text.find(MARKS[0]), text.find(MARKS[1])
    if start < 0 or end < start:
        raise ValueError(f"{path}: no {MARKS[0]} ... {MARKS[1]} section to write the results into")
    return text, start, end


def write_readme(path, section):
    """Replace what lies between the README's result markers with `section`, written aside and renamed: a full disk
    leaves the README as it was."""
    text, start, end = readme_section(path)
    with atomic_open(path) as f:
        f.write(text[:start] + f"{MARKS[0]}\n{section}" + text[end:])


# ----------------------------------------------------------------------------- figures
def band(curves):
    """(mean, (min, max)) of per-seed curves."""
    a = np.array(curves)
    return a.mean(0), (a.min(0), a.max(0))


def label(name):
    """A model's entry as a figure's legend names it: the run (base@64x: base; an 8× run at 64×: marked 8×)."""
    run = name.split("@")[0]
    return run + (f" ({home(run)[:-1]}×)" if "@" in name and run != "base" else "")


def position_figure(evals, names, path, marks, L, smooth):
    names = [n for n in names if n in evals]
    if not names:
        return
    curves, bands = {}, {}
    for n in names:
        curves[label(n)], b = band([r["position"] for r in evals[n]])
        if len(evals[n]) > 1:
            bands[label(n)] = b
    windows = evals[names[0]][0]["windows"]
    plots.plot_position_loss(curves, path, marks, smooth=smooth, bands=bands,
                             title=f"Loss at each position, {windows} windows of {L}" + " (band: seeds' range)" * bool(bands))


def figures(cfg, s, evals, tracks):
    marks8 = {Lc: "L0 = Lc", Lt: "8·Lc"}  # L0 = 128: under the smoothing
    names8 = [n for n in ["base", PLAIN, POSE_NONE, SCALED, POSE, BETWEEN, RANDPOS, FULL] if n in evals]
    position_figure(evals, names8, os.path.join(cfg.plots, "position_loss.png"), marks8, Lt, Lc)
    plots.plot_perplexity({n: {L: e.mean for L, e in s[n]["ppl"].items()} for n in names8},
                          os.path.join(cfg.plots, "ppl.png"), marks8, "Perplexity, sliding window (stride Lc)",
                          spread={n: {L: (e.low, e.high) for L, e in s[n]["ppl"].items()} for n in names8})
    keys = [n for n in names8 if "passkey" in s[n] and n != RANDPOS]
    plots.plot_passkey_beyond({n: {L: e.mean for L, e in s[n]["passkey"].items() if L > Lc} for n in keys},
                              os.path.join(cfg.plots, "passkey.png"), Lc,
                              {n: {L: (e.low, e.high) for L, e in s[n]["passkey"].items() if L > Lc} for n in keys},
                              title=f"Passkey retrieval, keys farther back than Lc = {Lc} (95% intervals)")
    position_figure(evals, [key("base", "64x"), key(POSE, "64x"), POSE64, SCALED64],
                    os.path.join(cfg.plots, "position_loss_64x.png"), {Lt: "8·Lc", Lt64: "64·Lc"}, Lt64, 512)
    far = [key("base", "256x"), key(POSE64, "256x"), POSE256]
    position_figure(evals, far, os.path.join(cfg.plots, "position_loss_256x.png"), {Lt64: "64·Lc", Lt256: "256·Lc"},
                    Lt256, 2048)
    long = [n for n in (key("base", "64x"), SCALED64, *SCALINGS64, POSE64, POSE3_64) if n in s]
    if POSE64 in s:
        plots.plot_perplexity({label(n): {L: e.mean for L, e in s[n]["ppl"].items()} for n in long},
                              os.path.join(cfg.plots, "ppl_64x.png"), {Lt64: "64·Lc"},
                              f"Perplexity at 64·Lc, first L tokens of {Lt64}-token windows",
                              spread={label(n): {L: (e.low, e.high) for L, e in s[n]["ppl"].items()} for n in long})
    if tracks:
        plots.plot_steps({n: {st: {L: math.exp(v) for L, v in t[st].items()} for st in t} for n, t in tracks.items()},
                         os.path.join(cfg.plots, "steps.png"), (Lc, Lt),
                         f"Perplexity during fine-tuning\n(first {cfg.track_tokens} tokens of each held-out book)")


def full_memory(L, path=os.path.join(HERE, "results", "bench.json")):
    """(GiB, batch): Full-length's training-step memory above the process baseline at an L-token window, from
    bench.py's measurements (results/bench.json) extended by a straight line through its two longest points (the
    memory of a step grows linearly in the window: activations, and flash attention's O(T) state); None without."""
    try:
        with open(path) as f:
            b = json.load(f)["b"]
        pts = sorted((int(k), v["step_gib"]) for k, v in b["full"].items())
        (x0, y0), (x1, y1) = pts[-2:]
        return y1 + (L - x1) * (y1 - y0) / (x1 - x0), b["options"]["batch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- the whole comparison
def seeds_of(cfg, run):
    """The seeds a run is trained with: 1337, 1338, …"""
    n = 1 if cfg.quick or run.seeds == "one" else getattr(cfg, run.seeds)
    return [SEED0 + i for i in range(n)]


def main(cfg):
    if cfg.quick:
        cfg.steps, cfg.seeds = cfg.quick_steps, 1
        cfg.eval_tokens, cfg.passkey_trials = cfg.quick_eval_tokens, cfg.quick_passkey_trials
    runs_dir = cfg.runs_dir or os.path.join("out", "repro_quick" if cfg.quick else "repro")
    plan = [(r, seed, os.path.join(runs_dir, r.name, f"seed{seed}")) for r in RUNS
            if r.name in TWO_BY_TWO or not cfg.quick for seed in seeds_of(cfg, r)]  # (run, seed, its folder)
    clock = Clock(runs_dir)
    clock.start("training")  # preparing the data and pretraining a base count as training
    jobs = Jobs(cfg.workers, clock)
    on_signals(jobs.stop)  # Ctrl-C and SIGTERM are passed on to the running jobs, which stop at a checkpoint
    if not os.path.exists(os.path.join(HERE, "data", "tok", "web-bpe4k", "train.bin")):
        jobs.run([("prepare", [sys.executable, "prepare.py"], os.path.join("data", "prepare.log"))])
    if cfg.pretrain:
        make_base(cfg, jobs)
    train_jobs = training_jobs(cfg, plan)  # every run folder checked before anything runs
    print(f"reproduce.py: {len(plan)} runs in {runs_dir}, {len(train_jobs)} to train, {cfg.workers} at a time")
    jobs.run(train_jobs)
    clock.start("evaluation")
    evals = evaluate_all(cfg, plan, runs_dir, jobs, retrained={os.path.dirname(j[2]) for j in train_jobs})
    mems, tracks = {}, {}
    for r, seed, d in plan:
        log = plots.read_log(os.path.join(d, "log.jsonl"))
        mems.setdefault(r.name, []).append(max(x["mem_gib"] for x in log if "mem_gib" in x))
        if train_args(cfg, r, seed, d)["eval_interval"]:  # a tracked run: {step: {L: loss}}
            tracks[r.name] = {x["step"]: {int(L): v for L, v in x["eval"].items()} for x in log if "eval" in x}
    report(cfg, summarize(evals, mems), evals, tracks, clock.now)


def evaluate_all(cfg, plan, runs_dir, jobs, retrained):
    """Every model with Lt = 8·Lc, and the base, at 8·Lc (the first seed's of the 2 × 2, the passkey variant and
    Full-length, in the full run, also scored by generation); at 64·Lc the base, every run trained for 64·Lc or
    256·Lc and the headline 8× run's first seed; at 256·Lc the base, the first 64× PoSE run and the 256× run.
    {entry: [per-seed read_eval]}, the entries named by key()."""
    gen = {"base", *TWO_BY_TWO, BETWEEN, FULL} if not cfg.quick else set()
    models = [("base", cfg.base, "8x+gen" if "base" in gen else "8x", os.path.join(runs_dir, "base", "eval_8x"))]
    models += [(f"{r.name} seed {seed}", os.path.join(d, "final"), "8x+gen" if seed == SEED0 and r.name in gen
                else "8x", os.path.join(d, "eval_8x")) for r, seed, d in plan if r.Lt == Lt]
    if not cfg.quick:
        models += [("base", cfg.base, kind, os.path.join(runs_dir, "base", f"eval_{kind}")) for kind in ("64x", "256x")]
        models += [(f"{r.name} seed {seed}", os.path.join(d, "final"), "64x", os.path.join(d, "eval_64x"))
                   for r, seed, d in plan if r.Lt > Lt or (r.name == POSE and seed == SEED0)]
        models += [(f"{r.name} seed {seed}", os.path.join(d, "final"), "256x", os.path.join(d, "eval_256x"))
                   for r, seed, d in plan if r.name == POSE256 or (r.name == POSE64 and seed == SEED0)]
    jobs.run(sorted(evaluation_jobs(cfg, models, retrained), key=lambda j: ("256x" not in j[0], "64x" not in j[0],
                                                                           "gen" not in j[0])))
    evals = {}
    for label_, _, kind, out in models:
        kind = kind.removesuffix("+gen")
        evals.setdefault(key(label_.split(" ")[0], kind), []).append(read_eval(out, kind))
    return evals


def report(cfg, s, evals, tracks, spent):
    """results/{summary.json, table.md, checks.md}, the figures, and the README's results section; `spent`: the
    Clock's minutes of training and evaluation over every invocation that worked in the runs folder."""
    ppl_table, key_table, long_table, far_table = tables(s)
    claims, reading = checks(s, tracks), two_by_two(s)
    chunks, scaling_table, steps_table = table5(s), scalings(s), track_table(tracks)
    minutes, t_train = spent["training"] + spent["evaluation"], spent["training"]
    os.makedirs(cfg.out, exist_ok=True)
    with atomic_open(os.path.join(cfg.out, "summary.json")) as f:
        json.dump({"command": "python reproduce.py" + " --quick=true" * cfg.quick, "minutes": minutes,
                   "training_minutes": t_train, "invocations": spent["invocations"], "config": asdict(cfg),
                   "eval": {k: eval_args(cfg, k) for k in ("8x", "64x", "256x")},
                   "models": {n: {"seeds": v["seeds"], "ppl": {L: asdict(e) for L, e in v["ppl"].items()},
                                  "ppl_per_seed": v["per_seed"],
                                  "passkey": {L: asdict(e) for L, e in v.get("passkey", {}).items()},
                                  "mem_gib": asdict(v["mem_gib"]) if "mem_gib" in v else None}
                              for n, v in s.items()},
                   "tracks": tracks,
                   "disagreements": {n: [r.get("disagreements") for r in v] for n, v in evals.items()}}, f, indent=1)
    note = notes(cfg, minutes, t_train, spent["invocations"])
    both = [(n, r) for n, v in evals.items() for r in v if r.get("disagreements") is not None]
    agree = (f"Teacher forcing against the paper's greedy generation, on every trial of {', '.join(n for n, _ in both)} "
             f"(the first seed's): they disagree on {sum(r['disagreements'] for _, r in both)} of "
             f"{sum(r['scored'] for _, r in both)} trials." if both else "")
    memory = full_memory(Lt256)
    sections = [
        (ppl_table, [note, "", "![loss at every position](plots/position_loss.png)", "", ppl_table,
                     "Passkey retrieval, teacher-forced, pooled over seeds, with 95% intervals. " + agree, "",
                     key_table, "![passkey beyond Lc](plots/passkey.png) ![perplexity](plots/ppl.png)", ""]),
        (reading, ["**What each part of PoSE does** (mean ± sd over seeds; a difference inside the spreads, or with "
                   "p ≥ 0.05 where a test is given, is \"no difference at this size\"):", "", reading]),
        (long_table, [f"**How far it reaches: the paper's 64× in miniature.** The loss at every position of {Lt64}-token "
                      f"windows laid end to end over the first {cfg.long_tokens} tokens of each held-out book (BOS first "
                      f"in each); the perplexity at L is exp of its mean over positions 0 … L − 1, i.e. each window's "
                      "first L tokens scored as a document of its own (the official code's --truncate). p: the exact "
                      "permutation test of `reproduce.permutation_p`.", "", long_table,
                      "![loss at every position to 8192](plots/position_loss_64x.png)", ""]),
        (chunks, ["**Table 5 in miniature: how many chunks.** The paper's N = 1 row is its no-extension row (no "
                  "interpolation); here N = 1 is interpolation only, the same windows at positions 0 … 127 with the "
                  "same scaling.", "", chunks]),
        (scaling_table, ["**Figure 4 / Table 2 in miniature: which interpolation, at 64·Lc** (one seed each but "
                         "PoSE-YaRN; transformers' YaRN with the headline's beta_fast 4, so that it differs from "
                         "PoSE-YaRN only in blending frequencies rather than divisors):", "", scaling_table,
                         "![perplexity at 64x](plots/ppl_64x.png)", ""]),
        (steps_table, ["**Figure 3(c) in miniature: perplexity at 8·Lc during fine-tuning** (one seed each, the "
                       f"first {cfg.track_tokens} tokens of each held-out book, sliding window stride Lc):", "",
                       steps_table, "![perplexity during fine-tuning](plots/steps.png)", ""]),
        (far_table, [f"**Beyond 64×: 256·Lc.** PoSE at Lt = {Lt256} (s = 256) on the same 128-token windows at the "
                     f"same cost; the loss at every position of one {Lt256}-token window per held-out book (the "
                     f"first {cfg.far_tokens} tokens), the perplexity at L as above."
                     + (f" A Full-length step at {Lt256} would need about {memory[0]:.0f} GiB above the process "
                        f"baseline at {memory[1]} rows (≈ {memory[0] * cfg.batch_size / memory[1]:.0f} GiB at these "
                        f"runs' {cfg.batch_size}), extended from `bench.py`'s measurements; a PoSE step needs what it "
                        f"needs at Lc." if memory else ""), "", far_table,
                     "![loss at every position to 32768](plots/position_loss_256x.png)", ""]),
    ]
    with atomic_open(os.path.join(cfg.out, "table.md")) as f:
        f.write("\n\n".join([note, ppl_table, agree, key_table, reading, long_table, chunks, scaling_table,
                              steps_table, far_table]))
    with atomic_open(os.path.join(cfg.out, "checks.md")) as f:
        f.write(claims)
    os.makedirs(cfg.plots, exist_ok=True)
    figures(cfg, s, evals, tracks)
    write_readme(cfg.readme, "\n".join([line for table, lines in sections if table for line in lines] + [
        "The paper's claims, checked against these numbers (`results/checks.md`):", "", claims]))
    print("\n\n".join([ppl_table, key_table, reading, long_table, chunks, scaling_table, steps_table, far_table,
                        claims]))
    print(f"reproduce.py: {minutes:.1f} min")


def notes(cfg, minutes, t_train, invocations=1):
    seeds = (f"{cfg.long_seeds} seeds (1337…{1336 + cfg.long_seeds}) for PoSE and interpolation only at 8× and 64×, "
             f"{cfg.seeds} for the 2 × 2's unscaled rows, the passkey variant and N = 3 at 64×, one for the other rows"
             if cfg.seeds > 1 else
             "one seed (1337) for every run: spreads marked * are not measured")
    return (f"{cfg.steps} steps × {cfg.batch_size} rows of 128-token windows for every run (Full-length: "
            f"{Lt}-token windows), {seeds}; ± is the sd over seeds (* a one-seed row: the seeded runs' typical "
            f"relative sd). Perplexity at 8·Lc: the paper's sliding window, stride Lc = {Lc}, on the first "
            f"{cfg.eval_tokens} tokens of each of the 5 held-out books (after a book's first window every scored token "
            f"has at least ctx − {Lc} tokens before it); loss at every position: the mean over those {Lt}-token "
            f"windows, drawn as a moving average over {Lc} positions (the windows start every {Lc} tokens, so the same "
            f"text recurs with that period). Passkey: {cfg.passkey_trials} trials per length and seed, teacher-forced, "
            f"on keys farther back than Lc (at Lc, inside the window). Unlike the paper's runs, training windows start "
            f"at a random offset of a book (BOS first: 478 chapter starts are too little text), and half of the rows "
            f"are passkey prompts, at the positions the window drew (the paper trains on text alone). `python "
            f"reproduce.py{' --quick=true' if cfg.quick else ''}`, {minutes:.1f} min on this machine ({t_train:.1f} of "
            f"them training{f'; summed over the {invocations} invocations that ran it' if invocations > 1 else ''}).")


if __name__ == "__main__":
    cfg = parse_config(ReproConfig, sys.argv[1:], __doc__)
    on_signals()  # until main() passes them on to its jobs: Ctrl-C and SIGTERM stop at once
    try:
        main(cfg)
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt as e:  # Stopped says what was stopped
        print(str(e) or "interrupted: finished runs and evaluations are kept; python reproduce.py continues from them",
              file=sys.stderr)
        sys.exit(exit_status())
