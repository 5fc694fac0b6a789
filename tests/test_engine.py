"""The training engine's pieces on their own: resume decisions, sharded resumable data order,
and signal handling with real signals to this process."""
import os
import platform
import signal

import pytest
import torch

import allocator
import engine
import main_train
from config import TrainConfig
from data import shard_order
from errors import CheckpointError


@pytest.fixture
def no_restart(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)


def test_resume_source_decisions(tmp_path, monkeypatch, no_restart):
    latest = tmp_path / "run.pth"

    def source(**kwargs):
        return engine.resume_source(TrainConfig(epochs=1, run_id="run",
                                                checkpoint_dir=tmp_path, **kwargs))

    assert source() is None  # a new run
    assert source(resume="auto") is None  # nothing to resume
    latest.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="already has this checkpoint") as caught:
        source()
    assert caught.value.field == "resume" and caught.value.path == latest
    assert source(overwrite=True) is None
    assert source(resume="auto") == latest
    assert source(resume=str(latest)) == latest  # what --resume_from_ckpt=1 passes
    other = tmp_path / "other.pth"
    assert source(resume=str(other)) == other
    # a worker restarted by torchrun resumes whatever it was launched with, --overwrite too
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert source(overwrite=True) == latest
    assert source() == latest
    latest.unlink()
    assert source(overwrite=True) is None


def test_resume_auto_and_overwrite_exclude_each_other(capsys):
    from conftest import run_script
    from helpers import assert_one_line_error
    assert run_script(main_train, ["-data", "digits", "--resume", "auto", "--overwrite"]) == 2
    assert_one_line_error(capsys, "--resume auto", "--overwrite")


@pytest.mark.parametrize("num_items", [20, 21, 23])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_consume_the_epoch_order_front_to_back(num_items, world_size):
    """After s steps of b images on every process, the processes have together consumed the
    first s * b * world_size entries of the epoch's order (padded by its own start), so a
    resumed run skips exactly what was done, whatever the number of processes."""
    order = shard_order(num_items, seed=7)
    assert sorted(order) == list(range(num_items))  # world size 1: the permutation itself
    padded = order + order[:(-num_items) % world_size]
    shards = [shard_order(num_items, 7, rank, world_size) for rank in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1
    batch = 2
    for steps in range(len(shards[0]) // batch + 1):
        consumed = sorted(i for shard in shards for i in shard[:steps * batch])
        assert consumed == sorted(padded[:steps * batch * world_size])
    assert shard_order(num_items, 8) != order  # the seed decides


def test_step_seed_depends_on_every_coordinate():
    seeds = {engine.step_seed(0, e, s, r) for e in range(3) for s in range(50) for r in range(4)}
    assert len(seeds) == 3 * 50 * 4


def test_repeated_sigterm_is_ignored_and_a_second_sigint_stops_at_once():
    before = {sig: signal.getsignal(sig) for sig in engine.StopRequest.SIGNALS}
    ctx = engine.DistContext()
    with engine.StopRequest() as stop:
        assert stop.agreed(ctx) is None
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. from the scheduler and from the launcher
        assert stop.agreed(ctx) == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM
    assert {sig: signal.getsignal(sig) for sig in engine.StopRequest.SIGNALS} == before
    with pytest.raises(KeyboardInterrupt):
        with engine.StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: stop now
            for _ in range(1000):  # the handler runs between bytecodes; it raises here
                pass
    assert {sig: signal.getsignal(sig) for sig in engine.StopRequest.SIGNALS} == before


def test_evaluate_counts_every_image_once():
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [2.0, 1.0, 0]])
    targets = torch.tensor([0, 0, 0])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, targets),
                                         batch_size=2)
    acc1, loss, images = engine.evaluate(model, loader, engine.DistContext(), False)
    assert images == 3 and acc1 == pytest.approx(200 / 3)
    expected = torch.nn.functional.cross_entropy(model(x).double(), targets).item()
    # per-batch sums are float32 (the model's dtype), added up in float64: float32 rounding
    assert loss == pytest.approx(expected, rel=1e-6)


def test_cpu_training_keeps_freed_memory(monkeypatch):
    """glibc accepts each allocator setting (mallopt returns 1 for each, else it is left out
    of the answer); a setting already in the environment leaves them all to the user."""
    for name in allocator.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    expected = {name: value for name, (_, value) in allocator.SETTINGS.items()}
    assert allocator.keep_freed_memory() == (expected if glibc else None)
    assert expected["MALLOC_MMAP_THRESHOLD_"] == 32 * 1024 * 1024
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert allocator.keep_freed_memory() is None
