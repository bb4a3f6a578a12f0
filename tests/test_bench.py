"""bench.py and bench_engineering.py run end to end at toy size on a CPU, write what they promise, and answer -h."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import bench
import bench_engineering
import model
import prepare
from chunked_loss import chunked_cross_entropy
from tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_and_loss_comparison_at_toy_size(tmp_path):
    pytest.importorskip("transformers")
    toy = dict(device="cpu", reps=1, warmup=0, gpu_compile=False, dim=64, n_layers=1, n_heads=4, n_kv_heads=2,
               vocab_size=512, out=str(tmp_path))
    res = bench_engineering.main(bench_engineering.EngineeringConfig(parts="gpu,loss", **toy),
                                 "python bench_engineering.py --parts=gpu,loss")
    g = json.loads((tmp_path / "bench_gpu.json").read_text())["gpu"]
    assert g["shape"] == "toy" and {r["model"] for r in g["throughput"]} == {"model.py", "transformers"}
    assert g["full"]["tokens"] == g["Lt"] - 1 and g["pose"]["tokens"] == g["Lc"] - 1 and g["eval"]["tokens"] == 1024
    assert all(r["tok_s"] > 0 and r["mfu"] > 0 for r in g["throughput"])
    assert set(json.loads((tmp_path / "bench_engineering.json").read_text())) == {"loss"}  # gpu has its own file
    md = (tmp_path / "bench_engineering.md").read_text()
    assert "## gpu: toy" in md and "## loss: " in md and "checkpointed chunks" in md and "target |" not in md
    assert model.chunked_cross_entropy is chunked_cross_entropy  # the comparison swapped it in and out
    losses = res["loss"]["rows"][0]["step_s"]
    assert set(losses) == {"model.py", "checkpointed chunks", "full logits"} and min(losses.values()) > 0

    bench_engineering.main(bench_engineering.EngineeringConfig(parts="loss", **toy), "again")
    assert "## gpu: toy" in (tmp_path / "bench_engineering.md").read_text()  # a later CPU run keeps the GPU table


def test_pose_vs_full_steps_from_no_extension_up(tmp_path):
    """Lt = Lc (nothing to extend: no RoPE scaling) and 2·Lc: PoSE's step reads Lc tokens at every Lt."""
    prepare.write_split(prepare.read_documents([prepare.CORPUS["train"]])[:4], load_tokenizer("web-bpe4k"),
                        str(tmp_path), "train")
    bc = bench.BenchConfig(device="cpu", reps=1, warmup=0, factors="1,2", batch=1, data_dir=str(tmp_path),
                           out=str(tmp_path), plots=str(tmp_path))
    b = bench.main(bc, "python bench.py --factors=1,2")["b"]
    Lc = bc.Lc
    assert [b[m][str(Lt)]["tokens"] for m in ("pose", "full") for Lt in (Lc, 2 * Lc)] == [Lc - 1, Lc - 1, Lc - 1,
                                                                                          2 * Lc - 1]
    assert all(r["mem_gib"] > 0 and r["step_s"] > 0 for m in ("pose", "full") for r in b[m].values())
    assert json.loads((tmp_path / "bench.json").read_text()) == {"b": b}
    md = (tmp_path / "bench.md").read_text()
    assert (tmp_path / "memory_time.png").exists() and "| 256 (2·Lc) |" in md and "target |" not in md


@pytest.mark.parametrize("script", ["bench.py", "bench_engineering.py"])
def test_help_prints_every_option_and_writes_nothing(tmp_path, script):
    run = subprocess.run([sys.executable, str(REPO / script), "-h"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.startswith(f"{script}: ") and "--reps=5" in run.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cfg, option", [(bench.BenchConfig(factors="1,0"), "factors"),
                                         (bench.BenchConfig(batch=0), "batch"),
                                         (bench.BenchConfig(warmup=-1), "warmup"),
                                         (bench.BenchConfig(device="tpu"), "device"),
                                         (bench_engineering.EngineeringConfig(parts="model,b"), "parts"),
                                         (bench_engineering.EngineeringConfig(lengths="256,x"), "lengths")])
def test_bad_options_are_named(cfg, option):
    bench.BenchConfig().check()
    bench_engineering.EngineeringConfig().check()
    with pytest.raises(ValueError, match=f"--{option}="):
        cfg.check()
