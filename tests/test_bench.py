"""bench.py's GPU check and loss comparison run end to end at toy size on a CPU, and write what they promise."""
import json

import pytest

import bench as B
import prepare
from tokenizer import load_tokenizer

pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_gpu_check_and_loss_comparison_at_toy_size(tmp_path):
    loss = B.M.chunked_cross_entropy
    bc = B.BenchConfig(parts="gpu,d", device="cpu", reps=1, warmup=0, gpu_compile=False, a_dim=64, a_layers=1,
                       a_heads=4, a_kv_heads=2, a_vocab=512, out=str(tmp_path), plots=str(tmp_path))
    res = B.main(bc, "python bench.py --parts=gpu,d")
    g = json.loads((tmp_path / "bench_gpu.json").read_text())["gpu"]
    assert g["shape"] == "toy" and {r["model"] for r in g["throughput"]} == {"model.py", "transformers"}
    assert g["full"]["tokens"] == g["Lt"] - 1 and g["pose"]["tokens"] == g["Lc"] - 1 and g["eval"]["tokens"] == 1024
    assert all(r["tok_s"] > 0 and r["mfu"] > 0 for r in g["throughput"])
    assert set(json.loads((tmp_path / "bench.json").read_text())) == {"d"}  # the GPU part has a file of its own
    md = (tmp_path / "bench.md").read_text()
    assert "## gpu: toy" in md and "## (d) the loss" in md and "checkpointed chunks / model.py's loss" in md
    assert B.M.chunked_cross_entropy is loss  # the comparison swapped it in and out
    losses = res["d"]["rows"][0]["step_s"]
    assert set(losses) == {"model.py", "checkpointed chunks", "full logits"} and min(losses.values()) > 0

    B.main(B.BenchConfig(parts="d", device="cpu", reps=1, warmup=0, a_dim=64, a_layers=1, a_heads=4, a_kv_heads=2,
                         a_vocab=512, out=str(tmp_path), plots=str(tmp_path)), "again")
    assert "## gpu: toy" in (tmp_path / "bench.md").read_text()  # a later CPU run keeps the GPU table


def test_pose_vs_full_steps_from_no_extension_up(tmp_path):
    """Part (b) from Lt = Lc (nothing to extend: no RoPE scaling) to 2·Lc: PoSE's step reads Lc tokens at every Lt."""
    prepare.write_split(prepare.read_documents([prepare.CORPUS["train"]])[:4], load_tokenizer("web-bpe4k"),
                        str(tmp_path), "train")
    bc = B.BenchConfig(parts="b", device="cpu", reps=1, warmup=0, b_factors="1,2", b_batch=1, data_dir=str(tmp_path),
                       out=str(tmp_path), plots=str(tmp_path))
    b = B.main(bc, "python bench.py --parts=b")["b"]
    Lc = bc.Lc
    assert [b[m][str(Lt)]["tokens"] for m in ("pose", "full") for Lt in (Lc, 2 * Lc)] == [Lc - 1, Lc - 1, Lc - 1,
                                                                                          2 * Lc - 1]
    assert all(r["mem_gib"] > 0 and r["step_s"] > 0 for m in ("pose", "full") for r in b[m].values())
    assert (tmp_path / "memory_time.png").exists() and "## (b)" in (tmp_path / "bench.md").read_text()
