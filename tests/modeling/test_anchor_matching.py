"""Anchor assignment (d2_pillars/modeling/anchor_matching.py) against brute-force references."""

import math
import numpy as np
import pytest
import torch

from detectron2.modeling.matcher import Matcher

from d2_pillars.modeling import anchor_matching as anchor_matching_module
from d2_pillars.modeling.anchor_matching import match_anchors
from d2_pillars.modeling.anchors import Anchor3DGenerator
from d2_pillars.structures import LiDARBoxes


def _matcher():
    return Matcher([0.3, 0.6], [0, -1, 1], allow_low_quality_matches=False)


def _aabb(cx, cy, sx, sy):
    return [cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2]


def _iou_numpy(a, b):
    """Brute-force axis-aligned IoU, (K, 4) x (N, 4) -> (K, N), float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ix = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _reference_assign(gt, anchors, neg=0.3, pos=0.6, floor=0.3):
    """Independent max-IoU assignment (mmdetection3d MaxIoUAssigner semantics), numpy loops."""
    iou = _iou_numpy(gt, anchors)
    n = iou.shape[1]
    labels = np.zeros(n, np.int64)
    matches = np.zeros(n, np.int64)
    for j in range(n):
        best = iou[:, j].max()
        matches[j] = iou[:, j].argmax()
        labels[j] = 0 if best < neg else (1 if best >= pos else -1)
    for k in range(iou.shape[0]):
        best = iou[k].max()
        if best >= floor and best > 0:
            for j in np.nonzero(iou[k] == best)[0]:
                labels[j] = 1
                matches[j] = k
    return matches, labels


def test_match_targeted_cases():
    anchors = torch.tensor(
        [
            _aabb(0, 0, 2, 2),  # 0: equal to GT 0 -> positive
            _aabb(0.6, 0, 2, 2),  # 1: IoU 1.4/2.6 = 0.54 with GT 0 -> ignored
            _aabb(1.5, 0, 2, 2),  # 2: IoU 0.5/3.5 = 0.14 -> negative
            _aabb(40, 40, 2, 2),  # 3: far -> negative
            _aabb(10.3, 0, 2, 2),  # 4: best of GT 1, IoU 1.6/6.4 = 0.25 < floor -> negative
            _aabb(20.875, 0, 2, 2),  # 5, 6: tied best anchors of GT 2, IoU 2.25/5.75 = 0.39
            _aabb(19.125, 0, 2, 2),  # (ignore band) -> positive as low-quality matches
        ]
    )
    gt = torch.tensor(
        [_aabb(0, 0, 2, 2), _aabb(11.5, 0, 2, 2), _aabb(20, 0, 2, 2), _aabb(-30, 30, 1, 1)]
    )
    matches, labels = match_anchors(_matcher(), gt, anchors, 0.3)
    assert labels.tolist() == [1, -1, 0, 0, 0, 1, 1]
    assert matches[0] == 0 and matches[5] == 2 and matches[6] == 2
    # GT 3 overlaps no anchor: detectron2's floor-less low-quality step would make every
    # zero-IoU anchor positive; the floor prevents it.
    floorless = Matcher([0.3, 0.6], [0, -1, 1], allow_low_quality_matches=True)
    _, d2_labels = floorless(torch.from_numpy(_iou_numpy(gt, anchors)).float())
    assert (d2_labels == 1).sum() > 3
    # Without low-quality matches the tied anchors of GT 2 are ignored.
    _, labels_no_lq = match_anchors(_matcher(), gt, anchors, None)
    assert labels_no_lq.tolist() == [1, -1, 0, 0, 0, -1, -1]


def test_match_no_gt():
    anchors = torch.tensor([_aabb(0, 0, 2, 2), _aabb(5, 5, 1, 1)])
    matches, labels = match_anchors(_matcher(), torch.zeros(0, 4), anchors, 0.3)
    assert labels.tolist() == [0, 0] and matches.shape == (2,)


@pytest.mark.parametrize("chunk_elements", [1 << 22, 64])
def test_match_against_brute_force(monkeypatch, chunk_elements):
    monkeypatch.setattr(anchor_matching_module, "_MATCH_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(0)
    # Anchors on a grid (as the generator makes them) and GTs near them, so that IoUs hit every
    # band; sizes from a small set makes ties common.
    xs, ys = np.meshgrid(np.arange(0, 20, 1.0), np.arange(0, 10, 1.0))
    sizes = [(2.0, 1.0), (1.0, 2.0), (1.0, 1.0)]
    anchors = np.array(
        [_aabb(x, y, sx, sy) for x, y in zip(xs.ravel(), ys.ravel()) for sx, sy in sizes]
    )
    # Coordinates in multiples of 1/8 keep every IoU exact in float32 and float64, so ties and
    # threshold comparisons agree with the float64 reference.
    q = rng.integers(0, 8 * np.array([20, 10, 3, 3]), size=(12, 4)) / 8.0
    gt = np.array(
        [_aabb(x, y, 0.5 + sx, 0.5 + sy) for x, y, sx, sy in q]
        + [_aabb(3.0, 4.0, 2.0, 1.0)]  # equals an anchor
    )
    matches, labels = match_anchors(
        _matcher(),
        torch.tensor(gt, dtype=torch.float32),
        torch.tensor(anchors, dtype=torch.float32),
        0.3,
    )
    want_matches, want_labels = _reference_assign(gt, anchors)
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    pos = want_labels == 1
    # Where an anchor ties between two GTs the chosen one may differ; compare the IoU instead.
    iou = _iou_numpy(gt, anchors)
    np.testing.assert_allclose(
        iou[matches.numpy()[pos], np.nonzero(pos)[0]],
        iou[want_matches[pos], np.nonzero(pos)[0]],
        atol=1e-6,
    )
    assert set(np.unique(want_labels)) == {-1, 0, 1}


@pytest.mark.parametrize("per_size_ranges", [False, True])
def test_sparse_candidates_match_dense(per_size_ranges):
    sizes = [[4.6, 1.95, 1.72], [0.8, 0.7, 1.7], [1.7, 0.6, 1.3]]
    if per_size_ranges:
        ranges = [
            [-20, -10, -1.8, 20, 10, -1.8],
            [-19.6, -9.6, -1.7, 19.6, 9.6, -1.7],
            [-18.0, -8.0, -1.6, 18.0, 8.0, -1.6],
        ]
    else:
        ranges = [[-20, -10, -1.8, 20, 10, -1.8]]
    gen = Anchor3DGenerator(
        sizes=sizes, ranges=ranges, rotations=[0.0, 1.57], level_scales=[1.0, 2.0, 4.0]
    )
    grid = [(40, 80), (20, 40), (10, 20)]
    anchor_bev = LiDARBoxes(torch.cat(gen.grid_anchors(grid, "cpu"))).nearest_bev()
    g = torch.Generator().manual_seed(0)
    k = 60
    gt = torch.cat(
        [
            torch.rand(k, 2, generator=g) * torch.tensor([48.0, 28.0]) - torch.tensor([24.0, 14.0]),
            torch.zeros(k, 1),
            torch.rand(k, 3, generator=g) * 6 + 0.3,
            torch.rand(k, 1, generator=g) * 2 * math.pi - math.pi,
        ],
        dim=1,
    )
    gt[0, :2] = torch.tensor([100.0, 100.0])  # far outside the grid
    gt_bev = LiDARBoxes(gt).nearest_bev()
    cand = gen.candidate_pairs(gt_bev, grid)
    # no pair twice, and far fewer pairs than the dense matrix
    assert torch.unique(cand[0] * anchor_bev.shape[0] + cand[1]).numel() == cand[0].numel()
    assert cand[0].numel() < 0.2 * k * anchor_bev.shape[0]
    for floor in (0.3, None):
        m_dense, l_dense = match_anchors(_matcher(), gt_bev, anchor_bev, floor)
        m_sparse, l_sparse = match_anchors(_matcher(), gt_bev, anchor_bev, floor, cand)
        assert torch.equal(l_dense, l_sparse)
        pos = l_dense == 1
        assert pos.sum() > 20
        # same matched IoU (an anchor may tie between two GTs)
        iou = _iou_numpy(gt_bev.numpy(), anchor_bev[pos].numpy())
        cols = np.arange(int(pos.sum()))
        np.testing.assert_allclose(
            iou[m_dense[pos].numpy(), cols],
            iou[m_sparse[pos].numpy(), cols],
            atol=1e-6,
        )
