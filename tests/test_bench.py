"""Smoke test of benchmarks/bench_snn.py: the real main() on a tiny run, JSON layout checked."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_snn.py"
ROW_KEYS = {"arch", "levels", "batch", "ann_img_s", "snn_img_s", "counts_img_s", "ideal_ratio",
            "overhead", "train_qcfs_over_relu", "peak_mem_ann_mb", "peak_mem_snn_mb"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_snn", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
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
        seconds = {name: entry["median"] for name, entry in row["seconds"].items()}
        # every derived figure is the stated function of the measured medians
        for key, name in (("ann_img_s", "ann"), ("snn_img_s", "snn"),
                          ("counts_img_s", "counts")):
            assert row[key] == pytest.approx(4 / seconds[name], rel=1e-12)
        assert row["overhead"] == pytest.approx(
            seconds["snn"] / (seconds["ann"] * row["ideal_ratio"]), rel=1e-12)
        assert row["counts_over_ann"] == pytest.approx(seconds["counts"] / seconds["ann"],
                                                       rel=1e-12)
        assert row["whole_chunks_overhead"] == pytest.approx(
            seconds["whole_chunks"] / (seconds["ann"] * row["ideal_ratio"]), rel=1e-12)
        for name, entry in row["seconds"].items():  # the median lies within its spread
            low, high = entry["spread"]
            assert low <= entry["median"] <= high, name
        low, high = row["train_spread"]
        assert low <= row["train_qcfs_over_relu"] <= high
        assert 1 <= row["whole_chunks_images"] <= 4
        assert row["snn_chunk_images"][-1] <= row["batch"]
    uniform4, uniform16 = result["rows"]
    # vgg_small at uniform L: the first conv sees the image once, every other weighted layer
    # a train of L steps; MACs per image (padding taps included, as ideal_ratio counts them)
    size = uniform4["image_size"]
    macs = [3 * 16 * 9 * size ** 2, 16 * 32 * 9 * (size // 2) ** 2,
            32 * 64 * 9 * (size // 4) ** 2, 64 * 4 * 4 * 128, 128 * 128, 128 * 10]
    for row, level in ((uniform4, 4), (uniform16, 16)):
        expected = (macs[0] + level * sum(macs[1:])) / sum(macs)
        assert row["ideal_ratio"] == pytest.approx(expected, rel=1e-12)
    assert uniform16["peak_mem_ann_mb"] > 0 and uniform16["peak_mem_snn_mb"] > 0
    assert uniform16["peak_mem_snn_over_ann"] == pytest.approx(
        uniform16["peak_mem_snn_mb"] / uniform16["peak_mem_ann_mb"], rel=1e-12)


@pytest.mark.slow
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


def test_nudged_by_one_ulp_moves_every_weight_by_exactly_one_float(bench):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    nudged = dict(bench.nudged_by_one_ulp(net, seed=0).named_parameters())
    ups = total = 0
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name]), name  # the network given is left as it was
        moved = nudged[name].detach()
        assert moved.dtype == p.dtype and (moved != p).all(), name
        # one float away: the next float from the moved value towards the original is it
        # (BatchNorm's zero biases included: they move to the smallest subnormal)
        assert torch.equal(torch.nextafter(moved, p.detach()), p.detach()), name
        ups, total = ups + int((moved > p).sum()), total + p.numel()
    assert 0.3 * total < ups < 0.7 * total  # each direction drawn about half the time
