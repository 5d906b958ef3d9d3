"""Multi-process launching that also works without GPUs.

detectron2 v0.6's ``launch`` asserts CUDA and uses NCCL. With GPUs we call it unchanged; on a
machine without CUDA, ``num_gpus_per_machine`` processes are spawned on the CPU with the gloo
backend (useful for debugging distributed code, and how the tests exercise ``main``).
"""

import logging
from datetime import timedelta
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["launch"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func,
    num_gpus_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """Same signature as :func:`detectron2.engine.launch`; falls back to CPU + gloo without CUDA."""
    if torch.cuda.is_available() or num_machines * num_gpus_per_machine <= 1:
        return d2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
    world_size = num_machines * num_gpus_per_machine
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url must be given for multi-machine jobs")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.warning("CUDA is not available: running %d processes on the CPU (gloo).", world_size)
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
