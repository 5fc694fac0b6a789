"""Per-layer levels chosen by a T_eff budget: a measured per-layer loss table, an
exact dynamic programme over layers, and a measured re-evaluation of the best few choices.

The search, for a trained QCFS model and calibration images (training images with evaluation
transforms; the test split is for reporting only):

1. **Loss table.** The mean cross-entropy on the calibration images of the network with one
   layer's level changed to one candidate while every other layer keeps its level:
   ``1 + layers x (candidates - 1)`` evaluations when every current level is a candidate
   (one more per layer whose level is not), e.g. 46 for VGG-16 at uniform 8 with {1, 2, 4, 8}.
2. **Exact optimisation of the additive estimate.** The estimated loss of a combination is the
   baseline loss plus the sum of its layers' loss increases; its cost is the all-layer T_eff of
   :func:`models.timing.teff` (the value get_Teff.py prints by default), a mean of per-layer
   terms. :func:`pareto_frontier`, a dynamic programme over layers, finds every combination on
   the Pareto frontier of (T_eff, estimated loss) exactly: a partial combination is dropped
   only when another one is no worse in both (or it cannot fit the budget), and the T_eff
   terms are summed in exact integer arithmetic (no grid, no rounding; a budget admits a
   combination up to a relative 1e-12 that absorbs teff()'s own rounding, see
   ``BUDGET_SLACK``).
3. **Measured choice.** The estimate ignores interactions between layers, so the ``top_k``
   frontier points that fit the budget with the lowest estimated loss, the AL rule's levels and
   the uniform levels (the largest uniform candidate that fits) are evaluated on the
   calibration images, and of everything measured that fits (these, the loss table's entries
   and, in a sweep, what other budgets measured) the one with the lowest measured calibration
   loss is returned. The AL rule's levels are measured even when they do not fit, for
   comparison, but are then never chosen.

Entry points: :func:`search_levels` (one budget) and :func:`sweep_budgets` (many budgets, one
loss table); :func:`calibration_loader` builds the default calibration data and
:func:`evaluate_levels` reports a level choice on any loader.
"""
import math
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from al_metric import collect_level_counts, layer_metrics
from data import make_loader, shard_order
from models import get_levels, qcfs_layers, set_levels, validate_levels
from models.timing import layer_fan_ins, teff
from utils import progress

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "DEFAULT_TOP_K", "LossTable", "Evaluation",
           "LevelSearchResult", "calibration_loader", "default_budgets", "default_candidates",
           "evaluate_levels", "measure_loss_table", "minimum_teff", "pareto_frontier",
           "search_levels", "sweep_budgets"]

DEFAULT_CALIBRATION_IMAGES = 512
DEFAULT_TOP_K = 5
CALIBRATION_SEED = 0
# A combination fits a budget when the exact sum of its T_eff terms is at most
# budget * (1 + BUDGET_SLACK) * layers. teff() rounds its float sum, so without the slack the
# T_eff it reports for a combination, given back as the budget (the AL rule's own T_eff, say),
# could refuse that very combination. 1e-12 is far above that rounding (a few 1e-16) and far
# below any difference between the T_eff of two level choices.
BUDGET_SLACK = Fraction(1, 10**12)


def default_candidates(max_level):
    """The powers of two ``1, 2, 4, ...`` that are ``<= max_level``."""
    if not isinstance(max_level, int) or isinstance(max_level, bool) or max_level < 1:
        raise ValueError(f"max_level must be an integer >= 1, got {max_level!r}")
    candidates = [1]
    while candidates[-1] * 2 <= max_level:
        candidates.append(candidates[-1] * 2)
    return candidates


def calibration_loader(dataset, num_images=DEFAULT_CALIBRATION_IMAGES, batch_size=128,
                       workers=0, device=None, seed=CALIBRATION_SEED):
    """A loader over a fixed random subset of ``num_images`` images of ``dataset``.

    ``dataset`` should be the training split with evaluation transforms
    (``data.get_dataset(name, root, "train", augment=False)``). The subset is drawn with its
    own generator seeded by ``seed`` (the global RNG is untouched), so the same images are
    used every time; ImageFolder datasets are sorted by class, which is why the first N
    images would not do. ``num_images`` larger than the dataset means all of it.
    """
    if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
        raise ValueError(f"the number of calibration images must be an integer >= 1, "
                         f"got {num_images!r}")
    order = shard_order(len(dataset), seed)[:num_images]
    return make_loader(Subset(dataset, sorted(order)), batch_size, False, workers,
                       device=device)


@torch.no_grad()
def evaluate_levels(model, loader, levels=None, show_progress=False, desc="evaluate"):
    """Mean cross-entropy and top-1 of ``model`` on ``loader`` with ``levels`` set.

    Eval mode, no gradients, inputs in the dtype and on the device of the model's parameters.
    The model's levels and train/eval mode are restored afterwards. ``levels=None`` keeps
    the current levels.

    Returns:
        ``{"loss": float, "top1": percent, "images": int}``.
    """
    return _Evaluator(model, loader, show_progress=show_progress, cache_batches=False).measure(
        levels if levels is not None else get_levels(model), desc=desc)


class _Evaluator:
    """Measures the calibration loss of level combinations; remembers every measurement.

    Calibration batches are read once and kept on the model's device (512 CIFAR images are
    6 MB, 512 ImageNet images 300 MB), so the loader's transforms run once, not once per
    evaluation. ``close`` restores the model's levels and mode.
    """

    def __init__(self, model, loader, show_progress=False, cache_batches=True):
        self.model = model
        self.original_levels = get_levels(model)
        self.was_training = model.training
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.loader = loader
        self.batches = None
        if cache_batches:
            self.batches = [(images.to(self.device, self.dtype), targets.to(self.device))
                            for images, targets in loader]
            if not self.batches:
                raise ValueError("the calibration loader yields no images")
        self.show_progress = show_progress
        self.measured = {}  # tuple(levels) -> {"loss", "top1", "images"}
        self.num_evaluations = 0

    def _batches(self):
        if self.batches is not None:
            return self.batches
        return ((images.to(self.device, self.dtype), targets.to(self.device))
                for images, targets in self.loader)

    @torch.no_grad()
    def measure(self, levels, desc="evaluate"):
        key = tuple(levels)
        if key in self.measured:
            return self.measured[key]
        self.model.eval()
        set_levels(self.model, list(levels))
        try:
            loss_sum, correct, seen = 0.0, 0, 0
            # a bar per pass only for uncached loaders (a report on the test split): the
            # search draws its bar over the evaluations instead
            for images, targets in progress(self._batches(),
                                            self.show_progress and self.batches is None,
                                            desc=desc):
                logits = self.model(images)
                # summed per batch in float64: the table compares losses that differ in the
                # fourth decimal, so accumulation error must stay far below that
                loss_sum += float(F.cross_entropy(logits.double(), targets, reduction="sum"))
                correct += int((logits.argmax(1) == targets).sum())
                seen += len(targets)
        finally:
            self.close()
        if seen == 0:
            raise ValueError("the loader yields no images")
        self.num_evaluations += 1
        self.measured[key] = {"loss": loss_sum / seen, "top1": 100.0 * correct / seen,
                              "images": seen}
        return self.measured[key]

    def measure_layer_changes(self, candidates, show_progress=False):
        """Measure every combination that differs from the original levels in one layer (the
        loss table's entries), each a full pass over the cached calibration batches.
        Returns ``{(layer index, level): measurement}``."""
        changes = [(index, level) for index in range(len(self.original_levels))
                   for level in candidates if level != self.original_levels[index]]
        return {(index, level): self.measure(self._changed(index, level))
                for index, level in progress(changes, show_progress, desc="loss table")}

    def _changed(self, index, level):
        changed = list(self.original_levels)
        changed[index] = level
        return changed

    def close(self):
        set_levels(self.model, self.original_levels)
        self.model.train(self.was_training)


@dataclass
class LossTable:
    """Calibration losses with one layer's level changed at a time (step 1 of the search).

    ``losses[name][str(level)]`` is the mean cross-entropy on the calibration images with
    layer ``name`` at ``level`` and every other layer at its level in ``levels``; the entry of
    a layer's own level is ``baseline_loss``. Keys are strings so that :meth:`as_dict` is
    plain JSON.
    """

    layer_names: list
    fan_ins: list
    levels: list
    candidates: list
    baseline_loss: float
    baseline_top1: float
    losses: dict
    num_images: int
    num_evaluations: int
    seconds: float

    def loss_increase(self, name, level):
        return self.losses[name][str(level)] - self.baseline_loss

    def estimate(self, levels):
        """Additive estimate: baseline + sum of per-layer increases (None off the table)."""
        increases = []
        for name, level in zip(self.layer_names, levels, strict=True):
            if str(level) not in self.losses[name]:
                return None
            increases.append(self.loss_increase(name, level))
        total = 0.0
        for increase in increases:  # layer order, as the dynamic programme adds them
            total += increase
        return self.baseline_loss + total

    def as_dict(self):
        return asdict(self)


def measure_loss_table(model, loader, candidates=None, max_level=None, show_progress=False):
    """Step 1 of the search: the :class:`LossTable` of ``model`` on the calibration ``loader``.

    Args:
        model: a trained QCFS network (unwrapped, not DDP); its levels are the baseline and
            are restored afterwards.
        loader: calibration images (training images, evaluation transforms).
        candidates: levels to try in every layer (default: :func:`default_candidates` of
            ``max_level``).
        max_level: largest default candidate (default: the model's largest level).
        show_progress: a progress bar over the evaluations.
    """
    costs = _Costs(model, candidates if candidates is not None else
                   default_candidates(max_level or max(get_levels(model))))
    evaluator = _Evaluator(model, loader)
    try:
        return _measure_table(evaluator, costs, show_progress)
    finally:
        evaluator.close()


def _measure_table(evaluator, costs, show_progress):
    levels = evaluator.original_levels
    start = time.perf_counter()
    evaluations_before = evaluator.num_evaluations
    baseline = evaluator.measure(levels)
    changed = evaluator.measure_layer_changes(costs.candidates, show_progress)
    losses = {}
    for index, (name, level) in enumerate(zip(costs.names, levels, strict=True)):
        row = {option: changed[(index, option)]["loss"] for option in costs.candidates
               if option != level}
        row[level] = baseline["loss"]
        losses[name] = {str(option): row[option] for option in sorted(row)}
    return LossTable(layer_names=costs.names, fan_ins=costs.fan_ins, levels=levels,
                     candidates=costs.candidates, baseline_loss=baseline["loss"],
                     baseline_top1=baseline["top1"], losses=losses,
                     num_images=baseline["images"],
                     num_evaluations=evaluator.num_evaluations - evaluations_before,
                     seconds=time.perf_counter() - start)


def pareto_frontier(costs, losses, budget=None):
    """Every combination on the Pareto frontier of (summed cost, summed loss), exactly.

    A combination picks one option per layer; option ``i`` of layer ``l`` costs
    ``costs[l][i]`` and adds ``losses[l][i]``. Dynamic programme over layers: a partial
    combination (the first l layers) is dropped when another one costs no more and loses no
    more (completed with the same remaining options, that one stays at least as good), or
    when even the cheapest remaining options would take it over ``budget``. What is left
    after the last layer is the frontier: among combinations of equal cost only the lowest
    loss, among equal (cost, loss) only the first in (cost, loss, choice) order. Costs must
    add exactly (ints or Fractions, >= 0); losses are floats added in layer order, as a loop
    ``total += loss`` from 0.0 adds them.

    Args:
        costs, losses: one sequence per layer, one entry per option.
        budget: keep only combinations with summed cost ``<= budget`` (None: all).

    Returns:
        ``[(cost, loss, choice), ...]`` sorted by increasing cost and strictly decreasing
        loss; ``choice`` is a tuple of option indices. Empty when nothing fits.
    """
    layers = list(zip(costs, losses, strict=True))
    for layer_costs, layer_losses in layers:
        if len(layer_costs) != len(layer_losses) or not layer_costs:
            raise ValueError("every layer needs as many costs as losses, at least one")
        if min(layer_costs) < 0:
            raise ValueError(f"costs must be >= 0, got {list(layer_costs)}")
    # cheapest completion of layers l..end, to drop partial combinations that cannot fit
    cheapest_rest = [0] * (len(layers) + 1)
    for index in range(len(layers) - 1, -1, -1):
        cheapest_rest[index] = cheapest_rest[index + 1] + min(layers[index][0])
    if budget is not None and cheapest_rest[0] > budget:
        return []
    frontier = [(0, 0.0, ())]
    for index, (layer_costs, layer_losses) in enumerate(layers):
        grown = sorted(
            (cost + option_cost, loss + option_loss, choice + (option,))
            for cost, loss, choice in frontier
            for option, (option_cost, option_loss)
            in enumerate(zip(layer_costs, layer_losses, strict=True))
            if budget is None or cost + option_cost + cheapest_rest[index + 1] <= budget)
        frontier, lowest = [], float("inf")
        for point in grown:  # increasing cost: keep a point only if it lowers the loss
            if point[1] < lowest:
                frontier.append(point)
                lowest = point[1]
    return frontier


@dataclass
class Evaluation:
    """One combination measured on the calibration images.

    ``sources`` says why it was measured: ``"frontier #i"`` (the frontier point with the i-th
    lowest estimated loss within the budget), ``"al_rule"``, ``"uniform"``.
    ``estimated_loss`` is None for levels outside the candidates.
    """

    levels: list
    teff: float
    fits: bool
    estimated_loss: float | None
    calibration_loss: float
    calibration_top1: float
    sources: list = field(default_factory=list)


@dataclass
class LevelSearchResult:
    """The levels chosen for one budget and everything measured to choose them.

    ``levels`` / ``teff`` / ``calibration_loss`` describe the choice (the fitting evaluated
    combination with the lowest measured calibration loss; ``source`` is its first reason to
    be measured). ``al_rule`` (the AL rule's levels, measured whether or not they fit) and
    ``uniform`` are the comparison entries, also in ``evaluated``. ``num_evaluations`` counts
    full passes over the calibration images made for this result: the loss table's plus at
    most ``top_k + 2`` re-evaluations (a sweep shares the table and repeated combinations, so
    later budgets count only their new ones).
    """

    budget_teff: float
    levels: list
    teff: float
    calibration_loss: float
    calibration_top1: float
    estimated_loss: float | None
    source: str
    al_rule: Evaluation
    uniform: Evaluation
    evaluated: list
    num_evaluations: int
    seconds: float
    table: LossTable

    def as_dict(self):
        """Plain Python (JSON- and ``torch.load(weights_only=True)``-safe) for checkpoints."""
        return asdict(self)


class _Costs:
    """T_eff arithmetic of one model and candidate set, exact.

    The per-(layer, candidate) terms are computed by :func:`models.timing.teff` itself and
    turned into integers: every float is a dyadic rational, so one power-of-two ``scale``
    makes all of them integers, and sums of them are exact.
    """

    def __init__(self, model, candidates):
        self.names = [name for name, _ in qcfs_layers(model)]
        self.fan_ins = [fan_in for _, fan_in in layer_fan_ins(model)]
        self.candidates = _check_candidates(candidates)
        terms = [[Fraction(row["term"]) for row in teff([level] * len(self.names),
                                                         self.fan_ins)[1]]
                 for level in self.candidates]
        self.scale = max(term.denominator for column in terms for term in column)
        # costs[layer][option]: layer's term at candidates[option], times scale
        self.costs = [[int(column[layer] * self.scale) for column in terms]
                      for layer in range(len(self.names))]
        # teff_term increases with the level (T + T(4T - 2) r / (1 + T r), r > 0), so the
        # smallest candidate in every layer is the cheapest combination
        self.minimum_teff = teff([self.candidates[0]] * len(self.names), self.fan_ins)[0]

    def teff(self, levels):
        return teff(list(levels), self.fan_ins)[0]

    def limit(self, budget):
        """The largest exact sum of per-layer terms that fits ``budget`` (see BUDGET_SLACK)."""
        return Fraction(budget) * (1 + BUDGET_SLACK) * len(self.names)

    def fits(self, levels, budget):
        """T_eff(levels) <= budget, on the exact sum of teff's per-layer terms."""
        _, rows = teff(list(levels), self.fan_ins)
        return sum(Fraction(row["term"]) for row in rows) <= self.limit(budget)

    def bound(self, budget):
        """The largest integer cost sum (terms times ``scale``) that fits ``budget``."""
        return math.floor(self.limit(budget) * self.scale)

    def check_budget(self, budget):
        budget = float(budget)
        if budget != budget or abs(budget) == float("inf"):
            raise ValueError(f"the T_eff budget must be a finite number, got {budget!r}")
        if not self.fits([self.candidates[0]] * len(self.names), budget):
            at_least = math.ceil(self.minimum_teff * 10_000) / 10_000
            raise ValueError(
                f"T_eff budget {budget:g} is below the minimum possible T_eff "
                f"{self.minimum_teff:.6f} (every layer at level {self.candidates[0]}, the "
                f"smallest of the candidates {self.candidates}): raise the budget to at least "
                f"{at_least:.4f}")
        return budget


def _search(model, loader, budgets, candidates, max_level, al_levels, top_k, show_progress):
    """The results of :func:`sweep_budgets` (which documents the arguments)."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    levels = get_levels(model)
    max_level = max_level or max(levels)
    costs = _Costs(model, candidates if candidates is not None else
                   default_candidates(max_level))
    # every budget is checked before anything is measured: the table is the expensive part
    budgets = [costs.check_budget(budget) for budget in budgets]
    if not budgets:
        raise ValueError("no budgets given")
    if al_levels is not None:
        al_levels = validate_levels(al_levels, costs.names)
    evaluator = _Evaluator(model, loader, show_progress)
    try:
        if al_levels is None:
            counts = collect_level_counts(model, evaluator.batches, evaluator.device)
            al_levels = [row["suggested_level"]
                         for row in layer_metrics(model, counts, max_level=max_level)]
        table = _measure_table(evaluator, costs, show_progress)
    finally:
        evaluator.close()
    increases = [[table.loss_increase(name, level) for level in costs.candidates]
                 for name in costs.names]
    # one frontier, for the largest budget, serves every smaller one
    frontier = pareto_frontier(costs.costs, increases, costs.bound(max(budgets)))
    results = []
    for index, budget in enumerate(budgets):
        start = time.perf_counter()
        evaluations_before = evaluator.num_evaluations
        fitting = [point for point in frontier if point[0] <= costs.bound(budget)]
        wanted = {}  # tuple(levels) -> reasons, in the order first wanted

        # the frontier's loss falls as its cost rises: the last points that fit lose least
        for rank, (_, _, choice) in enumerate(reversed(fitting[-top_k:]), start=1):
            wanted.setdefault(tuple(costs.candidates[option] for option in choice),
                              []).append(f"frontier #{rank}")
        wanted.setdefault(tuple(al_levels), []).append("al_rule")
        uniform = max(level for level in costs.candidates
                      if costs.fits([level] * len(costs.names), budget))
        wanted.setdefault((uniform,) * len(costs.names), []).append("uniform")
        evaluated = []
        try:
            for combination, sources in progress(list(wanted.items()), show_progress,
                                                 desc=f"re-evaluate (budget {budget:g})"):
                measured = evaluator.measure(combination)
                evaluated.append(Evaluation(
                    levels=list(combination), teff=costs.teff(combination),
                    fits=costs.fits(combination, budget),
                    estimated_loss=table.estimate(combination),
                    calibration_loss=measured["loss"], calibration_top1=measured["top1"],
                    sources=sources))
        finally:
            evaluator.close()
        best = _best_measured(evaluator, costs, table, budget, evaluated)
        by_source = {source: e for e in evaluated for source in e.sources}
        # the table's evaluations and seconds are counted once, in the first budget's result
        first = index == 0
        results.append(LevelSearchResult(
            budget_teff=budget, levels=best.levels, teff=best.teff,
            calibration_loss=best.calibration_loss, calibration_top1=best.calibration_top1,
            estimated_loss=best.estimated_loss, source=best.sources[0],
            al_rule=by_source["al_rule"], uniform=by_source["uniform"], evaluated=evaluated,
            num_evaluations=(evaluator.num_evaluations - evaluations_before
                             + (table.num_evaluations if first else 0)),
            seconds=time.perf_counter() - start + (table.seconds if first else 0.0),
            table=table))
    return results


def _best_measured(evaluator, costs, table, budget, evaluated):
    """The fitting combination with the lowest measured calibration loss among everything
    measured on these calibration images: this budget's re-evaluations, and also the loss
    table's entries (one layer changed) and what earlier budgets of a sweep measured, which
    cost nothing more to consider; so within a sweep the chosen loss never rises with the
    budget. Ties go to the smaller T_eff."""
    known = {tuple(e.levels): e for e in evaluated}
    best = None
    for combination, measured in evaluator.measured.items():
        if not costs.fits(combination, budget):
            continue
        key = (measured["loss"], costs.teff(combination))
        if best is None or key < best[0]:
            best = (key, combination, measured)
    _, combination, measured = best
    if combination in known:
        return known[combination]
    source = "loss table" if sum(a != b for a, b in zip(combination, table.levels,
                                                         strict=True)) <= 1 else "earlier budget"
    entry = Evaluation(levels=list(combination), teff=costs.teff(combination), fits=True,
                       estimated_loss=table.estimate(combination),
                       calibration_loss=measured["loss"], calibration_top1=measured["top1"],
                       sources=[source])
    evaluated.append(entry)
    return entry


def search_levels(model, loader, budget_teff, candidates=None, max_level=None, al_levels=None,
                  top_k=DEFAULT_TOP_K, show_progress=False):
    """Per-layer levels with the least measured calibration loss at T_eff <= ``budget_teff``.

    Steps in the module docstring. The model is evaluated in place (eval mode, no gradients)
    and left with its original levels and mode: apply the choice with
    ``models.set_levels(model, result.levels)``.

    Args:
        model: a trained QCFS network, unwrapped (under DDP pass ``model_without_ddp`` on one
            rank and broadcast ``result.levels``).
        loader: calibration images: training images with evaluation transforms, e.g.
            :func:`calibration_loader`; read once and kept in memory.
        budget_teff: the largest allowed all-layer T_eff (:func:`models.timing.teff`).
        candidates: levels every layer may take (default: powers of two up to ``max_level``).
        max_level: largest default candidate and the AL rule's largest level (default: the
            model's largest level).
        al_levels: the AL rule's levels to compare against (default: computed on the
            calibration images with :mod:`al_metric`'s default thresholds and ``max_level``).
        top_k: how many frontier points (those of lowest estimated loss within the budget)
            to measure.
        show_progress: progress bars over the evaluations.

    Returns:
        a :class:`LevelSearchResult`; ``result.as_dict()`` is plain Python for a checkpoint.

    Raises:
        ValueError: a budget below the smallest T_eff the candidates can reach (the message
            names that minimum; raised before anything is measured), bad candidates, bad
            ``al_levels`` or an empty loader.
    """
    return _search(model, loader, [budget_teff], candidates, max_level, al_levels, top_k,
                   show_progress)[0]


def sweep_budgets(model, loader, budgets, candidates=None, max_level=None, al_levels=None,
                  top_k=DEFAULT_TOP_K, show_progress=False):
    """:func:`search_levels` for every budget in ``budgets``, measuring the loss table once.

    One loss table and one frontier serve all budgets, and a combination measured for one
    budget is not measured again for another. Returns one :class:`LevelSearchResult` per
    budget, in the order given, all sharing one ``table``; the first result's
    ``num_evaluations`` and ``seconds`` include the table's.
    """
    return _search(model, loader, budgets, candidates, max_level, al_levels, top_k,
                   show_progress)


def minimum_teff(model, candidates):
    """The smallest T_eff ``candidates`` can reach on ``model`` (every layer at the smallest)."""
    return _Costs(model, candidates).minimum_teff


def default_budgets(model, candidates=None, max_level=None, count=9):
    """``count`` evenly spaced budgets from :func:`minimum_teff` to the T_eff of the model's
    current levels (one budget when those are equal)."""
    levels = get_levels(model)
    costs = _Costs(model, candidates if candidates is not None else
                   default_candidates(max_level or max(levels)))
    low, high = costs.minimum_teff, max(costs.teff(levels), costs.minimum_teff)
    if count < 2 or high == low:
        return [high]
    return [low + (high - low) * index / (count - 1) for index in range(count)]


def _check_candidates(candidates):
    values = list(candidates)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1
                         for v in values):
        raise ValueError(f"candidate levels must be integers >= 1, got {values!r}")
    return sorted(set(values))
