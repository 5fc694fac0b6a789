"""The differential fuzzer (tests/fuzz_models.py) in CI: 400 random models, each refused at
conversion in one line or exact on both simulation paths, with the cost report, T_eff and the
latencies computed and checked."""
import pytest
import torch

import fuzz_models

pytestmark = pytest.mark.slow


def test_fuzzer_finds_no_wrong_model_and_covers_every_accepted_form():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    try:
        summary = fuzz_models.run(400, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert summary["failures"] == [] and summary["wrong"] == 0
    assert summary["exact"] + summary["refused"] == 400
    assert summary["exact"] >= 200, summary["refused_by_reason"]  # at least half accepted
    rare = {form: summary["accepted_forms"].get(form, 0) for form in fuzz_models.ACCEPTED_FORMS
            if summary["accepted_forms"].get(form, 0) < 5}
    assert rare == {}, rare
    # the grammar reaches the refusals it is written to reach
    reasons = " ".join(summary["refused_by_reason"])
    for refusal in ("batch", "multiplies two non-constant tensors", "not a spike burst",
                    "pads with the constant", "clamps to other bounds",
                    "sums over every dimension", "stacks along the batch dimension"):
        assert refusal in reasons, refusal


def test_a_generated_model_prints_as_runnable_source():
    source, shape, forms, _ = fuzz_models.generate(7)
    namespace = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional}
    exec(compile(source, "<fuzz model 7>", "exec"), namespace)
    out = namespace["Model"]()(torch.randn(2, *shape))
    for value in fuzz_models._outputs(out):  # a tensor, or a dict or tuple of them
        assert value.shape[0] == 2 and torch.isfinite(value).all()
