"""Pinned batches for CUDA runs (d2_pillars.data.build): the loaders pin their batches exactly
when ``MODEL.DEVICE`` is CUDA and CUDA is available (the decision is tested on any machine by
faking CUDA's visibility; the ``cuda``-marked test checks real pinned tensors)."""

import pytest
import torch

from d2_pillars.data import build_pillars_test_loader, build_pillars_train_loader
from d2_pillars.data.build import pin_memory_for
from d2_pillars.engine import load_config

VAL, TRAIN = "pinning_nus_val", "pinning_nus_train"


@pytest.fixture(scope="module")
def splits(register_small_synthetic, tmp_path_factory):
    register_small_synthetic("nuscenes", tmp_path_factory.mktemp("pin"), VAL, TRAIN)


def _cfg(device):
    return load_config(
        "",
        [
            "MODEL.DEVICE", device,
            "DATASETS.TRAIN", f"('{TRAIN}',)",
            "INPUT.NUM_SWEEPS", "0",
            "SOLVER.IMS_PER_BATCH", "1",
            "DATALOADER.NUM_WORKERS", "0",
        ],
    )  # fmt: skip


@pytest.mark.parametrize("device, cuda, pinned", [
    ("cuda", True, True), ("cuda:0", True, True), ("cpu", True, False), ("cuda", False, False),
])  # fmt: skip
def test_pin_decision(monkeypatch, splits, device, cuda, pinned):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = _cfg(device)
    assert pin_memory_for(cfg) is pinned
    assert build_pillars_test_loader(cfg, VAL).pin_memory is pinned
    assert build_pillars_train_loader(cfg).pin_memory is pinned


@pytest.mark.cuda
def test_cuda_batches_are_pinned(splits):
    cfg = _cfg("cuda")
    batch = next(iter(build_pillars_test_loader(cfg, VAL)))
    assert batch[0]["voxels"].is_pinned()
    batch = next(iter(build_pillars_train_loader(cfg)))
    assert batch[0]["voxels"].is_pinned() and batch[0]["gt_classes"].is_pinned()
