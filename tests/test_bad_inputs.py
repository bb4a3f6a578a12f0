"""Bad inputs to every script end with one line that names the option or file, no traceback, and nothing written."""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import prepare
import train
from checkpoint import save_pretrained
from model import LLaMA, ModelConfig
from test_reliability import ROOT, TINY, fill, listing, run_main, tiny_cfg, tiny_model, ws  # noqa: F401 (a fixture)
from tokenizer import WEB_BPE, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def hf_copy(folder, name, change=None, text=None):
    """folder/name: the tiny model of folder/good with its config.json changed (`change`) or replaced (`text`)."""
    shutil.copytree(folder / "good", folder / name)
    if text is not None:
        (folder / name / "config.json").write_bytes(text)
    else:
        c = json.loads((folder / "good" / "config.json").read_text())
        (folder / name / "config.json").write_text(json.dumps({k: v for k, v in (c | change).items() if v != "DROP"}))


def data_copy(folder, name, edit):
    """folder/name: folder/tok's prepared splits, then edit(the path of its train split, less the suffix)."""
    shutil.copytree(folder / "tok", folder / name)
    edit(str(folder / name / "train"))


@pytest.fixture(scope="module")
def bad(ws):  # noqa: F811 (test_reliability's fixture, imported above)
    """ws, with more bad inputs: text and jsonl files, damaged prepared data, damaged model folders, earlier runs, a
    second tokenizer."""
    (ws / "latin1.txt").write_bytes("Caf\xe9 au lait, and more words. ".encode("latin-1") * 20)
    (ws / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (ws / "number.jsonl").write_text('{"text": "fine"}\n\n{"text": 5}\n')
    (ws / "null.jsonl").write_text('{"text": null}\n')
    (ws / "list.jsonl").write_text('[1, 2]\n')
    (ws / "blank.jsonl").write_text('\n\n')
    (ws / "notgz.txt.gz").write_bytes(b"plain text, not gzip")
    (ws / "types.toml").write_text("max_steps = 1.5\n")
    (ws / "bool.toml").write_text("grad_accum = true\n")
    (ws / "string.toml").write_text('lr = "fast"\n')
    (ws / "latin1.toml").write_bytes("out_dir = 'caf\xe9'\n".encode("latin-1"))
    (ws / "small.txt").write_text("In the beginning God created the heaven and the earth.")
    (ws / "outside.txt").write_text("a file outside every out_dir\n")
    (ws / "elsewhere").mkdir()
    (ws / "link_dir").symlink_to(ws / "elsewhere")
    # prepared data, damaged
    data_copy(ws, "odd_bin", lambda p: os.truncate(p + ".bin", os.path.getsize(p + ".bin") - 1))
    data_copy(ws, "short_bin", lambda p: os.truncate(p + ".bin", os.path.getsize(p + ".bin") - 2))
    data_copy(ws, "no_bin", lambda p: os.remove(p + ".bin"))
    data_copy(ws, "bad_meta", lambda p: Path(p + ".json").write_text("{not json"))
    meta = json.loads((ws / "tok" / "train.json").read_text())
    data_copy(ws, "meta_dtype", lambda p: Path(p + ".json").write_text(json.dumps(meta | {"dtype": "float99"})))
    data_copy(ws, "float_offsets", lambda p: np.save(p + ".offsets.npy", np.load(p + ".offsets.npy").astype(float)))
    data_copy(ws, "big_ids", lambda p: np.memmap(p + ".bin", dtype=np.uint16, mode="r+").__setitem__(5, 60000))
    data_copy(ws, "short_eval", lambda p: [shutil.copy(ws / "short" / f"eval{x}", ws / "short_eval")  # 5-token books
                                           for x in (".bin", ".offsets.npy", ".json")])
    # a second tokenizer of web-bpe4k's size, two of its tokens' ids swapped
    tok, probe = load_tokenizer("web-bpe4k"), "In the beginning, 12345 words. "
    a, b = sorted(set(tok.encode(probe)))[-2:]
    ranks = dict(line.split() for line in Path(WEB_BPE).read_text().splitlines())  # base64 token -> rank
    token = {int(r): t for t, r in ranks.items()}
    ranks[token[a]], ranks[token[b]] = str(b), str(a)
    (ws / "other_bpe.tiktoken").write_text("".join(f"{t} {r}\n" for t, r in ranks.items()))
    other = load_tokenizer(str(ws / "other_bpe.tiktoken"))
    assert other.n_vocab == tok.n_vocab and other.encode(probe) != tok.encode(probe)
    for split, path in prepare.CORPUS.items():
        prepare.write_split(prepare.read_documents([path])[:8], other, ws / "other", split,
                            spec=str(ws / "other_bpe.tiktoken"))
    save_pretrained(tiny_model(), ws / "own", tokenizer_files=[WEB_BPE])  # carries web-bpe4k
    nan = tiny_model()
    with torch.no_grad():
        nan.norm.weight[0] = float("nan")
    save_pretrained(nan, ws / "nan_weights")
    torch.manual_seed(0)
    save_pretrained(LLaMA(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=4096, max_seq_len=32,
                                      model_type="phi3")), ws / "phi3")
    # model folders, damaged
    for name, change in {"hf_str": {"hidden_size": "64"}, "hf_float": {"num_hidden_layers": 2.5},
                         "hf_bool": {"vocab_size": True}, "hf_zero": {"max_position_embeddings": 0},
                         "hf_heads": {"num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": "DROP"},
                         "hf_kv": {"num_key_value_heads": 3}, "hf_rs_list": {"rope_scaling": [1, 2]},
                         "hf_rs_str": {"rope_scaling": {"rope_type": "linear", "factor": "2"}},
                         "hf_theta_nan": {"rope_theta": float("nan")}, "hf_theta_neg": {"rope_theta": -1.0},
                         "hf_eps_neg": {"rms_norm_eps": -1e-6},
                         "hf_factor_nan": {"rope_scaling": {"rope_type": "linear", "factor": float("nan")}},
                         "hf_no_size": {"hidden_size": "DROP"}, "hf_act": {"hidden_act": "gelu"},
                         "hf_olmo2": {"model_type": "olmo2"},
                         "hf_phi3_window": {"model_type": "phi3", "sliding_window": 16},
                         "hf_qwen2_window": {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16,
                                             "max_window_layers": 1},
                         "hf_qwen3_bias": {"model_type": "qwen3", "attention_bias": True},
                         "hf_phi3_partial": {"model_type": "phi3", "partial_rotary_factor": 0.75},
                         "hf_phi3_keys": {"model_type": "phi3"},
                         "hf_rs_beta": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": "32"}},
                         "hf_rs_truncate": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "truncate": 1}},
                         "hf_rs_l0": {"rope_scaling": {"rope_type": "yarn_pose", "factor": 4.0,
                                                       "original_max_position_embeddings": "8"}},
                         "hf_rs_short": {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0, "2"],
                                                          "long_factor": [1.0, 2.0]}}}.items():
        hf_copy(ws, name, change)
    hf_copy(ws, "hf_not_json", text=b'{"hidden_size": 64,')
    hf_copy(ws, "hf_array", text=b"[64, 2]")
    hf_copy(ws, "hf_latin1", text='{"model_type": "llama\xe9"}'.encode("latin-1"))
    shutil.copytree(ws / "good", ws / "hf_index")
    (ws / "hf_index" / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))
    shutil.copytree(ws / "good", ws / "hf_index_list")
    (ws / "hf_index_list" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))
    (ws / "bad_tok").mkdir()  # a tokenizer.json that is not JSON, alone and in a model's folder
    (ws / "bad_tok" / "tokenizer.json").write_text('{"model": ')
    shutil.copytree(ws / "good", ws / "bad_tok_model")
    shutil.copy(ws / "bad_tok" / "tokenizer.json", ws / "bad_tok_model")
    (ws / "figs").mkdir()  # another evaluation's figures
    (ws / "figs" / "ppl.png").write_bytes(b"a figure")
    (ws / "README.md").write_text("intro\n<!-- results: written by reproduce.py -->\nold\n<!-- /results -->\n")
    # earlier runs
    train.train(tiny_cfg(ws, ws / "run", max_steps=2, eval_docs=0))  # ckpt_0000002, final/, log.jsonl
    (ws / "done").mkdir()  # its checkpoints pruned: only final/ and log.jsonl are left
    shutil.copytree(ws / "run" / "final", ws / "done" / "final")
    shutil.copy(ws / "run" / "log.jsonl", ws / "done" / "log.jsonl")
    shutil.copytree(ws / "run", ws / "link_log", ignore=shutil.ignore_patterns(".lock"))
    os.remove(ws / "link_log" / "log.jsonl")
    (ws / "link_log" / "log.jsonl").symlink_to(ws / "outside.txt")
    shutil.copytree(ws / "run", ws / "dangling", ignore=shutil.ignore_patterns(".lock"))
    (ws / "dangling" / "latest").write_text("ckpt_0000009")
    shutil.copytree(ws / "run", ws / "no_state", ignore=shutil.ignore_patterns(".lock"))
    torch.save({"step": 2}, ws / "no_state" / "ckpt_0000002" / "train_state.pt")
    # inputs to plots.py
    (ws / "res_bad").mkdir()
    (ws / "res_bad" / "ppl.json").write_text("{")
    (ws / "res_keys").mkdir()
    (ws / "res_keys" / "ppl.json").write_text(json.dumps({"models": {"a": {"ppl": {}}}}))
    (ws / "logs_bad" / "a").mkdir(parents=True)
    (ws / "logs_bad" / "a" / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n')
    (ws / "logs_good" / "a").mkdir(parents=True)
    shutil.copy(ws / "run" / "log.jsonl", ws / "logs_good" / "a" / "log.jsonl")
    (ws / "bench_no_b.json").write_text("{}")
    return ws


ERR = r"error: "
TRAIN = ["train.py", "--data_dir={ws}/tok", "--out_dir={run}", *TINY, "--max_steps=2", "--ckpt_interval=1"]
RESUME = TRAIN[:2] + ["--out_dir={ws}/run"] + TRAIN[3:] + ["--init_from=resume", "--eval_docs=0"]
EVAL = ["eval.py", "--data={ws}/tok", "--out={run}/results", "--plots={run}/plots", "--lengths=32",
        "--max_tokens=64", "--passkey_trials=0", "--models={ws}/good"]
PREPARE = ["prepare.py", "--out={run}"]
POSE = ["pose.py", "--Lc=8", "--Lt=32", "--n_samples=10", "--out={run}/coverage.png"]
REPRO = ["reproduce.py", "--runs_dir={run}/runs", "--out={run}/results", "--plots={run}/plots", "--readme={ws}/README.md"]
PLOTS = ["plots.py", "--results={ws}/nowhere", "--logs={ws}/nowhere", "--bench={ws}/nowhere", "--out={run}/plots"]
BENCH = ["bench.py", "--data_dir={ws}/tok", "--out={run}", "--plots={run}/plots", "--reps=1", "--warmup=0",
         "--factors=1", "--Lc=16", "--batch=1", "--device=cpu"]
ENGINEERING = ["bench_engineering.py", "--parts=loss", "--out={run}", "--reps=1", "--warmup=0", "--dim=64",
               "--n_layers=1", "--n_heads=4", "--n_kv_heads=2", "--vocab_size=512", "--Lc=16", "--device=cpu"]
HF_ERRORS = {  # a damaged config.json (ws/NAME) -> the rest of the message after "ws/NAME/config.json: "
    "hf_str": r"hidden_size = '64': expected int",
    "hf_float": r"num_hidden_layers = 2\.5: expected int",
    "hf_bool": r"vocab_size = True: expected int",
    "hf_zero": r"max_position_embeddings = 0: expected a positive size",
    "hf_heads": r"hidden_size = 64 does not split into 6 heads of an even size",
    "hf_kv": r"num_attention_heads = 4 is not a multiple of num_key_value_heads = 3",
    "hf_rs_list": r"rope_scaling = \[1, 2\]: expected dict",
    "hf_rs_str": r"rope type 'linear' needs 'factor', got '2'",
    "hf_theta_nan": r"rope_theta = nan: expected a finite number > 0",
    "hf_theta_neg": r"rope_theta = -1\.0: expected a finite number > 0",
    "hf_eps_neg": r"rms_norm_eps = -1e-06: expected a finite number > 0",
    "hf_factor_nan": r"rope type 'linear' needs 'factor' >= 1, got nan",
    "hf_no_size": r"no 'hidden_size' entry",
    "hf_act": r"hidden_act = 'gelu' is not LLaMA's \('silu'\) and not supported",
    "hf_not_json": r"not valid JSON \(.*\)",
    "hf_array": r"expected a JSON object, got a list",
    "hf_latin1": r"not UTF-8 text \(invalid continuation byte\)",
    "hf_olmo2": r"model_type 'olmo2' is not supported \(supported: llama, mistral, qwen2, qwen3, phi3, gemma\)",
    "hf_phi3_window": r"sliding_window = 16 is shorter than max_position_embeddings = 32: a Phi-3 model with a sliding "
                      r"window is not supported",
    "hf_qwen2_window": r"sliding_window = 16 is shorter than max_position_embeddings = 32: a Qwen2 model with a "
                       r"sliding window is not supported",
    "hf_qwen3_bias": r"attention_bias = True is not Qwen3's \(False\) and not supported",
    "hf_phi3_partial": r"rope type 'default': 'partial_rotary_factor' is not implemented here \(expected only "
                       r"rope_theta\)",
    "hf_rs_beta": r"rope_scaling\.beta_fast = '32': expected a number",
    "hf_rs_truncate": r"rope_scaling\.truncate = 1: expected true or false",
    "hf_rs_l0": r"rope_scaling\.original_max_position_embeddings = '8': expected a positive integer",
    "hf_rs_short": r"rope_scaling\.short_factor = \[1\.0, '2'\]: expected a list of numbers",
}
# id: (script and arguments, the last line of stderr as a regular expression, a path where no file may change)
# {ws}: the fixture's folder, {run}: a fresh out_dir for this case
CASES = {
    # train.py: options, refused as they are parsed
    "train: min_lr nan": (TRAIN + ["--min_lr=nan"], ERR + r"--min_lr=nan: expected a rate in \[0, lr=0\.001\]",
                          "{run}"),
    "train: min_lr > lr": (TRAIN + ["--min_lr=0.01"], ERR + r"--min_lr=0\.01: expected a rate in \[0, lr=0\.001\]",
                           "{run}"),
    "train: lr that overflows the weights": (TRAIN + ["--lr=1e30", "--max_steps=1"],
                                             ERR + r"--lr=1e\+30: expected a rate in \[0, 1\] \(AdamW moves each "
                                                   r"weight by up to about lr a step\)", "{run}"),
    "train: lr beyond float32": (TRAIN + ["--lr=1e39"], ERR + r"--lr=1e\+39: expected a rate in \[0, 1\] .*", "{run}"),
    "train: lr nan": (TRAIN + ["--lr=nan"], ERR + r"--lr=nan: expected a rate in \[0, 1\] .*", "{run}"),
    "train: lr negative": (TRAIN + ["--lr=-1e-3"], ERR + r"--lr=-0\.001: expected a rate in \[0, 1\] .*", "{run}"),
    "train: grad_accum 0": (TRAIN + ["--grad_accum=0"], ERR + r"--grad_accum=0: expected a positive count", "{run}"),
    "train: max_steps negative": (TRAIN + ["--max_steps=-5"], ERR + r"--max_steps=-5: expected a positive count",
                                  "{run}"),
    "train: grad_clip negative": (TRAIN + ["--grad_clip=-1"], ERR + r"--grad_clip=-1\.0: expected a finite number >= 0",
                                  "{run}"),
    "train: grad_clip inf": (TRAIN + ["--grad_clip=inf"], ERR + r"--grad_clip=inf: expected a finite number >= 0",
                             "{run}"),
    "train: weight_decay nan": (TRAIN + ["--weight_decay=nan"],
                                ERR + r"--weight_decay=nan: expected a finite number >= 0", "{run}"),
    "train: unknown decay": (TRAIN + ["--decay=exp"], ERR + r"--decay=exp: expected one of linear, cosine", "{run}"),
    "train: unknown dtype": (TRAIN + ["--dtype=float8"],
                             ERR + r"--dtype=float8: expected one of float32, bfloat16, float16", "{run}"),
    "train: unknown base_dtype": (TRAIN + ["--base_dtype=int8"],
                                  ERR + r"--base_dtype=int8: expected one of float32, bfloat16, float16", "{run}"),
    "train: bf16 base without LoRA": (TRAIN + ["--base_dtype=bfloat16"],
                                      ERR + r"--base_dtype=bfloat16: expected float32, or LoRA .*", "{run}"),
    "train: unknown device": (TRAIN + ["--device=tpu"], ERR + r"--device=tpu: expected auto \| cpu \| cuda .*",
                              "{run}"),
    "train: device that is not a name": (TRAIN + ["--device=cuda:x"], ERR + r"--device=cuda:x: expected auto .*",
                                         "{run}"),
    "train: missing GPU": (TRAIN + ["--device=cuda:7"], ERR + r"--device=cuda:7: this machine has \d+ CUDA device.*",
                           "{run}"),
    "train: mps where torch has none": (TRAIN + ["--device=mps"], ERR + r"--device=mps: .*", "{run}"),
    "train: unknown LoRA target": (TRAIN + ["--lora_rank=4", "--lora_targets=wq,wz"],
                                   ERR + r"--lora_targets=wq,wz: expected a comma-separated subset of "
                                         r"wq,wk,wv,wo,w1,w2,w3", "{run}"),
    "train: LoRA rank negative": (TRAIN + ["--lora_rank=-4"], ERR + r"--lora_rank=-4: expected a finite number >= 0",
                                  "{run}"),
    "train: LoRA alpha 0": (TRAIN + ["--lora_alpha=0"], ERR + r"--lora_alpha=0\.0: expected a positive number",
                            "{run}"),
    "train: log_interval 0": (TRAIN + ["--log_interval=0"], ERR + r"--log_interval=0: expected a positive count",
                              "{run}"),
    "train: rope_factor nan": (TRAIN + ["--rope_factor=nan"], ERR + r"--rope_factor=nan: expected a finite number >= 0",
                               "{run}"),
    "train: rope_factor below 1": (TRAIN + ["--rope_factor=0.5"],
                                   ERR + r"--rope_factor=0\.5: expected 0 \(Lt / L0\) or a factor above 1", "{run}"),
    "train: unknown rope_type": (TRAIN + ["--rope_type=bogus"],
                                 ERR + r"--rope_type=bogus: expected one of keep, none, linear, .*", "{run}"),
    "train: rope_theta 0": (TRAIN + ["--rope_theta=0"], ERR + r"--rope_theta=0\.0: expected a positive base", "{run}"),
    "train: yarn beta nan": (TRAIN + ["--yarn_beta_fast=nan"],
                             ERR + r"--yarn_beta_fast=nan --yarn_beta_slow=1\.0: expected 0 < yarn_beta_slow < "
                                   r"yarn_beta_fast", "{run}"),
    "train: unknown start": (TRAIN + ["--start=middle"], ERR + r"--start=middle: expected one of doc, random", "{run}"),
    "train: unknown text": (TRAIN + ["--text=weird"],
                            ERR + r"unknown text option 'weird'; expected one of skip, contiguous, aligned", "{run}"),
    "train: passkey_share > 1": (TRAIN + ["--passkey_share=1.5"],
                                 ERR + r"--passkey_share=1\.5: expected a share in \[0, 1\]", "{run}"),
    "train: passkey_share nan": (TRAIN + ["--passkey_share=nan"],
                                 ERR + r"--passkey_share=nan: expected a share in \[0, 1\]", "{run}"),
    "train: beta2 = 1": (TRAIN + ["--beta2=1"], ERR + r"--beta2=1\.0: expected a number in \[0, 1\)", "{run}"),
    "train: keep_checkpoints 0": (TRAIN + ["--keep_checkpoints=0"],
                                  ERR + r"--keep_checkpoints=0: expected a positive count", "{run}"),
    "train: heads that do not divide": (TRAIN + ["--n_kv_heads=3"],
                                        ERR + r"--n_heads=4 --n_kv_heads=3 --dim=64: expected n_kv_heads dividing .*",
                                        "{run}"),
    "train: Lc 1": (TRAIN + ["--Lc=1"], ERR + r"--Lc=1: expected 2 or more", "{run}"),
    "train: batch_size 0": (TRAIN + ["--batch_size=0"], ERR + r"--batch_size=0: expected a positive count", "{run}"),
    "train: warmup negative": (TRAIN + ["--warmup_steps=-1"], ERR + r"--warmup_steps=-1: expected a finite number >= 0",
                               "{run}"),
    "train: eval_docs negative": (TRAIN + ["--eval_docs=-1"], ERR + r"--eval_docs=-1: expected a finite number >= 0",
                                  "{run}"),
    "train: ckpt_interval negative": (TRAIN + ["--ckpt_interval=-1"],
                                      ERR + r"--ckpt_interval=-1: expected a finite number >= 0", "{run}"),
    "train: L0 negative": (TRAIN + ["--L0=-1"], ERR + r"--L0=-1: expected a finite number >= 0", "{run}"),
    "train: empty out_dir": (TRAIN + ["--out_dir="], ERR + r"--out_dir=: expected a folder", None),
    "train: not an integer": (TRAIN + ["--max_steps=many"], ERR + r"--max_steps=many: expected an integer", "{run}"),
    "train: not a bool": (TRAIN + ["--tie_embeddings=maybe"], ERR + r"--tie_embeddings=maybe: expected true or false",
                          "{run}"),
    "train: option without a value": (TRAIN + ["--lr"], ERR + r"--lr: options are --key=value", "{run}"),
    "train: TOML float for an int": (TRAIN + ["{ws}/types.toml"], ERR + r"max_steps = 1\.5: expected an integer",
                                     "{run}"),
    "train: TOML bool for an int": (TRAIN + ["{ws}/bool.toml"], ERR + r"grad_accum = True: expected an integer",
                                    "{run}"),
    "train: TOML string for a number": (TRAIN + ["{ws}/string.toml"], ERR + r"--lr=fast: expected a number", "{run}"),
    "train: TOML not UTF-8": (TRAIN + ["{ws}/latin1.toml"], ERR + r"{ws}/latin1.toml: not valid TOML \(.*\)", "{run}"),
    "train: config file that is a folder": (TRAIN + ["{ws}/tok"],
                                            ERR + r"{ws}/tok: Is a directory \(a \.toml config file, or --key=value\)",
                                            "{run}"),
    "train: vocab_size below the data's tokenizer": (TRAIN + ["--vocab_size=256"],
                                                     ERR + r"--vocab_size=256: the tokenizer of {ws}/tok has 4096 "
                                                           r"tokens", "{run}"),
    # train.py: the run's folder
    "train: fresh run into a finished run's folder": (TRAIN[:2] + ["--out_dir={ws}/done"] + TRAIN[3:],
                                                      ERR + r"{ws}/done holds an earlier run \(final, log\.jsonl\); "
                                                            r"--init_from=resume continues it, or choose another "
                                                            r"out_dir", "{ws}/done"),
    "train: resume without a checkpoint": (TRAIN[:2] + ["--out_dir={ws}/done", "--init_from=resume"] + TRAIN[3:],
                                           ERR + r"--init_from=resume: {ws}/done has no checkpoint", "{ws}/done"),
    "train: resume with another Lt": (RESUME + ["--Lt=256"],
                                      ERR + r"--Lt=256 differs from the run being resumed \(Lt = 128 in "
                                            r"{ws}/run/ckpt_0000002\): resume with its settings, or start another "
                                            r"out_dir", "{ws}/run"),
    "train: resume with another method": (RESUME + ["--method=randpos"],
                                          ERR + r"--method=randpos differs from the run being resumed \(method = "
                                                r"'pose' in {ws}/run/ckpt_0000002\).*", "{ws}/run"),
    "train: resume with LoRA": (RESUME + ["--lora_rank=4"],
                                ERR + r"--lora_rank=4 differs from the run being resumed \(lora_rank = 0 in .*",
                                "{ws}/run"),
    "train: resume with another rope factor": (RESUME + ["--rope_factor=8"],
                                               ERR + r"--rope_factor=8\.0 differs from the run being resumed .*",
                                               "{ws}/run"),
    "train: resume on data of another tokenizer": (RESUME + ["--data_dir={ws}/other"],
                                                   ERR + r"{ws}/run/ckpt_0000002 carries its own tokenizer "
                                                         r"\(web-bpe4k\), which is not other-bpe \(prepare "
                                                         r"{ws}/other with the model's tokenizer\)", "{ws}/run"),
    "train: data of another tokenizer than the model's": (TRAIN + ["--data_dir={ws}/other", "--init_from={ws}/own"],
                                                          ERR + r"{ws}/own carries its own tokenizer \(web-bpe4k\), "
                                                                r"which is not other-bpe \(prepare {ws}/other with "
                                                                r"the model's tokenizer\)", "{run}"),
    "train: latest naming a missing checkpoint": (RESUME[:2] + ["--out_dir={ws}/dangling"] + RESUME[3:],
                                                  ERR + r"{ws}/dangling/ckpt_0000009/train_state\.pt: refused or "
                                                        r"unreadable as a weights-only checkpoint \(FileNotFoundError: "
                                                        r".*\)", "{ws}/dangling"),
    "train: train_state.pt of another program": (RESUME[:2] + ["--out_dir={ws}/no_state"] + RESUME[3:],
                                                 ERR + r"{ws}/no_state/ckpt_0000002/train_state\.pt: not a train\.py "
                                                       r"checkpoint's state \(no base_from, config, optimizer, rng, "
                                                       r"scaler, torch_rng, trained\)", "{ws}/no_state"),
    "train: out_dir a symbolic link": (TRAIN[:2] + ["--out_dir={ws}/link_dir"] + TRAIN[3:],
                                       ERR + r"{ws}/link_dir is a symbolic link: a run writes only into a real folder",
                                       "{ws}/elsewhere"),
    "train: log.jsonl a symbolic link": (RESUME[:2] + ["--out_dir={ws}/link_log"] + RESUME[3:] + ["--max_steps=3"],
                                         ERR + r"{ws}/link_log/log\.jsonl is a symbolic link: a run writes only into "
                                               r"its own files", "{ws}/outside.txt"),
    # train.py: what would fail after training, or in it, fails before
    "train: eval documents shorter than Lt": (TRAIN + ["--data_dir={ws}/short_eval"],
                                              ERR + r"{ws}/short_eval/eval: none of its first 2 documents holds the "
                                                    r"128 tokens that evaluating at Lt needs \(the longest has 5 "
                                                    r"after BOS\): prepare longer held-out documents, or set "
                                                    r"--eval_docs=0", "{run}"),
    "train: resume with eval documents shorter than Lt": (RESUME + ["--data_dir={ws}/short_eval", "--eval_docs=2"],
                                                          ERR + r"{ws}/short_eval/eval: none of its first 2 documents "
                                                                r"holds the 128 tokens .*", "{ws}/run"),
    "train: Lt beyond float32 positions": (TRAIN + ["--Lt=1099511627776"],
                                           ERR + r"Lt=1099511627776: expected at most 2\^24 = 16777216 \(RoPE "
                                                 r"computes with float32 positions, exact only that far\)", "{run}"),
    "train: seed beyond torch's": (TRAIN + ["--seed=18446744073709551616"],
                                   ERR + r"--seed=18446744073709551616: expected an integer in \[0, 2\^64\) "
                                         r"\(torch's seeds\)", "{run}"),
    "train: a batch no memory holds": (TRAIN + ["--batch_size=1000000000"],
                                       ERR + r"--batch_size=1000000000 rows of Lc=32 tokens: a step keeps at least "
                                             r"[\d,]+\.\d GiB of activations \(rows × tokens × dim 64 × 4 bytes × 3\), "
                                             r"more than the [\d.]+ GiB this process can have on cpu: lower batch_size "
                                             r"\(a higher grad_accum keeps the batch\)", "{run}"),
    # train.py: prepared data
    "train: train.bin cut short (odd bytes)": (TRAIN + ["--data_dir={ws}/odd_bin"],
                                               ERR + r"{ws}/odd_bin/train\.bin: \d+ bytes is not a whole number of "
                                                     r"uint16 tokens: cut short\?", "{run}"),
    "train: train.bin cut short (a token)": (TRAIN + ["--data_dir={ws}/short_bin"],
                                             ERR + r"{ws}/short_bin/train: the offsets \(ending at \d+\) do not cut "
                                                   r"the \d+ tokens of {ws}/short_bin/train\.bin into documents: "
                                                   r"prepare it again", "{run}"),
    "train: train.bin missing": (TRAIN + ["--data_dir={ws}/no_bin"],
                                 ERR + r"\[Errno 2\] No such file or directory: '{ws}/no_bin/train\.bin'", "{run}"),
    "train: train.json not JSON": (TRAIN + ["--data_dir={ws}/bad_meta"],
                                   ERR + r"{ws}/bad_meta/train\.json: not a prepared split's description "
                                         r"\(JSONDecodeError: .*\)", "{run}"),
    "train: train.json with an unknown dtype": (TRAIN + ["--data_dir={ws}/meta_dtype"],
                                                ERR + r"{ws}/meta_dtype/train\.json: not a prepared split's "
                                                      r"description \(TypeError: .*\)", "{run}"),
    "train: offsets that are not integers": (TRAIN + ["--data_dir={ws}/float_offsets"],
                                             ERR + r"{ws}/float_offsets/train\.offsets\.npy: .*integer.*", "{run}"),
    "train: token ids beyond the tokenizer": (TRAIN + ["--data_dir={ws}/big_ids"],
                                              ERR + r"{ws}/big_ids/train\.bin: token id 60000 is beyond the 4096 "
                                                    r"tokens of web-bpe4k .*", "{run}"),
    "train: data_dir a file": (TRAIN + ["--data_dir={ws}/file.txt"],
                               ERR + r"{ws}/file\.txt/train\.json: no such prepared split \(prepare\.py makes them\)",
                               "{run}"),
    # train.py: model folders
    "train: init_from a file": (TRAIN + ["--init_from={ws}/file.txt"],
                                ERR + r"{ws}/file\.txt: no such checkpoint directory", "{run}"),
    "train: shard index naming a missing file": (TRAIN + ["--init_from={ws}/hf_index"],
                                                 ERR + r"{ws}/hf_index/model\.safetensors\.index\.json names "
                                                       r"model-00002-of-00002\.safetensors, which is not in "
                                                       r"{ws}/hf_index", "{run}"),
    "train: shard index that is not a map": (TRAIN + ["--init_from={ws}/hf_index_list"],
                                             ERR + r"{ws}/hf_index_list/model\.safetensors\.index\.json: expected a "
                                                   r"'weight_map' of tensor names to shard files in .*", "{run}"),
    "train: weights that are not finite": (TRAIN + ["--init_from={ws}/nan_weights"],
                                           ERR + r"{ws}/nan_weights: its weights are not all finite", "{ws}/nan_weights"),
    "train: weights that are not their model_type's": (TRAIN + ["--init_from={ws}/hf_phi3_keys"],
                                                        ERR + r"{ws}/hf_phi3_keys/model\.safetensors: unexpected key "
                                                              r"'model\.layers\.0\.[a-z_.]+' for phi3", "{run}"),
    "train: a scaling the family cannot be written with": (TRAIN + ["--init_from={ws}/phi3", "--rope_type=dynamic"],
                                                           ERR + r"rope type 'dynamic' cannot be written as Phi-3 "
                                                                 r"\(transformers takes only default, longrope; .*\): "
                                                                 r"choose another", "{run}"),
    **{f"train: config.json {name}": (TRAIN + [f"--init_from={{ws}}/{name}"],
                                      ERR + rf"{{ws}}/{name}/config\.json: {why}", "{run}")
       for name, why in HF_ERRORS.items()},
    # eval.py
    "eval: stride above the window": (EVAL + ["--stride=64"],
                                      ERR + r"--stride=64: expected 0 \(= each window\) up to the shortest length 32",
                                      "{run}"),
    "eval: unknown passkey_mode": (EVAL + ["--passkey_mode=magic", "--passkey_trials=1"],
                                   ERR + r"--passkey_mode=magic: expected one of generate, teacher, both", "{run}"),
    "eval: length 1": (EVAL + ["--lengths=1"], ERR + r"--lengths=1: expected comma-separated integers >= 2", "{run}"),
    "eval: lengths not integers": (EVAL + ["--lengths=32,x"],
                                   ERR + r"--lengths=32,x: expected comma-separated integers >= 2", "{run}"),
    "eval: passkey length 0": (EVAL + ["--passkey_lengths=0"],
                               ERR + r"--passkey_lengths=0: expected comma-separated integers >= 1", "{run}"),
    "eval: position_len not a length": (EVAL + ["--position_len=48"],
                                        ERR + r"--position_len=48: expected 0 or one of the lengths 32", "{run}"),
    "eval: depth above 1": (EVAL + ["--passkey_depths=0,2"],
                            ERR + r"--passkey_depths=0,2: expected shares in \[0, 1\], comma-separated", "{run}"),
    "eval: depth nan": (EVAL + ["--passkey_depths=nan"],
                        ERR + r"--passkey_depths=nan: expected shares in \[0, 1\], comma-separated", "{run}"),
    "eval: batch_tokens 0": (EVAL + ["--batch_tokens=0"], ERR + r"--batch_tokens=0: expected a positive count",
                             "{run}"),
    "eval: max_tokens negative": (EVAL + ["--max_tokens=-1"], ERR + r"--max_tokens=-1: expected a finite number >= 0",
                                  "{run}"),
    "eval: passkey_trials negative": (EVAL + ["--passkey_trials=-1"],
                                      ERR + r"--passkey_trials=-1: expected a finite number >= 0", "{run}"),
    "eval: unknown dtype": (EVAL + ["--dtype=float8"],
                            ERR + r"--dtype=float8: expected one of float32, bfloat16, float16", "{run}"),
    "eval: unknown device": (EVAL + ["--device=tpu"], ERR + r"--device=tpu: expected auto .*", "{run}"),
    "eval: no models": (EVAL + ["--models="], ERR + r"--models=: expected comma-separated folders, each name used once",
                        "{run}"),
    "eval: one name twice": (EVAL + ["--models={ws}/good,x={ws}/good,x={ws}/own"],
                             ERR + r"--models=.*: expected comma-separated folders, each name used once", "{run}"),
    "eval: missing data": (EVAL + ["--data={ws}/nowhere"], ERR + r"{ws}/nowhere: no such file or folder", "{run}"),
    "eval: text not UTF-8": (EVAL + ["--data={ws}/latin1.txt"],
                             ERR + r"{ws}/latin1\.txt: not UTF-8 text \(byte 3: invalid continuation byte\)", "{run}"),
    "eval: a bad jsonl line": (EVAL + ["--data={ws}/bad.jsonl"], ERR + r"{ws}/bad\.jsonl:2: not a JSON line \(.*\)",
                               "{run}"),
    "eval: jsonl text not a string": (EVAL + ["--data={ws}/number.jsonl"],
                                      ERR + r"{ws}/number\.jsonl:3: 'text' is a int, not a string of text", "{run}"),
    "eval: train.bin cut short": (EVAL + ["--data={ws}/odd_bin", "--split=train"],
                                  ERR + r"{ws}/odd_bin/train\.bin: \d+ bytes is not a whole number of uint16 tokens: "
                                        r"cut short\?", "{run}"),
    "eval: every document shorter than the window": (EVAL + ["--data={ws}/short", "--lengths=64"],
                                                     ERR + r"no document is long enough for a 64-token window",
                                                     "{run}"),
    "eval: unknown tokenizer": (EVAL + ["--tokenizer=nowhere"],
                                ERR + r"tokenizer 'nowhere': not a built-in name \(web-bpe4k, gpt2:DIR\) nor an "
                                      r"existing path", "{run}"),
    "eval: Meta folder without max_seq_len": (EVAL + ["--models={ws}/meta"],
                                              ERR + r"{ws}/meta is a Meta checkpoint, whose params\.json does not "
                                                    r"record the length .*", "{run}"),
    "eval: data of another tokenizer than the model's": (EVAL + ["--data={ws}/other", "--models={ws}/own"],
                                                         ERR + r"{ws}/other was tokenized by {ws}/other_bpe\.tiktoken "
                                                               r"\(4096 tokens\), not by web-bpe4k \(4096\): prepare "
                                                               r"it again with the model's tokenizer", "{run}"),
    **{f"eval: config.json {name}": (EVAL + [f"--models={{ws}}/{name}"],
                                     ERR + rf"{{ws}}/{name}/config\.json: {why}", "{run}")
       for name, why in HF_ERRORS.items() if name in ("hf_str", "hf_kv", "hf_theta_nan", "hf_not_json", "hf_array")},
    "eval: length beyond float32 positions": (EVAL + ["--lengths=32,33554432"],
                                              ERR + r"--lengths=32,33554432: expected lengths of at most 2\^24 = "
                                                    r"16777216 \(RoPE computes with float32 positions, exact only "
                                                    r"that far\)", "{run}"),
    "eval: plots folder cannot be written": (EVAL[:3] + ["--plots={ws}/file.txt/plots"] + EVAL[4:],
                                             ERR + r"--plots={ws}/file\.txt/plots: expected a folder that can be "
                                                   r"written \({ws}/file\.txt is not a folder this process can write "
                                                   r"in\)", "{ws}/file.txt"),
    "eval: plots holding another evaluation's figures": (EVAL[:3] + ["--plots={ws}/figs"] + EVAL[4:],
                                                         ERR + r"--plots={ws}/figs holds another evaluation's figures "
                                                               r"\({ws}/figs/ppl\.png\): choose another --plots, or "
                                                               r"--plots= for none", "{ws}/figs"),
    "eval: weights that are not finite": (EVAL + ["--models={ws}/nan_weights"],
                                          ERR + r"{ws}/nan_weights: its weights are not all finite", "{run}"),
    "eval: tokenizer.json that is not JSON": (EVAL + ["--tokenizer={ws}/bad_tok"],
                                              ERR + r"{ws}/bad_tok/tokenizer\.json: not a tokenizer the tokenizers "
                                                    r"library can read \(.*\)", "{run}"),
    "eval: a model's tokenizer.json that is not JSON": (EVAL + ["--models={ws}/bad_tok_model"],
                                                        ERR + r"{ws}/bad_tok_model/tokenizer\.json: not a tokenizer "
                                                              r"the tokenizers library can read \(.*\)", "{run}"),
    **{f"eval: config.json {name}": (EVAL + [f"--models={{ws}}/{name}"],
                                     ERR + rf"{{ws}}/{name}/config\.json: {HF_ERRORS[name]}", "{run}")
       for name in ("hf_rs_beta", "hf_rs_short")},
    # prepare.py
    "prepare: text not UTF-8": (PREPARE + ["{ws}/latin1.txt"],
                                r"prepare\.py: error: {ws}/latin1\.txt: not UTF-8 text \(byte 3: invalid continuation "
                                r"byte\)", "{run}"),
    "prepare: a bad jsonl line": (PREPARE + ["{ws}/bad.jsonl"],
                                  r"prepare\.py: error: {ws}/bad\.jsonl:2: not a JSON line \(.*\)", "{run}"),
    "prepare: jsonl text not a string": (PREPARE + ["{ws}/number.jsonl"],
                                         r"prepare\.py: error: {ws}/number\.jsonl:3: 'text' is a int, not a string of "
                                         r"text", "{run}"),
    "prepare: jsonl text null": (PREPARE + ["{ws}/null.jsonl"],
                                 r"prepare\.py: error: {ws}/null\.jsonl:1: 'text' is a NoneType, not a string of text",
                                 "{run}"),
    "prepare: jsonl line not an object": (PREPARE + ["{ws}/list.jsonl"],
                                          r"prepare\.py: error: {ws}/list\.jsonl:1: no 'text' field \(choose another "
                                          r"with --key\)", "{run}"),
    "prepare: unknown --key": (PREPARE + ["--key=body", "{ws}/bad.jsonl"],
                               r"prepare\.py: error: {ws}/bad\.jsonl:1: no 'body' field \(choose another with --key\)",
                               "{run}"),
    "prepare: only blank lines": (PREPARE + ["{ws}/blank.jsonl"],
                                  r"prepare\.py: error: train: no documents in {ws}/blank\.jsonl", "{run}"),
    "prepare: .gz that is not gzip": (PREPARE + ["{ws}/notgz.txt.gz"],
                                      r"prepare\.py: error: {ws}/notgz\.txt\.gz: unreadable \(.*\)", "{run}"),
    "prepare: missing input": (PREPARE + ["{ws}/nowhere.txt"],
                               r"prepare\.py: error: {ws}/nowhere\.txt: no such file or folder", "{run}"),
    "prepare: min_len negative": (PREPARE + ["--min_len=-1", "{ws}/latin1.txt"],
                                  r"prepare\.py: error: --min_len=-1 --pack=None: expected counts >= 0", "{run}"),
    "prepare: pack negative": (PREPARE + ["--pack=-1", "{ws}/latin1.txt"],
                               r"prepare\.py: error: --min_len=0 --pack=-1: expected counts >= 0", "{run}"),
    "prepare: min_len not an integer": (PREPARE + ["--min_len=abc"],
                                        r"prepare\.py: error: argument --min_len: invalid int value: 'abc'", "{run}"),
    "prepare: split a path": (PREPARE + ["--split=../x", "{ws}/latin1.txt"],
                              r"prepare\.py: error: --split=\.\./x: expected a plain name \(train, eval, \.\.\.\)",
                              "{run}"),
    "prepare: unknown tokenizer": (PREPARE + ["--tokenizer=nowhere"],
                                   r"prepare\.py: error: tokenizer 'nowhere': not a built-in name .*", "{run}"),
    "prepare: tokenizer file that is not one": (PREPARE + ["--tokenizer={ws}/file.txt"],
                                                r"prepare\.py: error: tokenizer '{ws}/file\.txt': expected "
                                                r"tokenizer\.json, .*", "{run}"),
    "prepare: every document shorter than min_len": (PREPARE + ["--min_len=100000", "{ws}/small.txt"],
                                                     r"prepare\.py: error: train: all 1 documents are shorter than "
                                                     r"min_len=100000 tokens", "{run}"),
    "prepare: out in a file": (["prepare.py", "--out={ws}/file.txt/tok", "{ws}/small.txt"],
                               r"prepare\.py: error: \[Errno 20\] Not a directory: '{ws}/file\.txt/tok'",
                               "{ws}/file.txt"),
    "prepare: unknown option": (PREPARE + ["--bogus=1"], r"prepare\.py: error: unrecognized arguments: --bogus=1",
                                "{run}"),
    "prepare: tokenizer.json that is not JSON": (PREPARE + ["--tokenizer={ws}/bad_tok", "{ws}/small.txt"],
                                                 r"prepare\.py: error: {ws}/bad_tok/tokenizer\.json: not a tokenizer "
                                                 r"the tokenizers library can read \(.*\)", "{run}"),
    # reproduce.py: what it writes at the end is checked before any run starts
    "reproduce: results folder cannot be written": (REPRO + ["--out={ws}/file.txt/results"],
                                                    ERR + r"--out={ws}/file\.txt/results: expected a folder that can "
                                                          r"be written \(.*\)", "{ws}/file.txt"),
    "reproduce: plots folder cannot be written": (REPRO + ["--plots={ws}/file.txt"],
                                                  ERR + r"--plots={ws}/file\.txt: expected a folder that can be "
                                                        r"written \(.*\)", "{ws}/file.txt"),
    "reproduce: README without its markers": (REPRO + ["--readme={ws}/small.txt"],
                                              ERR + r"{ws}/small\.txt: no <!-- results: written by reproduce\.py --> "
                                                    r"\.\.\. <!-- /results --> section to write the results into",
                                              "{run}"),
    "reproduce: README missing": (REPRO + ["--readme={ws}/nowhere.md"],
                                  ERR + r"--readme={ws}/nowhere\.md: No such file or directory", "{run}"),
    # pose.py (the coverage figure)
    "pose: Lt < Lc": (POSE + ["--Lt=4"], ERR + r"Lt=4 is shorter than Lc=8", "{run}"),
    "pose: n_samples 0": (POSE + ["--n_samples=0"], ERR + r"--n_samples=0: expected a positive count", "{run}"),
    "pose: Lc 0": (POSE + ["--Lc=0"], ERR + r"Lc=0: the training window must hold at least one token", "{run}"),
    "pose: Lc too short for 3 chunks": (POSE + ["--Lc=2"], ERR + r"--Lc=2: expected 3 or more .*", "{run}"),
    "pose: out in a file": (POSE + ["--out={ws}/file.txt/coverage.png"],
                            ERR + r"--out={ws}/file\.txt/coverage\.png: expected a file that can be written "
                                  r"\({ws}/file\.txt is not a folder this process can write in\)", "{ws}/file.txt"),
    "pose: out of an unknown format": (POSE + ["--out={run}/coverage.xyz"],
                                       ERR + r"--out={run}/coverage\.xyz: expected a file name ending in \.eps, .*"
                                             r"\.png, .*", "{run}"),
    "pose: unknown key": (POSE + ["--Lx=1"], ERR + r"unknown config key 'Lx' \(python pose\.py -h lists them\)",
                          "{run}"),
    # plots.py
    "plots: ppl.json not JSON": (PLOTS + ["--results={ws}/res_bad"],
                                 ERR + r"{ws}/res_bad/ppl\.json: not what eval\.py writes \(JSONDecodeError: .*\)",
                                 "{run}"),
    "plots: ppl.json without its keys": (PLOTS + ["--results={ws}/res_keys"],
                                         ERR + r"{ws}/res_keys/ppl\.json: not what eval\.py writes \(KeyError: "
                                               r"'L0'\)", "{run}"),
    "plots: a bad log.jsonl line": (PLOTS + ["--logs={ws}/logs_bad"],
                                    ERR + r"{ws}/logs_bad/a/log\.jsonl:2: not a JSON line \(.*\)", "{run}"),
    "plots: bench.json not JSON": (PLOTS + ["--bench={ws}/file.txt"],
                                   ERR + r"{ws}/file\.txt: not what bench\.py writes \(JSONDecodeError: .*\)",
                                   "{run}"),
    "plots: bench.json without part b": (PLOTS + ["--bench={ws}/bench_no_b.json"],
                                         ERR + r"{ws}/bench_no_b\.json: not what bench\.py writes \(KeyError: "
                                               r"'b'\)", "{run}"),
    "plots: out a file": (PLOTS + ["--logs={ws}/logs_good", "--out={ws}/file.txt"],
                          ERR + r"--out={ws}/file\.txt: expected a folder that can be written \({ws}/file\.txt is "
                                r"not a folder this process can write in\)", "{ws}/file.txt"),
    "plots: unknown key": (PLOTS + ["--result=x"], ERR + r"unknown config key 'result' .*", "{run}"),
    # bench.py
    "bench: reps 0": (BENCH + ["--reps=0"], ERR + r"--reps=0: expected 1 or more", "{run}"),
    "bench: warmup negative": (BENCH + ["--warmup=-1"], ERR + r"--warmup=-1: expected 0 or more", "{run}"),
    "bench: threads negative": (BENCH + ["--threads=-2"], ERR + r"--threads=-2: expected 0 or more", "{run}"),
    "bench: Lc 0": (BENCH + ["--Lc=0"], ERR + r"--Lc=0: expected 1 or more", "{run}"),
    "bench: factors not integers": (BENCH + ["--factors=1,x"],
                                    ERR + r"--factors=1,x: expected comma-separated integers >= 1", "{run}"),
    "bench: factor 0": (BENCH + ["--factors=0"], ERR + r"--factors=0: expected comma-separated integers >= 1",
                        "{run}"),
    "bench: unknown device": (BENCH + ["--device=tpu"], ERR + r"--device=tpu: expected auto .*", "{run}"),
    "bench: missing data": (BENCH + ["--data_dir={ws}/nowhere"],
                            ERR + r"(--data_dir={ws}/nowhere: )?{ws}/nowhere/train\.json: no such prepared split "
                                  r"\(prepare\.py makes them\)", "{run}"),
    "bench: damaged data": (BENCH + ["--data_dir={ws}/odd_bin"],
                            ERR + r"{ws}/odd_bin/train\.bin: \d+ bytes is not a whole number of uint16 tokens: cut "
                                  r"short\?", "{run}"),
    "bench: documents shorter than the longest window": (BENCH + ["--factors=100000"],
                                                         ERR + r".*{ws}/tok.* 1600000 tokens.*", "{run}"),
    "bench: out a file": (BENCH + ["--out={ws}/file.txt"],
                          ERR + r"--out={ws}/file\.txt: expected a folder that can be written \({ws}/file\.txt is "
                                r"not a folder this process can write in\)", "{ws}/file.txt"),
    "bench: plots in a file": (BENCH + ["--plots={ws}/file.txt/plots"],
                               ERR + r"--plots={ws}/file\.txt/plots: expected a folder that can be written "
                                     r"\({ws}/file\.txt is not .*\)", "{ws}/file.txt"),
    # bench_engineering.py
    "engineering: unknown part": (ENGINEERING + ["--parts=loss,speed"],
                                  ERR + r"--parts=loss,speed: unknown speed; expected some of .*", "{run}"),
    "engineering: length 0": (ENGINEERING + ["--lengths=256,0"],
                              ERR + r"--lengths=256,0: expected comma-separated integers >= 1", "{run}"),
    "engineering: unknown gpu_shape": (ENGINEERING + ["--gpu_shape=big"], ERR + r"--gpu_shape=big: expected .*",
                                       "{run}"),
    "engineering: peak_tflops nan": (ENGINEERING + ["--peak_tflops=nan"],
                                     ERR + r"--peak_tflops=nan: expected a positive number", "{run}"),
    "engineering: peak_tflops negative": (ENGINEERING + ["--peak_tflops=-1"],
                                          ERR + r"--peak_tflops=-1\.0: expected a positive number", "{run}"),
    "engineering: dim 0": (ENGINEERING + ["--dim=0"], ERR + r"--dim=0: expected 1 or more", "{run}"),
    "engineering: heads that do not divide": (ENGINEERING + ["--n_heads=7"],
                                              ERR + r"--n_heads=7 --n_kv_heads=2 --dim=64: expected n_kv_heads "
                                                    r"dividing n_heads, and dim a multiple of n_heads with an even "
                                                    r"quotient", "{run}"),
    "engineering: out a file": (ENGINEERING + ["--out={ws}/file.txt"],
                                ERR + r"--out={ws}/file\.txt: expected a folder that can be written .*",
                                "{ws}/file.txt"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_bad_input_gives_one_clear_line_and_writes_nothing(bad, case, capfd, monkeypatch):
    argv, message, keep = CASES[case]
    before = keep and listing(fill(keep, bad, case))
    code, err = run_main([fill(a, bad, case) for a in argv], capfd, monkeypatch)
    assert code not in (0, None), err[-2000:]
    assert "Traceback" not in err
    assert re.fullmatch(fill(message, bad, case, re.escape), err.strip().splitlines()[-1]), err[-2000:]
    assert before == (keep and listing(fill(keep, bad, case))), "a failed run wrote or changed files"


@pytest.mark.parametrize("script", ["train.py", "eval.py", "prepare.py", "pose.py", "plots.py", "bench.py",
                                    "bench_engineering.py"])
def test_help_prints_help_and_does_nothing_else(script, capfd, monkeypatch):
    """-h prints the options and exits 0; nothing is written (pose.py -h once redrew plots/coverage.png)."""
    folders = [os.path.join(ROOT, d) for d in ("plots", "results", "out", "data")]
    before = [listing(f) for f in folders]
    code, err, out = run_main([script, "-h"], capfd, monkeypatch, stdout=True)
    assert code == 0 and err == "" and "--" in out
    assert before == [listing(f) for f in folders]
