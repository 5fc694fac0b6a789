"""The level search (level_search.py): exact optimiser, measured optimum, budgets,
records, and get_stats.py --budget-teff / --pareto."""
import itertools
import json
import math
import random
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import get_stats
import models
from al_metric import collect_level_counts, layer_metrics
from checkpoint import load_checkpoint_file, model_from_checkpoint
from conftest import evaluate_digits_run, run_script
from data import get_dataset
from helpers import assert_one_line_error
from level_search import (calibration_loader, default_budgets, evaluate_levels,
                          measure_loss_table, minimum_teff, pareto_frontier, search_levels,
                          sweep_budgets)
from models.timing import layer_fan_ins, teff

CANDIDATES = (1, 2, 4, 8)


# ---------------------------------------------------------------------------------------------
# The optimiser alone: pareto_frontier against brute force on random tables.

def added_up(costs, losses, choice):
    """(summed cost, summed loss) of one combination, added in layer order from 0.0."""
    cost, loss = 0, 0.0
    for layer, option in enumerate(choice):
        cost += costs[layer][option]
        loss += losses[layer][option]
    return cost, loss


def brute_frontier(costs, losses, budget):
    """Every (cost, loss) pair on the Pareto frontier, by enumerating all combinations."""
    points = set()
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        cost, loss = added_up(costs, losses, choice)
        if cost <= budget:
            points.add((cost, loss))
    return sorted(p for p in points
                  if not any(q != p and q[0] <= p[0] and q[1] <= p[1] for q in points))


@pytest.mark.parametrize("seed", range(12))
def test_pareto_frontier_equals_brute_force(seed):
    rng = random.Random(seed)
    layers, options = rng.randint(1, 5), rng.randint(1, 4)
    # small integer losses give many ties (the hard case for pruning); floats give none
    small = seed % 2 == 0
    costs = [[rng.randint(0, 12) for _ in range(options)] for _ in range(layers)]
    losses = [[float(rng.randint(-3, 6)) if small else rng.uniform(-1, 3)
               for _ in range(options)] for _ in range(layers)]
    cheapest, dearest = sum(map(min, costs)), sum(map(max, costs))
    for budget in (cheapest - 1, cheapest, rng.randint(cheapest, dearest), dearest):
        found = pareto_frontier(costs, losses, budget)
        assert [(cost, loss) for cost, loss, _ in found] == brute_frontier(costs, losses, budget)
        assert (found == []) == (budget < cheapest)
        for cost, loss, choice in found:  # each point is what its choice adds up to
            assert (cost, loss) == added_up(costs, losses, choice)


def test_pareto_frontier_with_fractions_and_no_budget():
    costs = [[Fraction(1, 3), Fraction(2, 3)], [Fraction(1, 6), Fraction(1, 2)]]
    losses = [[1.0, 0.25], [0.5, 0.0]]
    # (1/3+1/6, 1.5) (2/3+1/6, 0.75) (1/3+1/2, 1.0) is dominated by the former, (2/3+1/2, 0.25)
    assert [(cost, loss) for cost, loss, _ in pareto_frontier(costs, losses)] == [
        (Fraction(1, 2), 1.5), (Fraction(5, 6), 0.75), (Fraction(7, 6), 0.25)]
    assert pareto_frontier(costs, losses, Fraction(1, 3)) == []


# ---------------------------------------------------------------------------------------------
# Acceptance: the search's choice is the measured optimum of all 4^5 combinations.

def binary_digits():
    """scikit-learn's 8x8 digits with pixels thresholded to {0, 1}: (1797, 64), labels."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = torch.tensor(digits.images.reshape(-1, 64) >= 8, dtype=torch.float32)
    return images, torch.tensor(digits.target)


def relay_bottleneck_model(images, labels, seed=0):
    """Five QCFS layers (default level 8), one of which collapses when its level drops.

    - ``1``, ``3``, ``5``: relays. Identity weights (frozen) and threshold 1 (frozen) pass the
      binary pixels on unchanged: an input of 0 or 1 is represented exactly at every level
      (q(1) = L * (1/L) = 1 exactly for powers of two), so their level changes T_eff but
      never the loss. A search that spends budget on them, or spreads it evenly (uniform
      levels), loses.
    - ``7``: 24 units, trained; loses a little at low levels.
    - ``9``: a bottleneck of 3 units, trained at level 8. At level L it can emit only
      (L + 1)^3 distinct patterns, 8 at L = 1 for 10 classes, so its accuracy collapses when
      its level drops.

    The loss therefore depends on two layers whose effects are large and well separated, so
    the additive estimate ranks the measured optimum among its best few frontier points; on
    networks where every layer matters a little, near-ties can be misranked (the docs say so).
    """
    torch.manual_seed(seed)
    layers = []
    for _ in range(3):
        relay = nn.Linear(64, 64, bias=False)
        act = models.QCFS(level=8, init_threshold=1.0)
        with torch.no_grad():
            relay.weight.copy_(torch.eye(64))
        relay.weight.requires_grad_(False)
        act.threshold.requires_grad_(False)
        layers += [relay, act]
    layers += [nn.Linear(64, 24), models.QCFS(level=8, init_threshold=2.0),
               nn.Linear(24, 3), models.QCFS(level=8, init_threshold=2.0), nn.Linear(3, 10)]
    model = nn.Sequential(*layers)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(600):
        batch = torch.randint(0, len(labels), (64,), generator=generator)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        models.clamp_thresholds_(model)
    return model.eval()


@torch.no_grad()
def measured_loss(model, loader, levels):
    """Mean cross-entropy on ``loader`` with ``levels``, computed here (not by the library)."""
    models.set_levels(model, list(levels))
    total, count = 0.0, 0
    for images, targets in loader:
        total += float(F.cross_entropy(model(images).double(), targets, reduction="sum"))
        count += len(targets)
    return total / count


@pytest.fixture(scope="module")
def relay_case():
    torch.set_num_threads(2)
    images, labels = binary_digits()
    model = relay_bottleneck_model(images, labels)
    loader = calibration_loader(TensorDataset(images, labels), 256, batch_size=128)
    brute = {combo: measured_loss(model, loader, combo)
             for combo in itertools.product(CANDIDATES, repeat=5)}
    models.set_levels(model, 8)
    fan_ins = layer_fan_ins(model)
    teffs = {combo: teff(list(combo), fan_ins)[0] for combo in brute}
    return model, loader, brute, teffs


@pytest.mark.slow
def test_relay_model_is_what_its_docstring_says(relay_case):
    model, loader, brute, _ = relay_case
    baseline = brute[(8,) * 5]
    for combo, loss in brute.items():  # the relays' levels never change the loss
        assert loss == brute[(1, 1, 1) + combo[3:]]
    trained = evaluate_levels(model, loader)
    assert trained["top1"] > 90
    collapsed = evaluate_levels(model, loader, [8, 8, 8, 8, 1])
    assert collapsed["top1"] < trained["top1"] - 25 and collapsed["loss"] > baseline + 1.0
    assert brute[(8, 8, 8, 1, 8)] - baseline < collapsed["loss"] - baseline


@pytest.mark.slow
def test_search_choice_is_the_measured_optimum_of_all_combinations(relay_case):
    model, loader, brute, teffs = relay_case
    low, high = teffs[(1,) * 5], teffs[(8,) * 5]
    budgets = [low + fraction * (high - low) for fraction in (0.1, 0.25, 0.5, 0.8)]
    results = sweep_budgets(model, loader, budgets, candidates=list(CANDIDATES))
    assert models.get_levels(model) == [8] * 5 and not model.training  # restored
    for budget, result in zip(budgets, results, strict=True):
        chosen = tuple(result.levels)
        # models.timing computes T_eff exactly as get_Teff.py prints it; 1e-9: the search
        # compares exact sums of the same per-layer terms, teff() rounds its float sum
        assert teff(result.levels, layer_fan_ins(model))[0] <= budget + 1e-9
        feasible = [combo for combo in brute if teffs[combo] <= budget + 1e-9]
        assert brute[chosen] == min(brute[combo] for combo in feasible), budget
        # the library measured the same number the brute force did (same images, same sum)
        assert result.calibration_loss == pytest.approx(brute[chosen], rel=1e-12)
        assert result.uniform.fits and result.uniform.levels[0] < 8
        assert brute[chosen] < result.uniform.calibration_loss  # relays waste uniform levels
    # one table for all budgets: 1 + 5 x 3 evaluations, counted with the first budget
    assert results[0].table.num_evaluations == 16
    assert results[0].num_evaluations >= 16 > max(r.num_evaluations for r in results[1:])


# ---------------------------------------------------------------------------------------------
# Budgets, records and the model's state.

def digits_model(digits_run):
    folder, run_id = digits_run
    path = folder / f"{run_id}.pth"
    model, _ = model_from_checkpoint(load_checkpoint_file(path), path)
    return model


@pytest.fixture(scope="module")
def digits_calibration():
    return calibration_loader(get_dataset("digits", "", "train", augment=False), 256)


@pytest.mark.slow
def test_search_at_the_al_rule_teff_measures_no_worse_than_the_al_rule(digits_run,
                                                                        digits_calibration):
    model = digits_model(digits_run)  # vgg_small, levels 4,2,8,4,3
    # the AL rule's levels on the calibration images, as the search computes them by default
    counts = collect_level_counts(model, digits_calibration, torch.device("cpu"))
    al_levels = [row["suggested_level"] for row in layer_metrics(model, counts, max_level=8)]
    budget = teff(al_levels, layer_fan_ins(model))[0]
    result = search_levels(model, digits_calibration, budget, max_level=8)
    assert result.al_rule.levels == al_levels and result.al_rule.fits
    assert result.calibration_loss <= result.al_rule.calibration_loss
    assert result.teff <= budget + 1e-9
    # the current level 3 of the last layer is not a candidate: one more table evaluation
    assert result.table.num_evaluations == 1 + 5 * 4 - 4
    assert models.get_levels(model) == [4, 2, 8, 4, 3]
    by_hand = evaluate_levels(model, digits_calibration, result.levels)
    assert by_hand["loss"] == pytest.approx(result.calibration_loss, rel=1e-12)


@pytest.mark.slow
def test_sweep_honours_every_budget_with_one_table(digits_run, digits_calibration):
    model = digits_model(digits_run)
    budgets = default_budgets(model, max_level=8, count=6)
    assert budgets[0] == pytest.approx(minimum_teff(model, [1, 2, 4, 8]))
    assert budgets[-1] == pytest.approx(teff([4, 2, 8, 4, 3], layer_fan_ins(model))[0])
    results = sweep_budgets(model, digits_calibration, budgets, max_level=8, top_k=2)
    assert all(r.table is results[0].table for r in results)
    for budget, result in zip(budgets, results, strict=True):
        assert result.teff <= budget + 1e-9
        assert all(e.fits == (e.teff <= budget + 1e-12) for e in result.evaluated)
        assert result.calibration_loss == min(e.calibration_loss for e in result.evaluated
                                              if e.fits)
        assert len([e for e in result.evaluated if any(s.startswith("frontier")
                                                       for s in e.sources)]) <= 2
    # everything measured is considered at every budget, the loss table's entries and other
    # budgets' re-evaluations included: a larger budget never ends with a higher loss
    losses = [result.calibration_loss for result in results]
    assert losses == sorted(losses, reverse=True)
    measured = {tuple(e.levels): e.calibration_loss for r in results for e in r.evaluated}
    for budget, result in zip(budgets, results, strict=True):
        fitting = [loss for levels, loss in measured.items()
                   if teff(list(levels), layer_fan_ins(model))[0] <= budget + 1e-9]
        assert result.calibration_loss <= min(fitting)


@pytest.mark.slow
def test_budget_below_the_minimum_is_one_clear_error(digits_run, digits_calibration):
    model = digits_model(digits_run)
    lowest = minimum_teff(model, [2, 4])
    assert lowest == teff([2] * 5, layer_fan_ins(model))[0]
    with pytest.raises(ValueError, match=f"minimum possible T_eff {lowest:.6f}"):
        search_levels(model, digits_calibration, lowest - 0.01, candidates=[2, 4])
    with pytest.raises(ValueError, match="candidate levels must be integers >= 1"):
        search_levels(model, digits_calibration, 3.0, candidates=[0, 2])


@pytest.mark.slow
def test_result_record_is_plain_python(digits_run, tmp_path):
    model = digits_model(digits_run)
    images = get_dataset("digits", "", "train", augment=False)
    loader = calibration_loader(images, 32)
    table = measure_loss_table(model, loader, candidates=[1, 4])
    assert set(table.losses) == {name for name, _ in models.qcfs_layers(model)}
    result = search_levels(model, loader, 3.0, candidates=[1, 4], top_k=1)
    record = result.as_dict()
    assert json.loads(json.dumps(record)) == record
    torch.save({"adaptive": {"level_search": record}}, tmp_path / "record.pth")
    loaded = torch.load(tmp_path / "record.pth", weights_only=True)
    assert loaded["adaptive"]["level_search"] == record
    assert record["levels"] == result.levels and record["table"]["candidates"] == [1, 4]


# ---------------------------------------------------------------------------------------------
# get_stats.py --budget-teff / --pareto

def stats_args(digits_run, tmp_path, *extra):
    folder, run_id = digits_run
    return ["-data", "digits", "--id", run_id, "--checkpoint-dir", str(folder), "--batches",
            "2", "-b", "64", "-j", "0", "--no-progress", "--max-level", "8",
            "--calib-images", "128", "--json", str(tmp_path / "stats.json"), *extra]


@pytest.mark.slow
def test_get_stats_budget_prints_the_library_result(digits_run, tmp_path, capsys):
    assert run_script(get_stats, stats_args(digits_run, tmp_path, "--budget-teff", "2.5",
                                            "--top-k", "3")) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "stats.json").read_text())
    al_levels = record["suggested_levels"]
    model = digits_model(digits_run)
    loader = calibration_loader(get_dataset("digits", "", "train", augment=False), 128,
                                batch_size=64)
    expected = search_levels(model, loader, 2.5, max_level=8, al_levels=al_levels, top_k=3)
    test_loader = calibration_loader(get_dataset("digits", "", "test", augment=False), 10_000)
    searched = evaluate_levels(model, test_loader, expected.levels)
    al_rule = evaluate_levels(model, test_loader, al_levels)
    line = next(line for line in out.splitlines() if line.startswith("searched "))
    assert line.split() == ["searched", f"{expected.teff:.4f}",
                            f"{expected.calibration_loss:.4f}",
                            f"{expected.calibration_top1:.2f}%", f"{searched['top1']:.2f}%",
                            ",".join(map(str, expected.levels))]
    line = next(line for line in out.splitlines() if line.startswith("AL rule"))
    assert f"{expected.al_rule.teff:.4f} {expected.al_rule.calibration_loss:>10.4f}" in line
    assert f"{al_rule['top1']:>8.2f}%  {','.join(map(str, al_levels))}" in line
    assert f"searched levels: --levels {','.join(map(str, expected.levels))}" in out
    stored = record["level_search"]["budget"]
    assert stored["result"]["levels"] == expected.levels
    assert stored["result"]["calibration_loss"] == pytest.approx(expected.calibration_loss,
                                                                 rel=1e-12)
    assert stored["test"]["searched"]["top1"] == searched["top1"]


@pytest.mark.slow
def test_get_stats_pareto_writes_points_and_plot(digits_run, tmp_path, capsys):
    prefix = tmp_path / "curve" / "front"
    assert run_script(get_stats, stats_args(digits_run, tmp_path, "--pareto", "--budgets",
                                            "1.5,2.5,4", "--top-k", "2", "--pareto-output",
                                            str(prefix))) == 0
    out = capsys.readouterr().out
    points = json.loads(prefix.with_suffix(".json").read_text())["points"]
    searched = [p for p in points if p["kind"] == "searched"]
    assert [p["budget_teff"] for p in searched] == [1.5, 2.5, 4.0]
    assert all(p["teff"] <= p["budget_teff"] + 1e-9 for p in searched)
    assert {p["kind"] for p in points} == {"searched", "al_rule", "uniform L=1", "uniform L=2",
                                           "uniform L=4", "uniform L=8"}
    model = digits_model(digits_run)
    fan_ins = layer_fan_ins(model)
    test_loader = calibration_loader(get_dataset("digits", "", "test", augment=False), 10_000)
    for p in points:
        assert p["teff"] == pytest.approx(teff(p["levels"], fan_ins)[0], rel=1e-12)
        if p["kind"] == "uniform L=4":
            assert p["test_top1"] == evaluate_levels(model, test_loader, [4] * 5)["top1"]
    csv_lines = prefix.with_suffix(".csv").read_text().splitlines()
    assert len(csv_lines) == len(points) + 1 and csv_lines[0].startswith("kind,budget_teff")
    assert Image.open(prefix.with_suffix(".png")).size[0] > 100
    assert f"Pareto points written to {prefix.with_suffix('.json')}" in out


@pytest.mark.slow
@pytest.mark.parametrize("extra, fragments", [
    (["--budget-teff", "1.0"], ["below", "the smallest T_eff", "--budget-teff >="]),
    (["--budget-teff", "nan"], ["--budget-teff must be a number >= 1"]),
    (["--budget-teff", "3", "--candidates", "1,two"], ["--candidates must be", "1,2,4,8"]),
    (["--budget-teff", "3", "--candidates", "0,4"], ["--candidates must be"]),
    (["--budgets", "2,3"], ["--budgets", "add --pareto"]),
    (["--pareto", "--budgets", "2,x"], ["--budgets must be"]),
    (["--pareto", "--budgets", "1.001,3"], ["below", "--budgets >="]),
    (["--budget-teff", "3", "--calib-images", "0"], ["--calib-images must be >= 1"]),
])
def test_get_stats_search_errors_are_one_line(digits_run, tmp_path, capsys, extra, fragments):
    assert run_script(get_stats, stats_args(digits_run, tmp_path, *extra)) == 2
    assert_one_line_error(capsys, *fragments)


def test_minimum_teff_is_uniform_smallest_candidate():
    with torch.device("meta"):  # shapes only
        model = models.create_model("vgg16", num_classes=10, levels=8)
    fan_ins = layer_fan_ins(model)
    assert minimum_teff(model, [2, 8, 4]) == teff([2] * 15, fan_ins)[0]
    # the search's cheapest-combination claim: every layer's term rises with the level
    for _, fan_in in fan_ins:
        terms = [teff([level], [fan_in])[0] for level in range(1, 65)]
        assert all(a < b for a, b in zip(terms, terms[1:]))
    assert math.isclose(default_budgets(model, count=3)[-1], teff([8] * 15, fan_ins)[0])


def test_loss_table_entries_equal_full_passes():
    """Each entry of the table is the calibration loss of a full pass with that one layer
    changed (the same computation: equal to the last bit; rel 1e-12 leaves room only for the
    float64 sum)."""
    torch.manual_seed(0)
    model = models.create_model("vgg_small", num_classes=10, levels=8).eval()
    models.set_levels(model, [4, 2, 8, 4, 3])
    images, labels = torch.randn(10, 3, 32, 32), torch.randint(0, 10, (10,))
    loader = calibration_loader(TensorDataset(images, labels), 10, batch_size=4)
    table = measure_loss_table(model, loader, candidates=[1, 4])
    names = [name for name, _ in models.qcfs_layers(model)]
    current = models.get_levels(model)
    for index, name in enumerate(names):
        for level in (1, 4):
            changed = current[:index] + [level] + current[index + 1:]
            full = evaluate_levels(model, loader, changed)["loss"]
            assert table.losses[name][str(level)] == pytest.approx(full, rel=1e-12), name
    assert table.num_evaluations == 1 + sum(2 - (level in (1, 4)) for level in current)


@pytest.mark.slow
def test_adaptive_training_with_a_budget_is_exact_as_an_snn(tmp_path, capsys):
    """main_train.py --adaptive --budget-teff: phase 2 trains with the searched levels, which
    meet the budget, are recorded with the search in the checkpoint, and convert exactly."""
    import main_train
    common = ["-data", "digits", "-arch", "vgg_small", "-j", "0", "--no-progress",
              "--checkpoint-dir", str(tmp_path), "-b", "128", "-lr", "0.1",
              "--init-threshold", "2"]
    assert run_script(main_train, common + [
        "--id", "bt", "-epochs", "3", "--adaptive", "--phase1-epochs", "2", "--levels", "8",
        "--budget-teff", "3", "--calib-images", "128"]) == 0
    checkpoint = torch.load(tmp_path / "bt.pth", weights_only=True)
    adaptive, levels = checkpoint["adaptive"], checkpoint["model_args"]["levels"]
    assert adaptive["method"] == "level_search" and adaptive["levels"] == levels
    search = adaptive["level_search"]
    assert search["levels"] == levels and search["budget_teff"] == 3.0
    assert search["al_rule"]["levels"] == adaptive["al_levels"]
    model, _ = model_from_checkpoint(checkpoint, tmp_path / "bt.pth")
    assert teff(levels, layer_fan_ins(model))[0] <= 3.0 + 1e-9
    assert "level search at T_eff <= 3 on 128 training images" in \
        (tmp_path / "bt.log").read_text()
    capsys.readouterr()
    result = evaluate_digits_run(tmp_path, "bt", tmp_path / "bt.json")
    assert result["levels"] == levels and result["num_images"] == 360
    assert result["ann_top1"] == result["snn_top1"] and result["agreement"] == 100.0
    assert all(v == 1.0 for v in result["layer_count_agreement"].values())
    # a budget no candidate combination meets is refused before phase 1
    assert run_script(main_train, common + [
        "--id", "low", "-epochs", "3", "--adaptive", "--phase1-epochs", "2", "--levels", "8",
        "--budget-teff", "1"]) == 2
    assert_one_line_error(capsys, "--budget-teff 1", "smallest T_eff")
    # below 1 the flag itself is refused, with the same words as get_stats.py's
    assert run_script(main_train, common + [
        "--id", "low", "-epochs", "3", "--adaptive", "--phase1-epochs", "2", "--levels", "8",
        "--budget-teff", "0.5"]) == 2
    assert_one_line_error(capsys, "--budget-teff must be a number >= 1", "got 0.5")
    assert not (tmp_path / "low.pth").exists()
