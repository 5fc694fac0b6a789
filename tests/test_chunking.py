"""The step simulator's segment plan: the planner against brute force, the forward chain, and
the one-image probe staying invisible to hooks."""
import itertools
import math
import random
import re

import pytest
import torch

import models
from helpers import ann_levels, assert_counts_and_logits, live_model
from models.chunking import (BUFFER_SHARE, Segment, UnitProfile, find_cuts, plan_segments,
                             run_segments)


def brute_force_plans(profiles, batch, limit):
    """Every feasible plan, written out independently of the planner: all ways to cut the
    chain, all increasing chunk sizes ceil(batch / 2**k), the same constraints and cost."""
    n = len(profiles)
    sizes = sorted({math.ceil(batch / 2 ** k) for k in range(batch.bit_length() + 1)})
    plans = []
    for cuts in itertools.chain.from_iterable(
            itertools.combinations(range(1, n), r) for r in range(n)):
        bounds = [0, *cuts, n]
        segments = list(zip(bounds, bounds[1:]))
        for chosen in itertools.combinations(sizes, len(segments)):  # strictly increasing
            feasible, cost = True, 0
            for j, ((first, stop), size) in enumerate(zip(segments, chosen)):
                if size * max(p.work for p in profiles[first:stop]) > limit:
                    feasible = False
                # buffers held while segment j runs: every later segment's gathered input
                held = sum(chosen[i] * profiles[segments[i][0] - 1].output
                           for i in range(j + 1, len(segments)))
                if held > BUFFER_SHARE * limit:
                    feasible = False
                cost += math.ceil(batch / size) * sum(p.cost for p in profiles[first:stop])
            if feasible:
                plans.append((cost, [(first, size) for (first, _), size in
                                     zip(segments, chosen)]))
    return plans


@pytest.mark.parametrize("seed", range(40))
def test_planner_finds_the_cheapest_feasible_plan(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 6)
    batch = rng.choice([1, 5, 8, 32])
    profiles = [UnitProfile(work=rng.randint(1, 400), output=rng.randint(1, 200),
                            cost=rng.randint(1, 10**6)) for _ in range(n)]
    limit = rng.randint(max(p.work for p in profiles), 400 * batch)  # one image always fits
    plans = brute_force_plans(profiles, batch, limit)
    plan = plan_segments(profiles, batch, limit)
    costs = {tuple(p): c for c, p in plans}
    assert tuple(plan) in costs, (plan, "is not a feasible plan")
    assert costs[tuple(plan)] == min(costs.values())


def test_planner_cuts_where_little_is_held():
    # a long train on a large map, a pool that shrinks it, then heavy weights on small maps
    profiles = [UnitProfile(work=1000, output=1000, cost=10),
                UnitProfile(work=1000, output=5, cost=10),       # pool: small output
                UnitProfile(work=100, output=100, cost=10**6),   # large weights
                UnitProfile(work=100, output=10, cost=10**6)]
    batch, limit = 32, 4000  # 4 images of the large map fit, or 32 of the small one
    assert plan_segments(profiles, batch, limit) == [(0, 4), (2, 32)]
    # the gathered buffer: 32 x 5 <= limit / 16; after a unit with output 1000 it would not be
    profiles[1] = UnitProfile(work=1000, output=1000, cost=10)
    assert plan_segments(profiles, batch, limit) == [(0, 4)]


def test_planner_falls_back_to_single_images():
    profiles = [UnitProfile(work=50, output=1, cost=1)]
    assert plan_segments(profiles, 8, limit=10) == [(0, 1)]


def test_cuts_are_where_one_value_is_alive():
    # 0 input, 1 conv, 2 neuron, 3 conv (branch), 4 add(3, 2) (shortcut = 2), 5 neuron,
    # 6 const (re-read anywhere), 7 mul(5, 6), 8 output
    inputs = [(), (0,), (1,), (2,), (3, 2), (4,), (), (5, 6), (7,)]
    cuts = find_cuts(inputs, skip={6})
    # inside the block (before 4) both 2 and 3 are alive: no cut at 4
    assert cuts == {1: 0, 2: 1, 3: 2, 5: 4, 6: 5, 7: 5, 8: 7}


def test_cuts_of_a_resnet_are_its_block_boundaries():
    model = models.create_model("resnet18", num_classes=10, levels=2).eval()
    ops = models.convert_to_snn(model).ops
    cuts = find_cuts([op.inputs for op in ops], skip={op.index for op in ops
                                                      if op.role == "const"})
    starts = {ops[position].name for position in cuts}
    for block in ("conv2_x.0", "conv2_x.1", "conv3_x.0", "conv5_x.1"):
        assert f"{block}.residual_function.0" in starts  # the block's first conv starts a unit
    # no cut inside a block: its input stays alive for the shortcut until the addition
    inside = {op.name for op in ops if re.search(r"\.(residual_function\.[1-9]|shortcut)", op.name)}
    assert "conv2_x.0.residual_function.3" in inside and not starts & inside
    # the step simulator's segments begin at these cuts (budgets giving 3 segments)
    x = torch.zeros(8, 3, 32, 32)
    for budget in (3, 6):
        plan = models.convert_to_snn(model, step_budget=budget).chunk_plan(x)
        assert len(plan) == 3 and all(names[0] in starts for names, _ in plan), plan


def test_segments_join_chunks_in_batch_order():
    """Every plan the step budgets give for 5 images (chunks of 1, 2 and 3 images, 2 and 3
    segments): the ANN's counts and logits, and the whole batch's statistics."""
    model, x = live_model("vgg_small", [3, 1, 2, 2, 1], images=5, dtype=torch.float64)
    logits, levels = ann_levels(model, x)
    whole = models.convert_to_snn(model, step_budget=10**6)
    assert [size for _, size in whole.chunk_plan(x)] == [5]
    _, whole_stats = assert_counts_and_logits(whole, x, logits, levels)
    plans = {}
    for budget in range(1, 16):
        snn = models.convert_to_snn(model, step_budget=budget)
        plans.setdefault(tuple((names[0], size) for names, size in snn.chunk_plan(x)), snn)
    sizes = [[size for _, size in plan] for plan in plans]
    assert [2, 5] in sizes and [1, 3, 5] in sizes and [3, 5] in sizes, sizes
    for plan, snn in plans.items():
        # float64: a convolution over a different number of images may block its sums
        # differently (seen on a 16-core CPU): logits agree to rounding, counts exactly
        _, stats = assert_counts_and_logits(snn, x, logits, levels, label=str(plan))
        for s, w in zip(stats, whole_stats, strict=True):
            assert s.as_dict() == w.as_dict(), (plan, s.name)


def test_run_segments_gathers_trains_step_by_step():
    """A 3-step train split into chunks of 2 images comes back step-major, (T*B, ...)."""
    x = torch.arange(5.0).view(5, 1)  # five "images"
    segments = [Segment(0, 1, 2), Segment(1, 2, 5, source=0, source_steps=3)]

    def run_segment(k, value, batch):
        if k == 0:  # a 3-step train: step t of image b holds 10 t + b
            return torch.cat([value + 10 * t for t in range(3)])
        return value

    out = run_segments(x, segments, run_segment)
    assert out.view(3, 5).tolist() == [[10 * t + b for b in range(5)] for t in range(3)]


def test_the_planning_probe_stays_out_of_the_statistics():
    model, x = live_model("vgg_small", [4, 2, 8, 1, 3], images=3)
    snn = models.convert_to_snn(model)
    _, stats = snn.forward_with_stats(x)  # plans first: one probe image, not counted
    assert all(s.batch == 3 for s in stats)
    assert snn.sim == "step"
