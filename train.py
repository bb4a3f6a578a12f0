"""train.py: pretrain a tiny LLaMA, or extend a LLaMA's context with PoSE / Full-length / RandPos / plain windows.

    python train.py configs/tiny_pretrain.toml                      # a tiny base model on CPU
    python train.py configs/tiny_pose.toml --max_steps=50           # extend it 8x with PoSE
    torchrun --nproc_per_node=8 train.py configs/llama2_7b_pose_16k.toml --fsdp=true
    python train.py -h                                              # every option

One plain loop for all of them: sample windows (pose.py), forward with explicit positions (model.py), AdamW with
warm-up and decay. Checkpoints are Hugging Face directories (plus train_state.pt for resuming) written atomically;
the final model is out_dir/final, which transformers loads as it is.
"""
import json
import math
import os
import resource
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import model as M
import pose
from checkpoint import load_tensors, from_pretrained, save_pretrained
from config import parse_config
from eval import perplexity
from passkey import passkey_example
from prepare import TokenDataset
from tokenizer import load_tokenizer, start_id, tokenizer_files


@dataclass
class TrainConfig:
    # data
    data_dir: str = "data/tok/web-bpe4k"  # a folder written by prepare.py, holding train.* and eval.* splits
    start: str = "doc"          # doc: a window begins at its document's start (BOS at position 0), as the official
                                # code; random: at a random offset, with the document's BOS put first
    # the model: "scratch", "resume" (out_dir's latest checkpoint), or a Hugging Face / Meta / project folder
    init_from: str = "scratch"  # where the model comes from
    L0: int = 0                 # the length it was pretrained at; 0: its config's (Meta checkpoints must set it)
    dim: int = 256              # width (init_from=scratch only, as the five below)
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
    passkey_share: float = 0.0  # this share of rows starts with a synthetic passkey prompt and its answer
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
    dtype: str = "float32"      # float32 | bfloat16 | float16 (autocast; the weights stay float32)
    grad_checkpointing: bool = False  # recompute each block in the backward pass: less memory, ~30% more time
    compile: bool = False       # torch.compile the model
    fsdp: bool = False          # under torchrun: FSDP2 fully_shard instead of DDP
    seed: int = 1337            # data order and initialisation
    # logging, evaluation, checkpoints
    out_dir: str = "out/run"    # checkpoints, log.jsonl and final/ (a Hugging Face folder)
    log_interval: int = 10      # steps between log lines
    eval_interval: int = 100    # steps between evaluations; 0: only at the end
    eval_docs: int = 8          # evaluation (perplexity at Lc and Lt, stride Lc) reads this many held-out documents
    eval_tokens: int = 4096     # ... each cut to its first max(eval_tokens, Lt + 1) tokens
    ckpt_interval: int = 100    # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 1   # how many checkpoints to keep


# ----------------------------------------------------------------------------- config
def check_config(cfg):
    if cfg.method not in pose.METHODS:
        sys.exit(f"error: unknown method {cfg.method!r}; expected one of {', '.join(pose.METHODS)}")
    if cfg.Lt < cfg.Lc:
        sys.exit(f"error: Lt={cfg.Lt} is shorter than Lc={cfg.Lc}")
    if not 1 <= cfg.num_chunks <= cfg.Lc:
        sys.exit(f"error: num_chunks={cfg.num_chunks} must be between 1 and Lc={cfg.Lc}")
    if cfg.text not in pose.TEXTS:
        sys.exit(f"error: unknown text option {cfg.text!r}; expected one of {', '.join(pose.TEXTS)}")
    if cfg.base_dtype != "float32" and not (cfg.lora_rank and cfg.dtype == cfg.base_dtype):
        sys.exit(f"error: base_dtype={cfg.base_dtype} needs LoRA (lora_rank > 0) and dtype={cfg.base_dtype} autocast")
    if cfg.rope_type == "longrope":
        sys.exit("error: rope_type=longrope needs per-dimension factors, which only a checkpoint's config gives: keep "
                 "them with rope_type=keep, or choose linear, ntk, dynamic, yarn, yarn_pose or llama3")
    if cfg.rope_type not in ("keep", "none") + M.ROPE_TYPES:
        sys.exit(f"error: unknown rope_type {cfg.rope_type!r}")
    if cfg.start not in ("doc", "random"):
        sys.exit(f"error: unknown start {cfg.start!r}; expected doc or random")


# ----------------------------------------------------------------------------- data
def window_len(cfg):
    return cfg.Lt if cfg.method == "full" else cfg.Lc


def get_batch(data, cfg, rng, rows, tok=None):
    """`rows` training windows: (x, pos, y), each (rows, T - 1) int64, x/pos the input and y the next tokens.

    Each window is cut by pose.sample from a random document (drawn in proportion to its length) that holds the
    window: from the document's first tokens -- 5·Lc for PoSE, as the official code, Lt for full, Lc for the others
    -- so that chunk 0 starts with the document's BOS at position 0 (start="doc"); or, with start="random", from as
    many tokens at a random offset, with the document's BOS put in front (where documents' starts are little text).
    With passkey_share, that share of rows begins with a synthetic passkey prompt and its answer (tokenizer `tok`),
    at the window's positions -- under PoSE with the skip between the key and the question (see passkey_row)."""
    need = cfg.Lt if cfg.method == "full" or cfg.text == "aligned" else cfg.Lc
    docs = data.docs_at_least(need)
    if len(docs) == 0:
        raise ValueError(f"no document in {cfg.data_dir} has the {need} tokens a {cfg.method} window needs")
    weights = data.lengths[docs] / data.lengths[docs].sum()
    span = max(pose.DOC_CAP * cfg.Lc, need) if cfg.method == "pose" else window_len(cfg)  # what a window reads
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
    answer, the rest of the window the text it held. Under PoSE the window's first skip is moved to a point drawn
    between the end of the key line and the question, so that the key-to-question distance is the one the skip
    stretches (by u_1, up to Lt - Lc): a short window then teaches retrieval across up to Lt tokens, which is what
    the passkey test asks for. Elsewhere in the window, and for the other methods, positions are the window's."""
    example, p = passkey_example(tok, len(tokens), rng)
    tokens = np.concatenate([example, tokens[:len(tokens) - len(example)]])
    if cfg.method == "pose" and cfg.num_chunks > 1:
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


# ----------------------------------------------------------------------------- model, context extension, LoRA
def extend_context(mcfg, cfg):
    """The model config with the RoPE scaling that maps positions [0, Lt) onto what the model knows.

    The factor is s = Lt / L0, L0 being the length the model was *pretrained* at (its config's, or cfg.L0), not the
    training window Lc: Llama-2 (L0 = 4096) trained on 2k windows for 16k gets s = 4. YaRN, llama3 and dynamic
    remember L0; linear and fixed NTK need only s."""
    if cfg.rope_type == "keep":
        return mcfg
    L0 = cfg.L0 or mcfg.original_len
    factor = cfg.rope_factor or cfg.Lt / L0
    if cfg.rope_type != "none" and factor <= 1:
        raise ValueError(f"Lt={cfg.Lt} is within the length the model was pretrained at (L0={L0}): there is nothing "
                         "to extend (rope_type=keep or none), or set rope_factor")
    rs = {"none": None, "ntk": {"alpha": factor},
          "llama3": {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0}}.get(cfg.rope_type,
                                                                                              {"factor": factor})
    if rs is not None:
        rs = {"rope_type": cfg.rope_type} | rs
        if cfg.rope_type not in ("linear", "ntk"):
            rs["original_max_position_embeddings"] = L0
        if cfg.rope_type in ("yarn", "yarn_pose"):
            rs |= {"beta_fast": cfg.yarn_beta_fast, "beta_slow": cfg.yarn_beta_slow}
    return M.ModelConfig(**(asdict(mcfg) | {"rope_scaling": rs, "max_seq_len": max(cfg.Lt, L0)}))


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) · B A x with W frozen; B starts at zero, so training starts from the base model."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def add_lora(model, cfg):
    """Freeze the model, add adapters to lora_targets, unfreeze embeddings / norms if asked. What is trained is
    float32 whatever the frozen base's dtype: at lr 2e-5, AdamW's steps are far below bfloat16's spacing near 1.0
    (2^-7), so a bfloat16 norm weight would never move."""
    targets = set(cfg.lora_targets.split(","))
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for parent in (layer.attention, layer.feed_forward):
            for name in targets & set(dict(parent.named_children())):
                setattr(parent, name, LoRALinear(getattr(parent, name), cfg.lora_rank, cfg.lora_alpha))
    for name, p in model.named_parameters():
        if (cfg.lora_train_embeddings and name.startswith(("tok_embeddings", "output"))) or \
           (cfg.lora_train_norms and name.endswith("norm.weight")):
            p.requires_grad_(True)
        if p.requires_grad:
            p.data = p.data.float()  # in place: a tied embedding stays one parameter


def merge_lora(sd, cfg):
    """A full state dict with LoRA adapters -> the plain LLaMA one, each B·A·(alpha / rank) folded into its weight."""
    scale, out = cfg.lora_alpha / max(cfg.lora_rank, 1), {}
    for k, v in sd.items():
        if k.endswith(".base.weight"):
            stem = k[:-len(".base.weight")]
            out[stem + ".weight"] = v + (sd[stem + ".B"] @ sd[stem + ".A"]).to(v.dtype) * scale
        elif not k.endswith((".A", ".B")):
            out[k] = v
    return out


def load_model(init_from, cfg):
    if init_from == "scratch":
        return M.LLaMA(M.ModelConfig(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                     n_kv_heads=cfg.n_kv_heads, vocab_size=cfg.vocab_size,
                                     rope_theta=cfg.rope_theta, max_seq_len=cfg.Lc,
                                     tie_embeddings=cfg.tie_embeddings))
    return from_pretrained(init_from, max_seq_len=cfg.L0 or None, dtype=getattr(torch, cfg.base_dtype))


# ----------------------------------------------------------------------------- checkpoints
def latest_checkpoint(out_dir):
    try:
        with open(os.path.join(out_dir, "latest")) as f:
            return os.path.join(out_dir, f.read().strip())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def full_state(model, optimizer=None):
    """Whole (unsharded, CPU) state dicts of the model and optimizer, also under DDP and FSDP (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=opts) if optimizer else (get_model_state_dict(model, options=opts), None)


def save_model(model, cfg, path, tok_files=()):
    """The model, adapters merged, as a Hugging Face directory with its tokenizer (every rank must call it)."""
    sd, _ = full_state(model)
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_pretrained(raw_model(model), path, merge_lora(sd, cfg), tokenizer_files=tok_files)


def save_checkpoint(model, optimizer, scaler, step, rng, cfg, base_from, tok_files=()):
    """out_dir/ckpt_STEP: the merged model as a HF directory + train_state.pt; then `latest` is switched to it.

    The pointer moves only once the directory is complete, so a crash mid-save leaves the last good one."""
    model_sd, optim_sd = full_state(model, optimizer)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    name = f"ckpt_{step:07d}"
    tmp = os.path.join(cfg.out_dir, f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(raw_model(model), tmp, merge_lora(model_sd, cfg), tokenizer_files=tok_files)
    trained = {k for k, p in raw_model(model).named_parameters() if p.requires_grad}
    with open(os.path.join(tmp, "train_state.pt"), "wb") as f:
        torch.save({"trained": {k: v for k, v in model_sd.items() if k in trained} if cfg.lora_rank else {},
                    "optimizer": optim_sd, "scaler": scaler.state_dict(), "step": step, "base_from": base_from,
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "config": asdict(cfg)}, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the directory is renamed into place (as save_pretrained's files)
    shutil.rmtree(os.path.join(cfg.out_dir, name), ignore_errors=True)
    os.replace(tmp, os.path.join(cfg.out_dir, name))
    _write_atomic(os.path.join(cfg.out_dir, "latest"), name)
    old = sorted(d for d in os.listdir(cfg.out_dir) if d.startswith("ckpt_") and d != name)
    for d in old[:max(len(old) - cfg.keep_checkpoints + 1, 0)]:
        shutil.rmtree(os.path.join(cfg.out_dir, d), ignore_errors=True)


def peak_memory_gib(device):
    """This process's peak memory: the allocator's on a GPU; on a CPU the resident set's high-water mark, VmHWM,
    which starts afresh in every process (getrusage's ru_maxrss is carried over from a parent across exec)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def raw_model(model):
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------- evaluation
def evaluate(model, docs, cfg, bos_id, ctx, device):
    """{L: mean next-token loss} at L = Lc and Lt, by eval.py's perplexity() (sliding window, stride Lc)."""
    model.eval()
    with ctx:
        out = {L: perplexity(model, docs, L, bos_id=bos_id, stride=cfg.Lc, device=device)["nll"]
               for L in sorted({cfg.Lc, cfg.Lt})}
    model.train()
    return out


# ----------------------------------------------------------------------------- the loop
def train(cfg):
    check_config(cfg)
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world = 0, 1
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if ddp:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    say(json.dumps(asdict(cfg)))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # the same on every rank: each takes its own rows of one global batch
    train_data, eval_data = TokenDataset(cfg.data_dir, "train"), TokenDataset(cfg.data_dir, "eval")
    tok, tok_files = load_tokenizer(train_data.meta["tokenizer"]), tokenizer_files(train_data.meta["tokenizer"])
    eval_docs = [eval_data.doc(i)[:max(cfg.eval_tokens, cfg.Lt + 1)] for i in range(min(cfg.eval_docs, len(eval_data)))]
    get_batch(train_data, cfg, np.random.default_rng(), 1, tok)  # a corpus no window fits fails now, not mid-run

    resume = latest_checkpoint(cfg.out_dir) if cfg.init_from == "resume" else None
    if cfg.init_from == "resume" and resume is None:
        sys.exit(f"error: init_from=resume but {cfg.out_dir} has no checkpoint")
    if cfg.init_from != "resume" and latest_checkpoint(cfg.out_dir):
        sys.exit(f"error: {cfg.out_dir} already holds a run; --init_from=resume continues it, or choose another out_dir")
    state = load_tensors(os.path.join(resume, "train_state.pt")) if resume else None
    base_from = state["base_from"] if state else cfg.init_from
    if state and not cfg.lora_rank:  # fully trained: the checkpoint is the model, already extended
        model = from_pretrained(resume)
    else:  # a fresh run, or LoRA, whose frozen base comes from where the run began
        model = load_model(base_from, cfg)
        model.cfg = extend_context(model.cfg, cfg)
        model.rope = M.RoPE(model.cfg)
    if model.cfg.vocab_size < train_data.meta["n_vocab"]:
        sys.exit(f"error: the tokenizer of {cfg.data_dir} has {train_data.meta['n_vocab']} tokens, "
                 f"the model only {model.cfg.vocab_size}")
    if cfg.lora_rank:
        add_lora(model, cfg)
        if state:
            model.load_state_dict(state["trained"], strict=False)
    model.gradient_checkpointing = cfg.grad_checkpointing
    model.to(device)
    say(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trained; rope {model.cfg.rope_scaling}")

    if ddp and cfg.fsdp:
        from torch.distributed.fsdp import fully_shard
        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
    elif ddp:
        model = nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=cfg.dtype == "float16")
    step = 0
    if state:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        scaler.load_state_dict(state["scaler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        say(f"resumed from {resume} at step {step}")
    fwd = torch.compile(model) if cfg.compile else model
    ctx = nullcontext() if cfg.dtype == "float32" else torch.autocast(device.split(":")[0], dtype=getattr(torch, cfg.dtype))
    os.makedirs(cfg.out_dir, exist_ok=True)
    log = open(os.path.join(cfg.out_dir, "log.jsonl"), "a" if resume else "w") if master else None

    def run_eval():
        losses = evaluate(raw_model(model), eval_docs, cfg, start_id(tok), ctx, device)
        say(f"step {step}: eval loss " + ", ".join(f"@{L}: {v:.4f}" for L, v in losses.items()))
        if log:
            log.write(json.dumps({"step": step, "eval": losses}) + "\n")
            log.flush()

    t0, t_start, start_step, logged, T = time.time(), time.time(), step, step, window_len(cfg) - 1
    while step < cfg.max_steps:
        lr = get_lr(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, pos, y = (t[rank * cfg.batch_size:(rank + 1) * cfg.batch_size].to(device)
                         for t in get_batch(train_data, cfg, rng, cfg.batch_size * world, tok))
            sync = micro == cfg.grad_accum - 1 or not ddp or cfg.fsdp
            with ctx, (nullcontext() if sync else model.no_sync()):
                loss = fwd(x, pos, y) / cfg.grad_accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if ddp:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip else torch.zeros(())
        # stop before the update: a NaN step would poison the weights and every checkpoint after (fp16's scaler
        # skips steps with inf gradients itself). Steps count from 1, as in the log and the checkpoint names.
        if not torch.isfinite(loss_sum) or not (scaler.is_enabled() or math.isfinite(grad_norm.item())):
            raise FloatingPointError(f"loss {loss_sum.item():.4g}, gradient norm {grad_norm.item():.4g} at step "
                                     f"{step + 1}; stopped, the last good checkpoint is "
                                     f"{latest_checkpoint(cfg.out_dir)}")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            dt = time.time() - t0
            tok_s = (step - logged) * cfg.grad_accum * cfg.batch_size * world * T / dt
            eta = (time.time() - t_start) / (step - start_step) * (cfg.max_steps - step)
            mem = peak_memory_gib(device)
            say(f"step {step}/{cfg.max_steps} | loss {loss_sum.item():.4f} | lr {lr:.2e} | grad {grad_norm.item():.2f} "
                f"| {tok_s:,.0f} tok/s | peak mem {mem:.2f} GiB | ETA {eta / 60:.1f} min")
            if log:
                log.write(json.dumps({"step": step, "loss": loss_sum.item(), "lr": lr, "tok_s": tok_s, "mem_gib": mem})
                          + "\n")
                log.flush()
            t0, logged = time.time(), step
        if cfg.eval_interval and step % cfg.eval_interval == 0:
            run_eval()
        if (cfg.ckpt_interval and step % cfg.ckpt_interval == 0) or step == cfg.max_steps:
            save_checkpoint(model, optimizer, scaler, step, rng, cfg, base_from, tok_files)
    if not cfg.eval_interval or step % cfg.eval_interval:
        run_eval()
    save_model(model, cfg, os.path.join(cfg.out_dir, "final"), tok_files)
    say(f"saved {os.path.join(cfg.out_dir, 'final')} ({(time.time() - t_start) / 60:.1f} min)")
    if ddp:
        dist.destroy_process_group()
    return model


if __name__ == "__main__":
    try:  # a wrong path, a bad checkpoint or corpus, a diverged loss: one line, not a traceback
        train(parse_config(TrainConfig, sys.argv[1:], __doc__))
        if "RANK" in os.environ:  # under torchrun, leave without the interpreter's teardown: with FSDP on CPU (gloo)
            # it sometimes aborts ("terminate called without an active exception") after every file is written and
            # the process group destroyed, and torchrun then reports a finished run as failed
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    except (ValueError, OSError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
