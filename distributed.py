"""Processes for training: launch modes, devices, process groups that survive elastic
restarts, and a spawn launcher that forwards SIGTERM/SIGINT to its workers.

Three launch modes run the same worker function:

- ``"single"``: one process, no process group;
- ``"torchrun"``: torchrun started the processes and set RANK, WORLD_SIZE, LOCAL_RANK, ...;
- ``"spawn"``: the reference README's ``--multiprocessing-distributed`` launch, one process
  per GPU (or ``--nproc`` CPU processes) started by :func:`spawn`.
"""
import atexit
import datetime
import gc
import logging
import os
import signal
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dataclasses import dataclass

from errors import ExitCode, PascalError
from utils import UsageError, one_line

__all__ = ["DistContext", "current_context", "ProcessConfig", "launch_mode", "free_port",
           "process_device", "init_process_group", "leave_process_group", "spawn",
           "detach_from_terminal", "ProcessPlace", "run_worker", "exit_worker", "exit_process"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands. ``distributed``: a process group exists (torchrun or the
    spawn launch); collectives then run on ``device`` (the CPU for gloo, the GPU for nccl)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self):
        return self.rank == 0


def current_context(model=None):
    """This process's :class:`DistContext` for a caller that did not make one: the process
    group's rank and size if one exists -- inside torchrun without one, it is joined first
    (nccl on CUDA, gloo otherwise) -- else a single process. The device: ``cuda:LOCAL_RANK``
    in a CUDA process group, else ``model``'s (the CPU without a model)."""
    device = torch.device("cpu")
    if model is not None:
        parameter = next(iter(model.parameters()), None)
        device = parameter.device if parameter is not None else device
    if not dist.is_initialized() and launch_mode(False, 1) == "torchrun":
        backend = "nccl" if device.type == "cuda" else "gloo"
        init_process_group(backend, "torchrun", int(os.environ["RANK"]),
                           int(os.environ["WORLD_SIZE"]), None, 1800)
        # the group this module joined, it also leaves, before the interpreter shuts down
        atexit.register(_leave_at_exit)
    if not dist.is_initialized():
        return DistContext(device=device)
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device,
                       distributed=True)


def leave_process_group(clean):
    """Leave the process group: after a clean finish, first wait for every peer, so that no
    process tears the group down while another still uses it; after a failure (the peers may
    be mid-collective) at once. The group is destroyed while the interpreter is whole, so
    the backend's threads are joined here rather than during interpreter shutdown, where a
    two-process gloo job otherwise aborts now and then."""
    if not dist.is_initialized():
        return
    if clean:
        dist.barrier(device_ids=[torch.cuda.current_device()]
                     if dist.get_backend() == "nccl" else None)
    gc.collect()  # frees what the run built (DDP's reducer holds the group)
    dist.destroy_process_group()


def _leave_at_exit():
    # an uncaught exception leaves itself in sys.last_value before exit handlers run
    leave_process_group(clean=getattr(sys, "last_value", None) is None)


def launch_mode(multiprocessing_distributed, world_size):
    """``"torchrun"`` (RANK and WORLD_SIZE set), ``"spawn"`` or ``"single"``."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if multiprocessing_distributed:
            raise UsageError("torchrun already starts one process per GPU: drop "
                             "--multiprocessing-distributed")
        return "torchrun"
    if multiprocessing_distributed:
        return "spawn"
    if world_size > 1:
        raise UsageError("--world-size > 1 needs --multiprocessing-distributed (one process per "
                         "GPU on each node), or launch with torchrun")
    return "single"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_device(spec, local_rank, local_world_size):
    """The device of one process from ``-dev``: ``cpu``; ``cuda`` (with several processes per
    node, ``cuda:LOCAL_RANK``); ``cuda:N`` or ``N`` (one process only). Raises UsageError."""
    spec = "cuda" if spec is None and torch.cuda.is_available() else (spec or "cpu")
    spec = f"cuda:{spec}" if str(spec).isdigit() else str(spec)
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {spec!r} is not supported for training: use cpu, cuda or "
                         "cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} asked for, but CUDA is not available here: pass "
                         "-dev cpu to train on the CPU")
    if device.index is None:
        device = torch.device("cuda", local_rank)
    elif local_world_size > 1:
        raise UsageError(f"-dev {spec} names one GPU, but this node runs {local_world_size} "
                         "processes: pass -dev cuda (each process then uses cuda:LOCAL_RANK)")
    if device.index >= torch.cuda.device_count():
        raise UsageError(f"process {local_rank} on this node needs {device}, but the node has "
                         f"{torch.cuda.device_count()} GPU(s): start at most one process per "
                         "GPU")
    return device


def init_process_group(backend, launch, rank, world_size, dist_url, timeout_seconds):
    """Join the process group of this launch.

    torchrun: on the launcher's key-value store (MASTER_ADDR:MASTER_PORT), under a prefix per
    restart (``TORCHELASTIC_RESTART_COUNT``). Restarted workers reuse the master port, and on
    plain ``env://`` they can read the previous attempt's addresses and fail to connect
    (measured with gloo: 7 of 11 restarts failed or hung); a fresh prefix per attempt starts
    every rendezvous clean. When the launcher hosts no store, rank 0 hosts it there.
    Spawn: the ``--dist-url`` rendezvous.
    """
    timeout = datetime.timedelta(seconds=timeout_seconds)
    if launch == "torchrun":
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              world_size, is_master=not agent_store and rank == 0,
                              timeout=timeout, multi_tenant=not agent_store)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"attempt{attempt}/", store),
                                rank=rank, world_size=world_size, timeout=timeout)
    else:
        dist.init_process_group(backend, init_method=dist_url, rank=rank,
                                world_size=world_size, timeout=timeout)


def spawn(worker, args, nprocs):
    """Start ``worker(local_rank, *args)`` in ``nprocs`` processes and wait for them; returns 0,
    or 128 + signal when a forwarded signal stopped them.

    SIGTERM and SIGINT sent to this launcher are forwarded to every worker, so a scheduler's
    preemption or a Ctrl-C reaches the training processes (which stop at an agreed step and
    save), and none is left running when the launcher is asked to stop. The workers run in
    their own process groups (see :func:`detach_from_terminal`), so a Ctrl-C in the terminal
    reaches them once, through here, as with torchrun. Otherwise raises what
    ``mp.ProcessContext.join`` raises when a worker fails.
    """
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False,
                                 start_method="spawn")
    pids = [process.pid for process in context.processes]
    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Wait in short slices, so that a forwarded signal is handled promptly.
        while not context.join(timeout=0.5):
            pass
    except mp.ProcessExitedException:
        if not forwarded:
            raise
        # The workers stopped on the signal (status 128 + signal); join then terminates any
        # worker still tearing down, which is no failure of the run.
        return 128 + forwarded[0]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def detach_from_terminal():
    """Called first in a spawned worker: leave the launcher's process group, so terminal
    signals reach the launcher only, which forwards them once (see :func:`spawn`)."""
    os.setpgrp()


class ProcessPlace:
    """Rank, world size and local rank of this process in its launch (see the module doc)."""

    def __init__(self, launch, local_rank=0, node_rank=0, nproc=1, nodes=1):
        if launch == "torchrun":
            self.rank, self.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        elif launch == "spawn":
            self.rank, self.world_size = node_rank * nproc + local_rank, nodes * nproc
            self.local_world_size = nproc
        else:
            self.rank, self.world_size, self.local_world_size = 0, 1, 1
        self.local_rank = local_rank
        self.distributed = launch != "single"


@dataclass(frozen=True)
class ProcessConfig:
    """How one training process joins its launch: ``launch`` (see :func:`launch_mode`), the
    device spec (``-dev``), the process group's ``backend``, ``dist_url`` (spawn) and
    ``timeout`` (seconds), the run's latest ``checkpoint`` (named when a peer is lost), and
    ``debug`` (tracebacks instead of one-line errors)."""

    launch: str = "single"
    device: str | None = None
    backend: str | None = None
    dist_url: str | None = None
    timeout: float = 1800
    checkpoint: str | None = None
    debug: bool = False


def run_worker(train, place, process, error_line=str):
    """Run ``train(ctx)`` in this process of the launch; returns the exit status.

    Chooses the device (``cuda`` means ``cuda:LOCAL_RANK``), joins the process group, and
    turns failures into statuses (:class:`errors.ExitCode`): bad input (a UsageError or a
    library's :class:`errors.PascalError`) is one line from rank 0, ``error_line(error)``
    (status 2); a collective that fails because a peer died or stopped answering is one line
    (status 1): nothing was written, so the last completed checkpoint stands. Any other
    exception is a bug and keeps its traceback.
    """
    status = ExitCode.FAILED
    try:
        device = process_device(process.device, place.local_rank, place.local_world_size)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        elif "OMP_NUM_THREADS" not in os.environ:
            # processes on one CPU machine share its cores; oversubscription slows all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // place.local_world_size))
        if place.distributed:
            init_process_group(process.backend, process.launch, place.rank, place.world_size,
                               process.dist_url, process.timeout)
        ctx = DistContext(rank=place.rank, world_size=place.world_size, device=device,
                          distributed=place.distributed)
        status = train(ctx)
    except (UsageError, PascalError) as error:
        if process.debug:
            raise
        if place.rank == 0:  # every rank meets the same bad input: one line, from rank 0
            print(f"error: {one_line(error_line(error))}", file=sys.stderr)
        status = ExitCode.USAGE
    except KeyboardInterrupt:
        status = ExitCode.SIGNAL + signal.SIGINT
    except RuntimeError as error:
        if not place.distributed or process.debug:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: process {place.rank}: {first}; the last checkpoint, if any, is "
              f"{process.checkpoint}", file=sys.stderr)
        status = ExitCode.FAILED
    finally:
        if place.distributed:
            leave_process_group(clean=status == 0)
    return int(status)


def exit_worker(status):
    """End a training process of a multi-process launch with ``status``, skipping the
    interpreter's teardown.

    The process group's C++ objects (gloo's threads, the rendezvous store) can abort a
    process that destroys them during interpreter teardown ("terminate called without an
    active exception", SIGABRT), after the run has finished and saved: seen about once in a
    hundred two-process CPU runs, under both launchers. Logs are flushed first; checkpoints
    are already on disk (written whole, then renamed), so nothing is lost by leaving this way.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def exit_process(status):
    """A script's last call: ``sys.exit(status)``, or :func:`exit_worker` in a process that
    torchrun started."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        exit_worker(status)
    sys.exit(status)
