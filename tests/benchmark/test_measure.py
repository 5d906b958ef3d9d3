"""The benchmarks' measuring tools: per-module clocks, peak resident memory."""

import pytest
import torch

from d2_pillars.benchmark import measure


def test_module_clock_times_only_the_hooked_modules():
    slow = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU())
    clock = measure.ModuleClock([slow], "cpu")
    x = torch.randn(512, 256)
    with torch.no_grad():
        slow(x)
    once = clock.wall
    assert once > 0 and clock.cpu >= 0
    torch.randn(2000, 2000).sum()  # not inside a hooked module: not counted
    assert clock.wall == once
    clock.reset()
    assert clock.wall == 0.0
    clock.remove()
    with torch.no_grad():
        slow(x)
    assert clock.wall == 0.0


def test_peak_rss_reset_and_read():
    before = measure.peak_rss_bytes()
    assert before > 0
    if not measure.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here")
    after_reset = measure.peak_rss_bytes()
    assert after_reset <= before
    block = torch.ones(64 * 2**20 // 4)  # 64 MB touched
    assert measure.peak_rss_bytes() >= after_reset + 32 * 2**20
    del block
