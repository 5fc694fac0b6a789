"""Smoke test of benchmarks/bench_snn.py: the real main() on a tiny run, JSON layout checked."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_snn.py"
ROW_KEYS = {"arch", "levels", "batch", "ann_img_s", "snn_img_s", "counts_img_s", "ideal_ratio",
            "overhead", "train_qcfs_over_relu", "peak_mem_ann_mb", "peak_mem_snn_mb"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_snn", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_the_documented_json(bench, tmp_path):
    out = tmp_path / "bench.json"
    args = bench.get_args_parser().parse_args(
        ["--quick", "--archs", "vgg_small", "--threads", "2", "--compare-whole-chunks",
         "--json", str(out)])
    bench.main(args)
    result = json.loads(out.read_text())
    assert {"device", "threads", "rows"} <= set(result)
    assert result["threads"] == 2
    assert [row["levels"] for row in result["rows"]] == ["uniform4", "uniform16"]
    for row in result["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["arch"] == "vgg_small" and row["batch"] == 4
        assert row["ann_img_s"] > 0 and row["snn_img_s"] > 0 and row["counts_img_s"] > 0
        assert row["train_qcfs_over_relu"] > 0
        assert row["whole_chunks_overhead"] > 0 and row["whole_chunks_images"] >= 1
        assert row["snn_chunk_images"][-1] <= row["batch"]
    uniform4, uniform16 = result["rows"]
    # vgg_small, 5 QCFS layers at uniform L: every layer after the first is applied L times
    assert 1 < uniform4["ideal_ratio"] < 4 and 1 < uniform16["ideal_ratio"] < 16
    assert uniform16["peak_mem_ann_mb"] > 0 and uniform16["peak_mem_snn_mb"] > 0


def test_ideal_ratio_of_vgg16_reference_levels(bench):
    """R for vgg16 with the reference levels, by hand from per-layer MACs and T_in."""
    import torch
    model = bench.build_model("vgg16", bench.REFERENCE_LEVELS["vgg16"], torch.device("cpu"), 0)
    snn = bench.models.convert_to_snn(model)
    # MACs per image (CIFAR VGG-16): conv at 32/16/8/4/2 px, then 512-4096-4096-10
    conv = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8),
            (256, 256, 8), (256, 256, 8), (256, 512, 4), (512, 512, 4), (512, 512, 4),
            (512, 512, 2), (512, 512, 2), (512, 512, 2)]
    macs = [c_in * c_out * 9 * size * size for c_in, c_out, size in conv]
    macs += [512 * 4096, 4096 * 4096, 4096 * 10]
    levels = bench.REFERENCE_LEVELS["vgg16"]
    steps = [1] + levels  # layer n is fed by QCFS n-1 (the first conv by the image)
    expected = sum(s * m for s, m in zip(steps, macs, strict=True)) / sum(macs)
    assert bench.ideal_ratio(snn, torch.randn(2, 3, 32, 32)) == pytest.approx(expected)
