"""Multi-process launching that follows ``MODEL.DEVICE``, with or without GPUs.

detectron2 v0.6's ``launch`` asserts CUDA and uses NCCL. Processes of a CUDA run (``MODEL.DEVICE``
cuda and CUDA present) go through it unchanged; every other multi-process run (``MODEL.DEVICE``
cpu, also on a machine where CUDA is visible, or no CUDA at all) spawns ``num_gpus_per_machine``
processes on the CPU with the gloo backend (debugging distributed code; how the tests exercise
``main``). NCCL cannot run CPU tensors, so the device, not the machine, decides the backend.
"""

import logging
from datetime import timedelta
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["launch", "select_backend", "device_of_args"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


def select_backend(device, world_size):
    """The process-group backend of a run: ``None`` for one process (no group), "nccl" for CUDA
    processes when CUDA is available, otherwise "gloo".

    Args:
        device (str or torch.device): the run's ``MODEL.DEVICE`` ("cpu", "cuda", "cuda:0", ...).
        world_size (int): number of processes over all machines.
    """
    if world_size <= 1:
        return None
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return "nccl"
    return "gloo"


def device_of_args(args):
    """``MODEL.DEVICE`` of the config that ``tools/train_net.py``'s arguments name (``args[0]``, a
    namespace with ``config_file`` and ``opts``); without such arguments: "cuda" when CUDA is
    available, else "cpu" (detectron2's default)."""
    ns = args[0] if len(args) else None
    if ns is not None and hasattr(ns, "config_file") and hasattr(ns, "opts"):
        from .defaults import load_config

        return load_config(ns.config_file, ns.opts).MODEL.DEVICE
    return "cuda" if torch.cuda.is_available() else "cpu"


def launch(
    main_func,
    num_gpus_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
    device=None,
):
    """Same signature as :func:`detectron2.engine.launch` plus ``device``: the backend follows the
    run's device (:func:`select_backend`); CPU processes are spawned here with gloo.

    Args:
        device (str or None): the processes' ``MODEL.DEVICE``; None: read from ``args``
            (:func:`device_of_args`).
    """
    world_size = num_machines * num_gpus_per_machine
    backend = None
    if world_size > 1:
        backend = select_backend(device if device is not None else device_of_args(args), world_size)
    if backend != "gloo":
        return d2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url must be given for multi-machine jobs")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.warning(
        "Running %d processes on the CPU (gloo)%s.",
        world_size,
        "" if torch.cuda.is_available() else ": CUDA is not available",
    )
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(
    local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout
):
    global_rank = machine_rank * num_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank,
        timeout=timeout,
    )  # fmt: skip
    # detectron2's comm needs the group of the processes on this machine.
    for i in range(world_size // num_per_machine):
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
