"""Timing helpers shared by the benchmarks."""

import json
import statistics
import time
import torch

__all__ = ["median_time", "print_table", "print_json"]


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, *, repeats=10, warmup=2, device="cpu"):
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows, headers):
    from tabulate import tabulate

    print(tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".4g"))


def print_json(figures):
    print(json.dumps(figures, sort_keys=True))
