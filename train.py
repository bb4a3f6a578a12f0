"""train.py: pretrain a tiny LLaMA, or extend a LLaMA's context with PoSE / Full-length / RandPos / plain windows.

    python train.py configs/tiny_pretrain.toml                      # a tiny base model on CPU
    python train.py configs/tiny_pose.toml --max_steps=50           # extend it 8x with PoSE
    torchrun --nproc_per_node=8 train.py configs/llama2_7b_pose_16k.toml --fsdp=true
    python train.py -h                                              # every option

A first reading takes three functions: get_batch (training windows cut by pose.py, each row with its own
positions), build_model (where LLaMA.extend_context gives the RoPE its scaling for Lt: s = Lt / L0), and train()'s
loop -- batch, forward/backward, clip, step, log, eval, checkpoint. The blocks marked "a first reading may skip" are
engineering (checks, resuming, several GPUs, logging); passkey_row is this project's addition to the training
mixture, not the paper's.
Checkpoints are Hugging Face directories (plus train_state.pt for resuming) written whole or not at all
(checkpoint.py); the final model is out_dir/final, which transformers loads as it is.
"""
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import pose
from checkpoint import (claim_run_folder, config_to_hf, from_pretrained, last_good, latest_checkpoint, load_tensors,
                        log_record, open_log, raw_model, save_checkpoint, save_model, weights_finite)
from config import heads, in_range, non_negative, one_of, parse_config, positive, writable
from eval import perplexity
from lora import add_lora
from model import ROPE_TYPES, LLaMA, ModelConfig
from passkey import passkey_example
from prepare import TokenDataset
from tokenizer import check_vocabulary, load_tokenizer, start_id, tokenizer_files
from util import (SIGNALS, check_device, exit_status, memory_peak, memory_total, on_signals, out_of_memory, pick_device,
                  signal_name)

DTYPES = ("float32", "bfloat16", "float16")
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # the projections LoRA can adapt


@dataclass
class TrainConfig:
    # data
    data_dir: str = "data/tok/web-bpe4k"  # a folder written by prepare.py, holding train.* and eval.* splits
    start: str = "doc"          # doc: a window begins at its document's start (BOS at position 0), as the official
                                # code; random: at a random offset, with the document's BOS put first
    # the model: "scratch", "resume" (out_dir's latest checkpoint), or a Hugging Face / Meta / project folder
    init_from: str = "scratch"  # where the model comes from
    L0: int = 0                 # the length it was pretrained at; 0: its config's (Meta checkpoints must set it)
    dim: int = 256              # width (init_from=scratch only, as the six below)
    n_layers: int = 4           # transformer blocks
    n_heads: int = 8            # query heads
    n_kv_heads: int = 4         # key/value heads (GQA when fewer than n_heads)
    vocab_size: int = 4096      # at least the tokenizer's
    rope_theta: float = 10000.0  # RoPE base
    tie_embeddings: bool = False  # share the input embedding with the output projection
    # the method
    method: str = "plain"       # pose | full | randpos | plain (a plain Lc window: pretraining, or the control)
    Lc: int = 128               # the training window (tokens per row; full reads Lt)
    Lt: int = 128               # the target context length
    num_chunks: int = 2         # N, the chunks of a PoSE window
    text: str = "skip"          # PoSE's text: skip (v_i drawn) | contiguous (v_i = 0) | aligned (v_i = u_i)
    passkey_share: float = 0.0  # this share of rows starts with a synthetic passkey prompt and its answer (this
                                # project's addition to the mixture: the paper trains on text alone)
    passkey_skip: str = "pose"  # PoSE's passkey rows: pose (the positions pose_window drew, the skip wherever it
                                # falls) | between (the first skip moved between the key and the question)
    rope_type: str = "keep"     # RoPE scaling set now: keep (as loaded) | none | linear | ntk | dynamic | yarn |
                                # yarn_pose (the official PoSE code's revised YaRN) | llama3
    rope_factor: float = 0.0    # s; 0: Lt / L0
    yarn_beta_fast: float = 32.0  # yarn, yarn_pose: dims turning more than this many times over L0 keep their
                                  # frequency, those under yarn_beta_slow are divided by s (YaRN's 32 and 1)
    yarn_beta_slow: float = 1.0   # (see yarn_beta_fast)
    # optimisation
    batch_size: int = 16        # rows per process per micro-step
    grad_accum: int = 1         # micro-steps per optimizer step
    max_steps: int = 1000       # optimizer steps
    lr: float = 1e-3            # peak learning rate
    min_lr: float = 0.0         # the learning rate at max_steps
    warmup_steps: int = 10      # linear warm-up from lr / warmup_steps
    decay: str = "linear"       # linear | cosine, from lr after warm-up to min_lr at max_steps
    weight_decay: float = 0.1   # AdamW's, on matrices only
    beta1: float = 0.9          # AdamW
    beta2: float = 0.95         # AdamW
    grad_clip: float = 1.0      # global gradient-norm clip; 0: none
    # LoRA: rank 0 trains every weight; >0 trains adapters on lora_targets (+ embeddings / norms if asked)
    lora_rank: int = 0          # adapter rank; 0: full fine-tuning
    lora_alpha: float = 16.0    # adapters are scaled by alpha / rank
    lora_targets: str = "wq,wk,wv,wo"  # which projections get adapters (w1, w2, w3: the MLP's)
    lora_train_embeddings: bool = False  # also train the embedding and output matrices
    lora_train_norms: bool = False  # also train the RMSNorm weights
    base_dtype: str = "float32"  # the frozen base's dtype under LoRA (bfloat16 halves a 7B model's memory);
                                 # what is trained is float32 whatever this is
    # system
    device: str = "auto"        # auto | cpu | cuda | cuda:N
    dtype: str = "float32"      # float32 | bfloat16 | float16: autocast (the weights keep their own dtype: float32,
                                # or base_dtype for a frozen LoRA base)
    grad_checkpointing: bool = False  # recompute each block in the backward pass: less memory, ~30% more time
    compile: bool = False       # torch.compile the model
    fsdp: bool = False          # under torchrun: FSDP2 fully_shard instead of DDP
    seed: int = 1337            # data order and initialisation
    # logging, evaluation, checkpoints
    out_dir: str = "out/run"    # checkpoints, log.jsonl and final/ (a Hugging Face folder)
    log_interval: int = 10      # steps between log lines
    eval_interval: int = 100    # steps between evaluations; 0: only at the end
    eval_docs: int = 8          # evaluation (perplexity at Lc and Lt, stride Lc) reads this many held-out documents;
                                # 0: none (eval.py evaluates the saved model)
    eval_tokens: int = 4096     # ... each cut to its first max(eval_tokens, Lt + 1) tokens
    ckpt_interval: int = 100    # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 1   # how many checkpoints to keep

    def check(self):  # (a first reading may skip: every option checked before anything is read)
        """A ValueError naming the first option that cannot work (parse_config and train() call it)."""
        one_of(self, "start", ("doc", "random"))
        positive(self, "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "batch_size", "grad_accum",
                 "max_steps", "log_interval", "keep_checkpoints")
        heads(self)
        non_negative(self, "L0", "rope_factor", "warmup_steps", "weight_decay", "grad_clip", "lora_rank",
                     "eval_interval", "eval_docs", "eval_tokens", "ckpt_interval", "seed")
        if self.Lc < 2:  # a window of T tokens trains on T - 1 next-token targets
            raise ValueError(f"--Lc={self.Lc}: expected 2 or more")
        pose.check(self.Lc, self.Lt, self.method, self.num_chunks, self.text)
        in_range(self, "passkey_share", 0, 1, "a share in [0, 1]")
        one_of(self, "passkey_skip", ("pose", "between"))
        if self.rope_type == "longrope":
            raise ValueError("--rope_type=longrope needs per-dimension factors, which only a checkpoint's config gives: "
                             "keep them with rope_type=keep, or choose linear, ntk, dynamic, yarn, yarn_pose or llama3")
        one_of(self, "rope_type", ("keep", "none") + ROPE_TYPES)
        if self.rope_factor and self.rope_factor <= 1:
            raise ValueError(f"--rope_factor={self.rope_factor}: expected 0 (Lt / L0) or a factor above 1")
        if not 0 < self.yarn_beta_slow < self.yarn_beta_fast < math.inf:
            raise ValueError(f"--yarn_beta_fast={self.yarn_beta_fast} --yarn_beta_slow={self.yarn_beta_slow}: expected "
                             "0 < yarn_beta_slow < yarn_beta_fast")
        in_range(self, "rope_theta", 1e-9, math.inf, "a positive base")
        in_range(self, "lr", 0, 1, "a rate in [0, 1] (AdamW moves each weight by up to about lr a step)")
        in_range(self, "min_lr", 0, self.lr, f"a rate in [0, lr={self.lr}]")
        one_of(self, "decay", ("linear", "cosine"))
        in_range(self, "beta1", 0, 0.999999, "a number in [0, 1)")
        in_range(self, "beta2", 0, 0.999999, "a number in [0, 1)")
        in_range(self, "lora_alpha", 1e-9, math.inf, "a positive number")
        if self.lora_rank and not set(self.lora_targets.split(",")) <= set(LORA_TARGETS):
            raise ValueError(f"--lora_targets={self.lora_targets}: expected a comma-separated subset of "
                             f"{','.join(LORA_TARGETS)}")
        one_of(self, "base_dtype", DTYPES)
        one_of(self, "dtype", DTYPES)
        if self.base_dtype != "float32" and not (self.lora_rank and self.dtype == self.base_dtype):
            raise ValueError(f"--base_dtype={self.base_dtype}: expected float32, or LoRA (lora_rank > 0) with "
                             f"dtype={self.base_dtype} autocast")
        in_range(self, "seed", 0, 2**64 - 1, "an integer in [0, 2^64) (torch's seeds)")
        check_device(self.device)
        if not self.out_dir:
            raise ValueError("--out_dir=: expected a folder")
        writable(self, "out_dir")


# ----------------------------------------------------------------------------- data
def get_batch(data, cfg, rng, rows, tok=None):
    """`rows` training windows: (x, pos, y), each (rows, T - 1) int64, x/pos the input and y the next tokens.

    Each window is cut by pose.sample from a random document (drawn in proportion to its length) that holds the
    window: from the document's first tokens -- 5·Lc for PoSE, as the official code, Lt for full, Lc for the others
    (pose.read_len) -- so that chunk 0 starts with the document's BOS at position 0 (start="doc"); or, with
    start="random", from as many tokens at a random offset, with the document's BOS put in front (where documents'
    starts are little text). With passkey_share, that share of rows begins with a synthetic passkey prompt and its
    answer (tokenizer `tok`), at the window's positions (see passkey_row)."""
    need = pose.doc_len(cfg.method, cfg.Lc, cfg.Lt, cfg.text)
    docs = data.docs_at_least(need)
    if len(docs) == 0:
        raise ValueError(f"no document in {cfg.data_dir} has the {need} tokens a {cfg.method} window needs")
    weights = data.lengths[docs] / data.lengths[docs].sum()
    span = pose.read_len(cfg.method, cfg.Lc, cfg.Lt, cfg.text)  # what a window may read
    xs, ps = [], []
    for d in rng.choice(docs, size=rows, p=weights):
        doc = data.doc(d)
        if cfg.start == "random":  # BOS, then span - 1 tokens from offset a >= 1
            a = rng.integers(1, max(len(doc) - span + 1, 1) + 1)
            doc = np.concatenate([doc[:1], doc[a:a + span - 1]])
        tokens, pos = pose.sample(doc[:span], cfg.Lc, cfg.Lt, cfg.method, cfg.num_chunks, cfg.text, rng=rng)
        if cfg.passkey_share and rng.random() < cfg.passkey_share:
            tokens, pos = passkey_row(tokens, pos, tok, cfg, rng)
        xs.append(tokens)
        ps.append(pos)
    tokens, pos = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ps))
    return tokens[:, :-1], pos[:, :-1], tokens[:, 1:]


def passkey_row(tokens, pos, tok, cfg, rng):
    """A window that begins with a passkey prompt (BOS, instruction, filler, key line, filler, question) and its
    answer, the rest of the window the text it held -- this project's addition to the training mixture, not the
    paper's (a 4M-parameter model learns no retrieval from text alone; the paper tests passkey zero-shot).

    The positions are the window's (passkey_skip = "pose": wherever PoSE's skip fell, in the prompt or after it).
    With passkey_skip = "between", a PoSE window's first skip is moved to a point drawn between the end of the key
    line and the question, so that the skip stretches the key-to-question distance (by u_1, up to Lt - Lc): every
    such row then trains retrieval across up to Lt positions, a variant of the method that reproduce.py measures."""
    example, p = passkey_example(tok, len(tokens), rng)
    tokens = np.concatenate([example, tokens[:len(tokens) - len(example)]])
    if cfg.passkey_skip == "between" and cfg.method == "pose" and cfg.num_chunks > 1:
        k = np.arange(len(pos))
        u = pos - k  # u_i of each token's chunk: 0 in chunk 0, then u_1 <= u_2 <= ...
        first = u[u > 0].min() if (u > 0).any() else 0  # the window's first skip
        cut = rng.integers(p.key_end, p.question_at + 1)
        pos = k + np.where(k < cut, 0, np.maximum(u, first))
    return tokens, pos


def get_lr(step, cfg):
    """Linear warm-up to lr, then linear or cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
    shape = 1 - t if cfg.decay == "linear" else 0.5 * (1 + math.cos(math.pi * t))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * shape


# ----------------------------------------------------------------------------- the model
def load_model(cfg, resume=None, state=None, tok=None):
    """The model to train: built from scratch, read from init_from, or (resume, state) the checkpoint to continue;
    given the RoPE scaling for Lt (model.LLaMA.extend_context); with LoRA adapters if lora_rank > 0. With `tok`,
    the data's tokenizer, a model whose tokenizer it is not is refused."""
    if state and not cfg.lora_rank:  # fully trained: the checkpoint is the model, already extended
        model = from_pretrained(resume)
    else:
        model = build_model(cfg, state)
    if not weights_finite(model):
        raise ValueError(f"{resume or cfg.init_from}: its weights are not all finite")
    if tok is not None:
        check_tokenizer(model, cfg, tok, resume or (state["base_from"] if state else cfg.init_from))
    model.gradient_checkpointing = cfg.grad_checkpointing
    return model


def build_model(cfg, state):
    """A fresh run's model, or under LoRA a resumed run's base with its trained weights put back."""
    torch.manual_seed(cfg.seed)  # a model from scratch, and LoRA's adapters, start from the run's seed
    base_from = state["base_from"] if state else cfg.init_from  # under LoRA the frozen base is where the run began
    if base_from == "scratch":
        model = LLaMA(ModelConfig(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                                  vocab_size=cfg.vocab_size, rope_theta=cfg.rope_theta, max_seq_len=cfg.Lc,
                                  tie_embeddings=cfg.tie_embeddings))
    else:
        model = from_pretrained(base_from, max_seq_len=cfg.L0 or None, dtype=getattr(torch, cfg.base_dtype))
    if cfg.rope_type != "keep":
        model.extend_context(cfg.Lt, cfg.rope_type, L0=cfg.L0, factor=cfg.rope_factor, beta_fast=cfg.yarn_beta_fast,
                             beta_slow=cfg.yarn_beta_slow)
        config_to_hf(model.cfg)  # a scaling the model's family cannot be saved with is refused now, not after training
    elif cfg.Lt > model.cfg.max_seq_len:
        print(f"warning: --Lt={cfg.Lt} is beyond the model's max_seq_len={model.cfg.max_seq_len} and rope_type=keep "
              "leaves its RoPE as it is: positions past it are trained without interpolation (PoSE alone); "
              "--rope_type=yarn_pose, linear, yarn ... scales it by s = Lt / L0", file=sys.stderr)
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets.split(","), cfg.lora_train_embeddings,
                 cfg.lora_train_norms)
        if state:
            model.load_state_dict(state["trained"], strict=False)
    return model


def params(model):
    """The parameters this run trains."""
    return [p for p in model.parameters() if p.requires_grad]


# (a first reading may skip from here to the loop: several GPUs, the periodic evaluation, resuming, the optimizer)
def init_distributed(device):
    """(rank, world size, device): under torchrun one process group, each rank on its own GPU; else (0, 1, device)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return 0, 1, device
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def evaluate(model, docs, cfg, bos_id, ctx, device):
    """{L: mean next-token loss} at L = Lc and Lt, by eval.py's perplexity() (sliding window, stride Lc); {} without
    documents."""
    if not docs:
        return {}
    model.eval()
    with ctx, out_of_memory(f"evaluating at Lc={cfg.Lc} and Lt={cfg.Lt} tokens", "--eval_docs=0 leaves the "
                            "evaluation to eval.py, whose --batch_tokens sets how many windows a pass holds"):
        out = {L: perplexity(model, docs, L, bos_id=bos_id, stride=cfg.Lc, device=device)["nll"]
               for L in sorted({cfg.Lc, cfg.Lt})}
    model.train()
    return out


def load_data(cfg):
    """(train split, the first tokens of a few held-out documents for the periodic evaluation, tokenizer, its files).
    What would fail mid-run fails now: a corpus no window fits, held-out documents too short to evaluate at Lt."""
    train_data, eval_data = TokenDataset(cfg.data_dir, "train"), TokenDataset(cfg.data_dir, "eval")
    tok, tok_files = load_tokenizer(train_data.meta["tokenizer"]), tokenizer_files(train_data.meta["tokenizer"])
    eval_docs = [eval_data.doc(i)[:max(cfg.eval_tokens, cfg.Lt + 1)] for i in range(min(cfg.eval_docs, len(eval_data)))]
    get_batch(train_data, cfg, np.random.default_rng(), 1, tok)
    # eval.perplexity scores a document at length L only if its text (after BOS) holds L tokens, and fails if none does
    longest = max((len(d) - (len(d) > 0 and d[0] == start_id(tok)) for d in eval_docs), default=cfg.Lt)
    if longest < cfg.Lt:
        raise ValueError(f"{cfg.data_dir}/eval: none of its first {len(eval_docs)} documents holds the {cfg.Lt} "
                         f"tokens that evaluating at Lt needs (the longest has {longest} after BOS): prepare longer "
                         "held-out documents, or set --eval_docs=0")
    return train_data, eval_docs, tok, tok_files


def check_memory(model, cfg, device):
    """A batch whose activations cannot fit is refused before training: every block and the final norm keep their
    input, rows × T × dim values, for the backward pass (with gradient checkpointing too), so a step needs at least
    that many bytes times n_layers + 1 (4 a value, 2 with any bfloat16 or float16) -- far from all it needs, but
    sure. What this misses, the step itself says (step_memory)."""
    T, size = pose.window_len(cfg.method, cfg.Lc, cfg.Lt) - 1, 4 if cfg.dtype == cfg.base_dtype == "float32" else 2
    need, have = cfg.batch_size * T * model.cfg.dim * size * (model.cfg.n_layers + 1), memory_total(device)
    if need > have:
        raise ValueError(f"--batch_size={cfg.batch_size} rows of {window_name(cfg)} tokens: a step keeps at least "
                         f"{need / 2**30:,.1f} GiB of activations (rows × tokens × dim {model.cfg.dim} × {size} bytes "
                         f"× {model.cfg.n_layers + 1}), more than the {have / 2**30:.1f} GiB this process can have on "
                         f"{device}: lower batch_size (a higher grad_accum keeps the batch)")


def window_name(cfg):
    """The training window's length, as its option: Lt=1024 for Full-length, else Lc=128."""
    return f"Lt={cfg.Lt}" if cfg.method == "full" else f"Lc={cfg.Lc}"


def step_memory(cfg, step):
    """Memory that runs out in a training step as one line naming the batch that asked for it (util.out_of_memory)."""
    return out_of_memory(f"in step {step}, batch_size={cfg.batch_size} rows of {window_name(cfg)} tokens",
                         "lower --batch_size (a higher --grad_accum keeps the batch) or set --grad_checkpointing=true")


# What shapes a run: resuming with another value of any of these would train a different model than the checkpoint's.
RUN_SHAPE = ("method", "Lc", "Lt", "num_chunks", "text", "passkey_skip", "L0", "rope_type", "rope_factor",
             "yarn_beta_fast", "yarn_beta_slow", "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "rope_theta",
             "tie_embeddings", "lora_rank", "lora_alpha", "lora_targets", "lora_train_embeddings", "lora_train_norms",
             "base_dtype")


def find_resume(cfg):
    """(the checkpoint folder to resume from, its train_state, where the run's model came from) for init_from=resume,
    else (None, None, init_from). A resumed run must be the same run: an option in RUN_SHAPE that differs from the
    checkpoint's is refused."""
    if cfg.init_from != "resume":
        return None, None, cfg.init_from
    latest = latest_checkpoint(cfg.out_dir)
    if latest is None:
        started = os.path.exists(os.path.join(cfg.out_dir, "log.jsonl")) and not os.path.exists(
            os.path.join(cfg.out_dir, "final"))
        raise ValueError(f"--init_from=resume: {cfg.out_dir} has no checkpoint" + (
            " (its run stopped before the first): start it again without --init_from=resume" if started else ""))
    state = load_tensors(os.path.join(latest, "train_state.pt"))
    missing = sorted({"step", "config", "base_from", "trained", "optimizer", "scaler", "rng", "torch_rng"}
                     - set(state if isinstance(state, dict) else ()))
    if missing:
        raise ValueError(f"{latest}/train_state.pt: not a train.py checkpoint's state (no {', '.join(missing)})")
    for key in RUN_SHAPE:
        if key in state["config"] and state["config"][key] != getattr(cfg, key):
            raise ValueError(f"--{key}={getattr(cfg, key)} differs from the run being resumed ({key} = "
                             f"{state['config'][key]!r} in {latest}): resume with its settings, or start another "
                             "out_dir")
    return latest, state, state["base_from"]


def distribute(model, cfg):
    """Under torchrun: each block and the model sharded by FSDP2, or the model wrapped in DDP; else as it is."""
    if not dist.is_initialized():
        return model
    if not cfg.fsdp:
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard
    for layer in model.layers:
        fully_shard(layer)
    return fully_shard(model)


def make_optimizer(model, cfg, device):
    """(AdamW over the trained parameters, weight decay on matrices only; the loss scaler fp16 needs)."""
    trained = params(model)
    optimizer = torch.optim.AdamW([{"params": [p for p in trained if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    return optimizer, torch.amp.GradScaler(device.split(":")[0], enabled=cfg.dtype == "float16")


# ----------------------------------------------------------------------------- the loop
def train(cfg):
    cfg.check()
    rank, world, device = init_distributed(pick_device(cfg.device))
    ddp, say = dist.is_initialized(), print if rank == 0 else (lambda *a, **k: None)
    say(json.dumps(asdict(cfg)))
    rng = np.random.default_rng(cfg.seed)  # the same on every rank: each takes its own rows of one global batch
    train_data, eval_docs, tok, tok_files = load_data(cfg)
    resume, state, base_from = find_resume(cfg)
    model = load_model(cfg, resume, state, tok)
    check_memory(model, cfg, device)
    say(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{sum(p.numel() for p in params(model)) / 1e6:.2f}M trained; rope {model.cfg.rope_scaling}")
    model = distribute(model.to(device), cfg)
    optimizer, scaler = make_optimizer(model, cfg, device)
    step = restore(state, model, optimizer, scaler, rng) if state else 0
    fwd = torch.compile(model) if cfg.compile else model
    ctx = nullcontext() if cfg.dtype == "float32" else torch.autocast(device.split(":")[0], dtype=getattr(torch, cfg.dtype))
    log, t_start, start_step = Log(cfg, bool(resume), rank == 0, step), time.time(), step  # and out_dir is ours
    evaluate_now = partial(evaluate, raw_model(model), eval_docs, cfg, start_id(tok), ctx, device)  # {L: loss}
    if resume and not os.path.lexists(os.path.join(cfg.out_dir, "latest")):
        say(f"{cfg.out_dir}/latest is missing: resuming from the newest complete checkpoint there")
    say(f"resumed from {resume} at step {step}" if resume else f"training into {cfg.out_dir}")
    if cfg.eval_interval and not resume:  # where fine-tuning starts from, on the documents every later evaluation reads
        log.eval(0, evaluate_now())
    while step < cfg.max_steps:
        lr = get_lr(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        # forward and backward over grad_accum micro-batches; each rank takes its rows of one global batch
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, pos, y = (t[rank * cfg.batch_size:(rank + 1) * cfg.batch_size].to(device)
                         for t in get_batch(train_data, cfg, rng, cfg.batch_size * world, tok))
            sync = micro == cfg.grad_accum - 1 or not ddp or cfg.fsdp  # DDP: all-reduce on the last micro-step only
            with ctx, (nullcontext() if sync else model.no_sync()), step_memory(cfg, step + 1):
                loss = fwd(x, pos, y) / cfg.grad_accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if ddp:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        # clip, and stop before an update that would poison the weights (fp16's scaler skips inf steps itself)
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params(model), cfg.grad_clip) if cfg.grad_clip else torch.zeros(())
        stop_if_diverged(loss_sum, grad_norm, scaler, step + 1, cfg.out_dir)
        # the update
        with step_memory(cfg, step + 1):  # AdamW's moments are made at the first step
            scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        # log, evaluate, checkpoint (finite weights only: checkpoint.py); after Ctrl-C or SIGTERM, checkpoint this
        # step and stop
        stop = interrupted(device)
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            log.train(step, loss_sum.item(), lr, grad_norm.item(), memory_peak(device),
                      (time.time() - t_start) / (step - start_step), world)
        if cfg.eval_interval and step % cfg.eval_interval == 0 and not stop:
            log.eval(step, evaluate_now())
        if (cfg.ckpt_interval and step % cfg.ckpt_interval == 0) or step == cfg.max_steps or stop:
            save_checkpoint(model, optimizer, scaler, step, rng, cfg, base_from, tok_files)
        if stop:
            why = "interrupted" if signal_name() == "SIGINT" else f"stopped by {signal_name()}"
            raise Interrupted(f"{why} at step {step}; --init_from=resume continues from {cfg.out_dir}")
    if not cfg.eval_interval or step % cfg.eval_interval:
        log.eval(step, evaluate_now())
    save_model(model, cfg, os.path.join(cfg.out_dir, "final"), tok_files)
    say(f"saved {os.path.join(cfg.out_dir, 'final')} ({(time.time() - t_start) / 60:.1f} min)")
    return model


# (a first reading may skip the rest: stopping cleanly, checks, resuming, logging)
def stop_if_diverged(loss, grad_norm, scaler, step, out_dir):
    """A FloatingPointError naming the step and the last good checkpoint if the loss or the gradient is not finite."""
    if not torch.isfinite(loss) or not (scaler.is_enabled() or math.isfinite(grad_norm.item())):
        raise FloatingPointError(f"loss {loss.item():.4g}, gradient norm {grad_norm.item():.4g} at step {step}; "
                                 f"stopped, the last good checkpoint is {last_good(out_dir)}")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, after the step it came in was checkpointed."""


CTRL_C = threading.Event()  # set by the handler __main__ installs (Ctrl-C, SIGTERM); the loop reads it after each step


def interrupted(device):
    """Whether Ctrl-C was pressed or SIGTERM came, on any rank (a collective under torchrun, so that all stop at the
    same step)."""
    flag = torch.tensor(float(CTRL_C.is_set()), device=device)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def check_tokenizer(model, cfg, tok, folder):
    """The prepared data's tokenizer must be the model's: its ids no more than the embeddings of a model built from
    scratch; for a loaded one, the checks of tokenizer.check_vocabulary (a folder's own tokenizer included)."""
    fix = f"prepare {cfg.data_dir} with the model's tokenizer"
    if folder != "scratch":
        check_vocabulary(model.cfg.vocab_size, folder, tok, fix)
    elif model.cfg.vocab_size < tok.n_vocab:
        raise ValueError(f"--vocab_size={model.cfg.vocab_size}: the tokenizer of {cfg.data_dir} has {tok.n_vocab} "
                         "tokens")


def restore(state, model, optimizer, scaler, rng):
    """Put a checkpoint's optimizer, loss scaler and both RNGs back in place; its step."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    scaler.load_state_dict(state["scaler"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    return state["step"]


class Log:
    """Progress lines on the first rank's stdout and records in out_dir/log.jsonl: training every log_interval steps
    (tokens/s over the steps since the last line), evaluation (mean loss per length). The first rank claims out_dir
    first: locked until the process ends, and refused if an earlier run's files are there (checkpoint.py)."""

    def __init__(self, cfg, resume, master, step):
        self.cfg, self.master, self.t0, self.step0 = cfg, master, time.time(), step
        if master:
            claim_run_folder(cfg.out_dir, resume)
        self.file = open_log(cfg.out_dir, resume) if master else None

    def write(self, record, line):
        if self.master:
            print(line)
            log_record(self.file, record)

    def train(self, step, loss, lr, grad_norm, mem_bytes, s_per_step, world):
        c = self.cfg
        tokens = (step - self.step0) * c.grad_accum * c.batch_size * world * (pose.window_len(c.method, c.Lc, c.Lt) - 1)
        tok_s, mem, eta = tokens / (time.time() - self.t0), mem_bytes / 2**30, s_per_step * (c.max_steps - step) / 60
        self.write({"step": step, "loss": loss, "lr": lr, "tok_s": tok_s, "mem_gib": mem},
                   f"step {step}/{c.max_steps} | loss {loss:.4f} | lr {lr:.2e} | grad {grad_norm:.2f} | "
                   f"{tok_s:,.0f} tok/s | peak mem {mem:.2f} GiB | ETA {eta:.1f} min")
        self.t0, self.step0 = time.time(), step

    def eval(self, step, losses):
        if losses:
            self.write({"step": step, "eval": losses},
                       f"step {step}: eval loss " + ", ".join(f"@{L}: {v:.4f}" for L, v in losses.items()))


def on_ctrl_c(signum, frame):
    """The first Ctrl-C or SIGTERM (kill, docker stop, timeout, a scheduler) asks the loop to checkpoint its step and
    stop; a second one stops at once."""
    SIGNALS.append(signum)
    if CTRL_C.is_set():
        raise KeyboardInterrupt
    CTRL_C.set()
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    print(f"{name}: finishing this step and writing a checkpoint (a second {name} stops at once)", file=sys.stderr)


if __name__ == "__main__":
    cfg = parse_config(TrainConfig, sys.argv[1:], __doc__)
    on_signals(on_ctrl_c)  # SIGTERM as Ctrl-C; a file-size limit as a full disk
    try:  # a wrong path, a bad checkpoint or corpus, a diverged loss, a full disk, Ctrl-C: one line, not a traceback
        train(cfg)
        if dist.is_initialized():
            dist.destroy_process_group()
        if "RANK" in os.environ:  # under torchrun, leave without the interpreter's teardown: with FSDP on CPU (gloo)
            # it sometimes aborts ("terminate called without an active exception") after every file is written and
            # the process group destroyed, and torchrun then reports a finished run as failed
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    except (ValueError, OSError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except MemoryError as e:  # a step's or an evaluation's (step_memory): the run keeps its last checkpoint
        sys.exit(f"error: {e}; stopped, the last good checkpoint is {last_good(cfg.out_dir)}")
    except (Interrupted, KeyboardInterrupt) as e:  # Interrupted after its step's checkpoint; a second signal at once
        latest = latest_checkpoint(cfg.out_dir)
        print(str(e) or (f"stopped; --init_from=resume continues from {latest}" if latest else
                         "stopped before the first checkpoint: the same command starts the run again"), file=sys.stderr)
        sys.exit(exit_status())
