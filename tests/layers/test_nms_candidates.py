"""The NMS overlap graph's candidate pairs: bounding circles that overlap and areas within the
IoU threshold's factor (a pair outside cannot exceed the threshold)."""

import numpy as np
import pytest
import torch

from d2_pillars.layers.nms import nms_candidate_pairs, overlap_graph
from d2_pillars.layers.rotated_iou import candidate_pairs, pairwise_iou_rotated_bev


def _clustered_boxes(n, seed):
    """Anchor-head-like boxes: clusters of several sizes (x1, x4, x16 areas) and headings."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-40, 40, (n // 10 + 1, 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 1.0, (n, 2))
    base = np.array([[4.5, 2.0], [0.6, 0.6], [1.8, 0.7], [12.0, 3.0]])[rng.integers(0, 4, n)]
    lw = base * rng.choice([1.0, 2.0, 4.0], n)[:, None] * rng.uniform(0.9, 1.1, (n, 1))
    yaw = rng.uniform(-np.pi, np.pi, n)
    return torch.tensor(np.column_stack([xy, lw, yaw]), dtype=torch.float32)


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5])
def test_candidates_are_the_circle_pairs_within_the_area_ratio(threshold):
    boxes = _clustered_boxes(300, seed=int(threshold * 10))
    i, j = nms_candidate_pairs(boxes, threshold)
    assert bool((i < j).all())
    got = set(zip(i.tolist(), j.tolist()))
    assert len(got) == len(i)  # no pair twice
    ci, cj = candidate_pairs(boxes, boxes, upper_triangle=True)
    area = (boxes[:, 2] * boxes[:, 3]).double().abs()
    lo, hi = torch.minimum(area[ci], area[cj]), torch.maximum(area[ci], area[cj])
    keep = lo > (threshold - 1e-4) * hi
    expected = set(zip(ci[keep].tolist(), cj[keep].tolist()))
    assert got == expected
    # a superset of the pairs above the threshold
    iou = pairwise_iou_rotated_bev(boxes, boxes)
    above = torch.triu(iou > threshold, diagonal=1).nonzero().tolist()
    assert {tuple(p) for p in above} <= got


def test_overlap_graph_is_every_pair_above_the_threshold():
    boxes = _clustered_boxes(300, seed=3)
    iou = pairwise_iou_rotated_bev(boxes, boxes)
    i, j = overlap_graph(boxes, 0.2)
    assert {tuple(p) for p in torch.triu(iou > 0.2, diagonal=1).nonzero().tolist()} == set(
        zip(i.tolist(), j.tolist())
    )
    empty = nms_candidate_pairs(boxes[:1], 0.2)
    assert empty[0].numel() == 0 and empty[1].numel() == 0
