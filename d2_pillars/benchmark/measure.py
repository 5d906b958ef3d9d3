"""How the benchmarks measure: median wall and process-CPU time of callables (:class:`Timer`),
per-module time inside a forward pass (:class:`ModuleClock`), the process's peak resident memory,
and torch's thread count for a block."""

import contextlib
import resource
import statistics
import time
import torch

from .common import median_time

__all__ = [
    "Timer",
    "ModuleClock",
    "read_status_kb",
    "reset_peak_rss",
    "peak_rss_bytes",
    "torch_threads",
]


class Timer:
    """Median wall and process-CPU seconds of callables (``common.median_time`` plus CPU time)."""

    def __init__(self, device, repeats, warmup):
        self.device = device
        self.repeats = repeats
        self.warmup = warmup
        self.wall = {}
        self.cpu = {}

    def __call__(self, key, fn, repeats=None, warmup=None):
        cpu = []

        def run():
            t0 = time.process_time()
            fn()
            cpu.append(time.process_time() - t0)

        warmup = self.warmup if warmup is None else warmup
        self.wall[key] = median_time(
            run,
            repeats=self.repeats if repeats is None else repeats,
            warmup=warmup,
            device=self.device,
        )
        self.cpu[key] = statistics.median(cpu[warmup:])
        return self.wall[key]


def read_status_kb(field):
    """A ``kB`` field of ``/proc/self/status`` (Linux), in bytes; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark of this process; True when it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    peak = read_status_kb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


class ModuleClock:
    """Wall and process-CPU seconds spent inside the forward calls of some modules (via hooks),
    to split one end-to-end run into its dense part and the rest."""

    def __init__(self, modules, device):
        self.cuda = torch.device(device).type == "cuda"
        self.wall = self.cpu = 0.0
        self._start = None
        self._handles = []
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(self._enter))
            self._handles.append(m.register_forward_hook(self._exit))

    def _now(self):
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def _enter(self, module, inputs):
        self._start = self._now()

    def _exit(self, module, inputs, output):
        wall, cpu = self._now()
        self.wall += wall - self._start[0]
        self.cpu += cpu - self._start[1]

    def reset(self):
        self.wall = self.cpu = 0.0

    def remove(self):
        for h in self._handles:
            h.remove()


@contextlib.contextmanager
def torch_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
