"""The step simulator's segment plan: the planner against brute force, the forward chain, and
the one-image probe staying invisible to hooks."""
import itertools
import math
import random

import pytest
import torch
from torch import nn

import models
from helpers import live_model
from models.chunking import (BUFFER_SHARE, UnitProfile, forward_chain, plan_segments,
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


def test_forward_chain_unrolls_sequentials_and_models_with_a_chain():
    model, x = live_model("vgg_small", 2, images=2, dtype=torch.float64)
    chain = forward_chain(model)
    assert all(not isinstance(unit, nn.Sequential) for unit in chain)
    h = x
    with torch.no_grad():
        for unit in chain:
            h = unit(h)
        assert torch.equal(h, model(x))  # the chain is the forward, in order

    class Custom(nn.Sequential):  # a Sequential with its own forward is kept whole
        def forward(self, x):
            return super().forward(x) * 2

    custom = Custom(nn.Linear(2, 2))
    outer = nn.Sequential(custom, nn.Flatten())
    assert forward_chain(outer) == [custom, outer[1]]


def test_run_segments_joins_chunks_in_batch_order():
    model, x = live_model("vgg_small", [3, 1, 2, 2, 1], images=5, dtype=torch.float64)
    snn = models.convert_to_snn(model)
    units = snn.units
    counts = []  # per neuron call: spikes per neuron over the window, (b, ...)
    handles = [m.register_forward_hook(lambda m, a, out: counts.append((m, (out != 0).sum(0))))
               for _, m in snn.neurons()]

    def run(segments):
        counts.clear()
        with torch.inference_mode():  # as SpikingNetwork.forward runs it
            logits = run_segments(x, segments).sum(0)
        per_neuron = {}
        for neuron, c in counts:  # each neuron sees its chunks in batch order
            per_neuron.setdefault(neuron, []).append(c)
        return logits, {n: torch.cat(c) for n, c in per_neuron.items()}

    try:
        whole, whole_counts = run([(units, 5)])
        for cut in range(1, len(units)):
            logits, chunk_counts = run([(units[:cut], 1), (units[cut:], 2)])
            # float64: a convolution over a different number of images may block its sums
            # differently (seen on a 16-core CPU), so logits agree to rounding (~1e-15
            # relative), far inside 1e-9; the spike counts must agree exactly.
            scale = float(whole.abs().max())
            torch.testing.assert_close(logits, whole, rtol=1e-9, atol=1e-9 * scale)
            for neuron, c in whole_counts.items():
                assert torch.equal(chunk_counts[neuron], c), (cut, neuron.name)
    finally:
        for handle in handles:
            handle.remove()


def test_the_planning_probe_is_invisible_to_hooks_and_stats():
    model, x = live_model("vgg_small", [4, 2, 8, 1, 3], images=3)
    snn = models.convert_to_snn(model)
    seen = []
    neuron = snn.neurons()[0][1]
    handle = neuron.register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    try:
        _, stats = snn.forward_with_stats(x)  # plans first: one probe image, unseen
    finally:
        handle.remove()
    assert sum(seen) == 3
    assert all(s.batch == 3 for s in stats)
    assert neuron.sim == "step" and neuron._recorder is None
