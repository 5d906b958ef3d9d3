"""CUDA ops against their CPU results (skipped without CUDA; ``pytest -m cuda`` runs them).

Voxelization: the torch backend on CUDA gives spconv's CPU voxels bit for bit (same points, same
order). Rotated IoU: within 1e-5. NMS: see tests/layers/test_nms_device.py.
"""

import pytest
import torch

from d2_pillars.benchmark.ops import NUSCENES_VOXEL, scene_boxes, synthetic_cloud
from d2_pillars.layers import Voxelizer, pairwise_iou_rotated_bev

pytestmark = pytest.mark.cuda


def test_cuda_voxelization_equals_cpu():
    points = synthetic_cloud(300_000, 0)
    ref = Voxelizer(**NUSCENES_VOXEL, backend="spconv")(points)
    got = Voxelizer(**NUSCENES_VOXEL)(points.cuda())  # "auto": torch on CUDA
    assert all(t.is_cuda for t in got)
    for a, b in zip(ref, got):
        assert torch.equal(a, b.cpu())


def test_cuda_rotated_iou_equals_cpu():
    gen = torch.Generator().manual_seed(0)
    a, b = scene_boxes(1000, gen, span=20.0), scene_boxes(800, gen, span=20.0)
    cpu = pairwise_iou_rotated_bev(a, b)
    dev = pairwise_iou_rotated_bev(a.cuda(), b.cuda())
    assert dev.is_cuda
    assert float((cpu - dev.cpu()).abs().max()) < 1e-5
