"""The launcher's backend decision (d2_pillars.engine.launch): it follows MODEL.DEVICE, so a CPU
run with several processes uses gloo also where CUDA is visible (NCCL cannot run CPU tensors).

CUDA's visibility is faked by patching ``torch.cuda.is_available`` / ``device_count``; the
launcher's collaborators (detectron2's NCCL ``launch`` and ``mp.spawn``) are replaced by recorders,
so the test checks which path the decision takes, not that processes start (the two-process test
of tests/engine/test_train_net.py does that with real gloo processes).
"""

import importlib
import os
import pytest
import torch

from d2_pillars.engine import argument_parser

# the module (d2_pillars.engine re-exports its ``launch`` function under the same name)
launch_module = importlib.import_module("d2_pillars.engine.launch")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml")


@pytest.fixture
def cuda_visible(monkeypatch):
    """Make the process believe 2 GPUs are present."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def recorded(monkeypatch):
    """Replace detectron2's launch and mp.spawn by recorders; returns the list of calls."""
    calls = []
    monkeypatch.setattr(launch_module, "d2_launch", lambda *a, **k: calls.append(("nccl", a)))
    monkeypatch.setattr(launch_module.mp, "spawn", lambda fn, **k: calls.append(("gloo", k)))
    return calls


@pytest.mark.parametrize(
    "device, cuda, world, expected",
    [
        ("cpu", True, 2, "gloo"),
        ("cpu", False, 2, "gloo"),
        ("cuda", True, 2, "nccl"),
        ("cuda:1", True, 8, "nccl"),
        ("cuda", False, 2, "gloo"),  # no CUDA at all: CPU processes
        ("cpu", True, 1, None),
        ("cuda", True, 1, None),
    ],
)
def test_select_backend(monkeypatch, device, cuda, world, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert launch_module.select_backend(device, world) == expected


def _train_net_args(*opts):
    return argument_parser().parse_args(["--config-file", CONFIG, "--num-gpus", "2", *opts])


def test_cpu_run_with_cuda_visible_spawns_gloo(cuda_visible, recorded):
    args = _train_net_args("MODEL.DEVICE", "cpu")
    assert launch_module.device_of_args((args,)) == "cpu"
    launch_module.launch(print, 2, args=(args,))
    assert [c[0] for c in recorded] == ["gloo"]
    assert recorded[0][1]["nprocs"] == 2


def test_cuda_run_with_cuda_visible_goes_through_detectron2(cuda_visible, recorded):
    launch_module.launch(print, 2, args=(_train_net_args("MODEL.DEVICE", "cuda"),))
    assert [c[0] for c in recorded] == ["nccl"]


def test_explicit_device_wins_over_args(cuda_visible, recorded):
    launch_module.launch(print, 2, args=(_train_net_args("MODEL.DEVICE", "cuda"),), device="cpu")
    assert [c[0] for c in recorded] == ["gloo"]


def test_single_process_never_reads_the_config(cuda_visible, recorded):
    args = _train_net_args("MODEL.DEVICE", "cpu")
    args.config_file = "/nonexistent.yaml"  # would raise if the launcher loaded it
    launch_module.launch(print, 1, args=(args,))
    assert [c[0] for c in recorded] == ["nccl"]  # detectron2's launch runs main in-process
