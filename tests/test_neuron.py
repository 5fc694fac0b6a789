"""The PASCAL neuron alone, against hand-computed spike trains.

Currents are given in units of the spike amplitude and are multiples of 1/64, so every sum
is exact in floating point and the expected numbers below are exact.
"""
import pytest
import torch

from models import PascalNeuron, pascal_counts

def run(units, level):
    """Feed one neuron ``units`` (spike amplitudes per step); return (spikes, stats)."""
    amplitude = 0.25  # dyadic, so scaling by it stays exact
    neuron = PascalNeuron(level, torch.tensor(amplitude * level, dtype=torch.float64), name="n")
    x_seq = torch.tensor(units, dtype=torch.float64).view(-1, 1, 1) * amplitude  # (T_in, B=1, 1)
    spikes, stats = neuron.simulate(x_seq, record=True, keep_counts=True)
    assert torch.equal(neuron(x_seq), spikes)  # forward is the simulation without statistics
    return spikes.view(-1) / amplitude, stats


# (units per step, L, expected emitted train, excitatory, inhibitory corrections)
CASES = [
    # all input in the first step: 2.5 -> floor(3.0) = 3, fired during accumulation
    ([2.5, 0, 0, 0], 4, [1, 1, 1, 0], 0, 0),
    # all input in the last step: one spike in phase 1, two late excitatory corrections
    ([0, 0, 0, 2.5], 4, [1, 1, 1, 0], 2, 0),
    # alternating signs, total 0: the phase-1 spike is cancelled by an inhibitory one
    ([1, -1, 1, -1], 4, [0, 0, 0, 0], 0, 1),
    # T_in = 1, L = 8: 7.75 -> 8 spikes, needs all 7 correction steps
    ([7.75], 8, [1] * 8, 7, 0),
    # negative total: the potential stays below 0, one inhibitory step drives the count to -1
    ([-3, 0.25], 2, [0, 0], 0, 1),
    # total beyond L is clipped to L: 6 + 1/2 -> 6, emitted 2
    ([3, 3, 0, 0], 2, [1, 1], 2, 0),
    # T_in > L: total 3 -> floor(3.5) = 3, clipped to 2
    ([0.5] * 6, 2, [1, 1], 0, 0),
    # T_in > L with a negative tail: 0.75 -> 1
    ([1, 1, 1, -1, -1, -0.25], 3, [1, 0, 0], 0, 2),
    # exact ties at (k + 1/2): half rounds up, as floor(x + 1/2)
    ([0.25, 0.25], 4, [1, 0, 0, 0], 0, 0),          # 0.5 -> 1
    ([1.5], 4, [1, 1, 0, 0], 1, 0),                 # 1.5 -> 2
    ([2.0, 0.5], 4, [1, 1, 1, 0], 1, 0),            # 2.5 -> 3
    ([-0.25, -0.25], 4, [0, 0, 0, 0], 0, 0),        # -0.5 -> floor(0) = 0
    ([1, -1.5], 2, [0, 0], 0, 1),                   # -0.5 after a spike: cancelled
    # just below a tie stays down: 1.5 - 1/64
    ([1.5 - 1 / 64], 4, [1, 0, 0, 0], 0, 0),
]


@pytest.mark.parametrize("units, level, expected, excite, inhibit", CASES)
def test_neuron_hand_computed(units, level, expected, excite, inhibit):
    spikes, stats = run(units, level)
    assert spikes.tolist() == expected
    assert stats.num_steps_in == len(units)
    assert stats.correct_steps == max(len(units), level) - 1
    assert stats.emitted_spikes == sum(expected)
    assert (stats.excitatory_corrections, stats.inhibitory_corrections) == (excite, inhibit)
    # independent closed form: clip(floor(sum + 1/2), 0, L)
    total = torch.tensor(sum(units), dtype=torch.float64)
    assert int(pascal_counts(total, level)) == sum(expected)


def test_correction_steps_are_necessary():
    """With one correction step fewer, T_in = 1 and L = 8 would emit 7 spikes, not 8."""
    from models.spiking import pascal_accumulate_, pascal_correct_
    v = torch.tensor([0.5], dtype=torch.float64)
    count = torch.zeros(1, dtype=torch.int32)
    pascal_accumulate_(v, count, torch.tensor([[7.75]], dtype=torch.float64))
    pascal_correct_(v, count, 6)
    assert int(count) == 7
    pascal_correct_(v, count, 1)
    assert int(count) == 8


def test_neuron_emits_front_loaded_burst_for_a_batch():
    neuron = PascalNeuron(4, torch.tensor(4.0), name="n")  # amplitude 1
    x_seq = torch.tensor([[0.0, 3.0, -1.0, 9.0]])  # (T_in=1, B=4)
    spikes = neuron(x_seq)
    assert spikes.shape == (4, 4)
    assert spikes.t().tolist() == [[0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]


def test_neuron_rejects_non_time_major_input():
    neuron = PascalNeuron(4, torch.tensor(4.0), name="layer1.2")
    with pytest.raises(ValueError, match=r"layer1\.2.*\(T, B, \.\.\.\).*shape \(5,\)"):
        neuron(torch.zeros(5))
