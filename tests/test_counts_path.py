"""The fast paths against the plain computations they replace.

- the counts path (``convert_to_snn(ann, sim="counts")``) against the step simulator;
- the step simulator's closed-form correction phase against the literal step loop;
- batch chunking of the step simulator against one pass over the whole batch;
- the fused QCFS gradient against autograd through the textbook formula.
"""
import pytest
import torch

import models
from helpers import (assert_counts_and_logits, assert_logits_close, assert_snn_exact,
                     few_long_levels, live_model, multi_segment_snn)
from models import convert_to_snn, list_models
from models.spiking import pascal_correct_
from test_convert import REFERENCE_LEVELS
from test_models import EXPECTED_LAYERS

QUICK = ("vgg_small", "resnet20")
CASES = [pytest.param(arch, variant, marks=() if arch in QUICK else pytest.mark.slow)
         for arch, variant in [(arch, "cifar") for arch in list_models()] +
         [("resnet18", "imagenet")]]


@pytest.mark.parametrize("arch, variant", CASES)
def test_counts_path_equals_step_simulator(arch, variant):
    # Varied levels (adjacent layers differ) make T_in < L, T_in > L and residual additions
    # of trains of different lengths all occur.
    levels = few_long_levels(EXPECTED_LAYERS[arch], seed=7)
    model, x = live_model(arch, levels, variant=variant, images=2, seed=4)
    runs = assert_snn_exact(model, x, min_classes=1)  # both paths: the ANN's counts, logits
    step_logits, step_stats = runs["step"]
    counts_logits, counts_stats = runs["counts"]
    counts_snn = convert_to_snn(model, sim="counts")

    for c, s in zip(counts_stats, step_stats, strict=True):
        assert c.emitted_spikes == s.emitted_spikes
        # nominal lengths and derived step counts are the step simulator's
        assert (c.num_steps_in, c.level, c.correct_steps, c.neurons, c.batch) == \
            (s.num_steps_in, s.level, s.correct_steps, s.neurons, s.batch), s.name
        assert c.neuron_updates == s.neuron_updates
        # not simulated on the counts path
        assert c.excitatory_corrections is None and c.inhibitory_corrections is None
    assert_logits_close(counts_logits, step_logits)
    assert_logits_close(counts_snn(x), step_logits)


def test_counts_path_reports_the_step_simulators_input_lengths():
    """Independent of the step simulator: in VGG layer n is fed by layer n-1 (first: 1)."""
    levels = REFERENCE_LEVELS["vgg16"]
    model, x = live_model("vgg16", levels, images=2)
    _, stats = convert_to_snn(model, sim="counts").forward_with_stats(x)
    assert [s.num_steps_in for s in stats] == [1] + levels[:-1]
    assert [s.correct_steps for s in stats] == \
        [max(t, level) - 1 for t, level in zip([1] + levels[:-1], levels, strict=True)]


def test_counts_path_residual_act_gets_the_branch_length():
    # stem L=2; block 1: branch 8, act 3; block 2: branch 1, act 4; ...
    levels = [2, 8, 3, 1, 4] + [2] * 12
    model, x = live_model("resnet18", levels, images=2)
    _, stats = convert_to_snn(model, sim="counts").forward_with_stats(x)
    assert [s.num_steps_in for s in stats[:5]] == [1, 2, 8, 3, 1]


def test_unknown_sim_is_rejected():
    model = models.create_model("vgg_small", num_classes=3, levels=2)
    with pytest.raises(ValueError, match=r"sim must be one of \('step', 'counts'\), got 'fast'"):
        convert_to_snn(model, sim="fast")


def loop_correct(v, count, num_steps):
    """Phase 2 as the method defines it, one step at a time."""
    for _ in range(num_steps):
        excite = v >= 1
        inhibit = v < 0
        v = torch.where(excite, v - 1, torch.where(inhibit, v + 1, v))
        count = count + excite.to(count.dtype) - inhibit.to(count.dtype)
    return v, count


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closed_form_correction_is_bit_identical_to_the_loop(dtype):
    generator = torch.Generator().manual_seed(0)
    tiny = torch.finfo(dtype).eps / 4  # v + 1 rounds to exactly 1.0 for v in [-tiny, 0)
    special = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 7.0, 7.25, 9.5, -0.0, -tiny, -tiny / 8,
                            -0.5, -1.0, -1.0 - tiny * 2, -2.5, -8.0, -1e-30, 1 - tiny,
                            1e6 + 0.25, -1e6 + 0.75], dtype=dtype)
    values = torch.cat([special, torch.randn(2000, generator=generator, dtype=dtype) * 4,
                        torch.rand(500, generator=generator, dtype=dtype) * -1e-6])
    for num_steps in range(0, 10):
        start_count = torch.randint(-3, 8, values.shape, generator=generator)
        expected_v, expected_count = loop_correct(values.clone(), start_count.clone(), num_steps)
        for count_dtype in (torch.int32, dtype):
            v, count = values.clone(), start_count.to(count_dtype)
            pascal_correct_(v, count, num_steps)
            assert torch.equal(v, expected_v), num_steps
            assert torch.equal(count.to(torch.int64), expected_count), num_steps
    # the rounding case really occurs: from -tiny, one inhibitory step gives exactly 1.0
    v, count = loop_correct(torch.tensor([-tiny], dtype=dtype), torch.zeros(1), 1)
    assert float(v) == 1.0 and float(count) == -1


@pytest.mark.parametrize("arch, levels", [
    ("vgg_small", [16, 1, 8, 2, 3]),
    pytest.param("resnet18", REFERENCE_LEVELS["resnet18"], marks=pytest.mark.slow)])
def test_batch_chunks_give_the_same_result(arch, levels):
    model, x = live_model(arch, levels, images=4, seed=2)
    whole = convert_to_snn(model, step_budget=10**6)
    chunked = multi_segment_snn(model, x)  # several segments, the first chunked
    assert [size for _, size in whole.chunk_plan(x)] == [4]
    logits, stats = whole.forward_with_stats(x, keep_counts=True)
    _, chunk_stats = assert_counts_and_logits(chunked, x, logits,
                                              {s.name: s.counts for s in stats})
    for c, s in zip(chunk_stats, stats, strict=True):
        assert c.as_dict() == s.as_dict()


def test_chunk_plan_gives_long_trains_small_chunks_and_the_rest_the_batch():
    model = models.create_model("vgg16", num_classes=10, levels=REFERENCE_LEVELS["vgg16"]).eval()
    snn = convert_to_snn(model)
    x = torch.zeros(32, 3, 32, 32)
    plan = snn.chunk_plan(x)
    sizes = [size for _, size in plan]
    # layer1 emits 8 steps of the 32x32 maps: its conv on them holds 8x the ANN's tensors
    assert plan[0][0][0] == "layer1.0" and sizes[0] == 4
    # from stage 3 on, trains are short or maps small: one chunk, weights read once
    assert "layer3.0" in plan[-1][0] and sizes[-1] == 32
    assert all(b % a == 0 for a, b in zip(sizes, sizes[1:])), sizes  # equal sub-chunks
    # every operation once, in forward order (inputs, constants and the output not listed)
    assert [name for names, _ in plan for name in names] == [
        op.name for op in snn.ops if op.role not in ("input", "const", "meta", "output")]
    assert convert_to_snn(model, sim="counts").chunk_plan(x)[0][1] == 32
    assert convert_to_snn(model).chunk_plan(x[:1])[0][1] == 1


@pytest.mark.slow
def test_step_simulator_tensors_stay_within_the_anns_at_the_same_batch():
    """Measured, not planned: the largest (inputs + output) of any module call during the
    real forward, against the same for the ANN on the same batch (default budget)."""
    model, x = live_model("vgg16", 8, images=16, seed=3, dtype=torch.float32)

    def largest_call(net, run):
        largest = [0]

        def hook(module, args, output):
            tensors = [t for t in (*args, output) if torch.is_tensor(t)]
            largest[0] = max(largest[0], sum(t.numel() for t in tensors))

        # leaves: the SNN's convolutions, linear layers and pools run through their modules
        handles = [m.register_forward_hook(hook) for m in net.modules()
                   if not m._modules and m is not net]
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()
        return largest[0]

    with torch.no_grad():
        ann_largest = largest_call(model, lambda: model(x))
    snn = convert_to_snn(model)
    snn_largest = largest_call(snn, lambda: snn(x))
    unchunked = convert_to_snn(model, step_budget=10**6)
    unchunked_largest = largest_call(unchunked, lambda: unchunked(x))
    assert snn_largest <= ann_largest  # the budget: the ANN's largest layer at this batch
    assert unchunked_largest >= 8 * ann_largest  # the 8-step trains the budget avoids


def test_fused_qcfs_gradient_matches_autograd_of_the_formula():
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 8, 5, 5, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    grad_y = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    layer = models.QCFS(level=3, init_threshold=2.5).double()
    layer(x).backward(grad_y)
    fused_x, fused_threshold = x.grad.clone(), layer.threshold.grad.clone()

    # QCFS as clip-then-quantize with a straight-through floor, differentiated by autograd:
    # clamp passes gradients for 0 <= x / threshold <= 1, the fused function's range.
    x.grad = None
    threshold = layer.threshold.detach().clone().requires_grad_()
    scaled = torch.clamp(x / threshold, 0, 1) * 3 + 0.5
    level = scaled + (torch.floor(scaled) - scaled).detach()
    y = level / 3 * threshold
    y.backward(grad_y)
    # the reference multiplies and divides by the threshold: equal up to float64 rounding
    torch.testing.assert_close(fused_x, x.grad, rtol=1e-12, atol=1e-12)
    inside = (x >= 0) & (x <= layer.threshold)
    assert torch.equal(fused_x, torch.where(inside, grad_y, 0.0))
    torch.testing.assert_close(fused_threshold, threshold.grad, rtol=1e-12, atol=1e-12)
