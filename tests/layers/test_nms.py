import math
import numpy as np
import pytest
import shapely
import torch

from d2_pillars.layers import (
    batched_nms_rotated_bev,
    multiclass_nms_rotated_bev,
    nms_rotated_bev,
    pairwise_iou_rotated_bev,
)


def shapely_iou_matrix(boxes):
    """Dense (N, N) IoU with shapely (float64), rectangles built in numpy."""
    b = np.asarray(boxes, dtype=np.float64)
    local = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    xy = local[None] * b[:, None, 2:4]
    c, s = np.cos(b[:, 4])[:, None], np.sin(b[:, 4])[:, None]
    x = b[:, 0:1] + c * xy[..., 0] - s * xy[..., 1]
    y = b[:, 1:2] + s * xy[..., 0] + c * xy[..., 1]
    polys = shapely.polygons(np.stack([x, y], axis=-1))
    ii, jj = np.meshgrid(np.arange(len(b)), np.arange(len(b)), indexing="ij")
    inter = shapely.area(shapely.intersection(polys[ii.ravel()], polys[jj.ravel()]))
    area = shapely.area(polys)
    union = area[ii.ravel()] + area[jj.ravel()] - inter
    return (inter / np.maximum(union, 1e-300)).reshape(len(b), len(b))


def reference_nms(iou, scores, threshold, candidates=None):
    """Plain-Python greedy NMS: by decreasing score (ties: lower index), suppress IoU > thr."""
    idx = range(len(scores)) if candidates is None else candidates
    order = sorted(idx, key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if all(iou[i, k] <= threshold for k in keep):
            keep.append(i)
    return keep


def clustered_boxes(gen, n, clusters, span=40.0):
    """Detection-like boxes: jittered copies around a few object centres, plus size/yaw noise."""
    centres = (torch.rand(clusters, 2, generator=gen) - 0.5) * span
    sizes = torch.rand(clusters, 2, generator=gen) * 3.5 + 0.5
    yaws = (torch.rand(clusters, generator=gen) * 2 - 1) * math.pi
    owner = torch.randint(0, clusters, (n,), generator=gen)
    xy = centres[owner] + torch.randn(n, 2, generator=gen) * 0.6
    lw = sizes[owner] * (1 + 0.2 * torch.randn(n, 2, generator=gen)).clamp(min=0.3)
    yaw = yaws[owner] + 0.3 * torch.randn(n, generator=gen)
    return torch.cat([xy, lw, yaw[:, None]], dim=1)


def make_case(seed, n, clusters, threshold, margin=1e-4):
    """Clustered boxes, random scores and their shapely IoU matrix. Boxes in a pair whose IoU is
    within ``margin`` of the threshold are dropped, so float32 vs float64 cannot flip a decision."""
    gen = torch.Generator().manual_seed(seed)
    boxes = clustered_boxes(gen, n, clusters)
    scores = torch.rand(n, generator=gen)
    iou = shapely_iou_matrix(boxes.numpy())
    close = np.abs(iou - threshold) < margin
    np.fill_diagonal(close, False)
    drop = np.zeros(n, dtype=bool)
    for i, j in zip(*np.nonzero(np.triu(close))):
        if not drop[i] and not drop[j]:
            drop[j] = True
    keep = np.flatnonzero(~drop)
    return boxes[keep], scores[keep], iou[np.ix_(keep, keep)]


@pytest.mark.parametrize("threshold", [0.1, 0.2, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_matches_bruteforce(seed, threshold):
    boxes, scores, iou = make_case(seed, 250, 25, threshold)
    keep = nms_rotated_bev(boxes, scores, threshold)
    assert keep.dtype == torch.long
    expected = reference_nms(iou, scores.numpy(), threshold)
    assert keep.tolist() == expected
    assert len(expected) < (200 if threshold < 0.5 else 248)  # the case really suppresses boxes


def test_nms_threshold_is_strict_and_ties_keep_lower_index():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.2]] * 3 + [[10.0, 0.0, 4.0, 2.0, 0.0]])
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1])
    assert nms_rotated_bev(boxes, scores, 1.0).tolist() == [1, 2, 0, 3]
    assert nms_rotated_bev(boxes, scores, 0.99).tolist() == [1, 3]


def test_nms_empty_and_validation():
    assert nms_rotated_bev(torch.zeros(0, 5), torch.zeros(0), 0.5).shape == (0,)
    assert (
        batched_nms_rotated_bev(torch.zeros(0, 5), torch.zeros(0), torch.zeros(0), 0.5).numel() == 0
    )
    with pytest.raises(ValueError):
        nms_rotated_bev(torch.zeros(3, 7), torch.zeros(3), 0.5)
    with pytest.raises(ValueError):
        nms_rotated_bev(torch.zeros(3, 5), torch.zeros(2), 0.5)
    with pytest.raises(ValueError):
        nms_rotated_bev(torch.zeros(3, 5), torch.zeros(3), 1.5)


def test_nms_matches_dense_greedy_on_a_larger_set():
    # Same greedy on the dense IoU matrix of our own IoU: checks the sparse graph and the fast
    # greedy at a larger size (the IoU itself is checked against shapely elsewhere).
    gen = torch.Generator().manual_seed(7)
    boxes = clustered_boxes(gen, 800, 40, span=90.0)
    scores = torch.rand(800, generator=gen)
    iou = pairwise_iou_rotated_bev(boxes, boxes).numpy()
    keep = nms_rotated_bev(boxes, scores, 0.2)
    assert keep.tolist() == reference_nms(iou, scores.numpy(), 0.2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_nms_matches_per_class_bruteforce(seed):
    threshold = 0.3
    boxes, scores, iou = make_case(seed + 10, 240, 20, threshold)
    gen = torch.Generator().manual_seed(seed)
    idxs = torch.randint(0, 4, (len(boxes),), generator=gen)
    keep = batched_nms_rotated_bev(boxes, scores, idxs, threshold)
    expected = []
    for c in range(4):
        expected += reference_nms(
            iou, scores.numpy(), threshold, (idxs == c).nonzero()[:, 0].tolist()
        )
    expected.sort(key=lambda i: (-float(scores[i]), i))
    assert keep.tolist() == expected
    # Boxes of different categories never suppress each other.
    same = batched_nms_rotated_bev(boxes, scores, torch.zeros_like(idxs), threshold)
    assert len(keep) > len(same)


def reference_multiclass(iou, scores, score_thresh, threshold, max_num):
    dets = []
    for c in range(scores.shape[1]):
        cand = [i for i in range(scores.shape[0]) if scores[i, c] > score_thresh]
        dets += [
            (i, c, float(scores[i, c])) for i in reference_nms(iou, scores[:, c], threshold, cand)
        ]
    dets.sort(key=lambda d: (-d[2], d[1], d[0]))
    return dets[:max_num] if max_num > 0 else dets


@pytest.mark.parametrize("max_num", [0, 50, 10000])
def test_multiclass_nms_matches_bruteforce(max_num):
    threshold = 0.2
    boxes, _, iou = make_case(20, 300, 30, threshold)
    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(len(boxes), 5, generator=gen) ** 3
    scores[:, 4] = 0.0  # a class without candidates
    box_idx, labels, out_scores = multiclass_nms_rotated_bev(
        boxes, scores, 0.05, threshold, max_num
    )
    expected = reference_multiclass(iou, scores.numpy(), 0.05, threshold, max_num)
    assert box_idx.dtype == torch.long and labels.dtype == torch.long
    assert list(zip(box_idx.tolist(), labels.tolist())) == [(i, c) for i, c, _ in expected]
    assert torch.equal(out_scores, scores[box_idx, labels])
    assert len(set(labels.tolist())) == 4


def test_multiclass_nms_score_threshold_is_strict_and_empty():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0], [20.0, 0.0, 4.0, 2.0, 0.0]])
    scores = torch.tensor([[0.05, 0.3], [0.5, 0.05]])
    box_idx, labels, s = multiclass_nms_rotated_bev(boxes, scores, 0.05, 0.2, 100)
    assert list(zip(box_idx.tolist(), labels.tolist())) == [(1, 0), (0, 1)]
    box_idx, labels, s = multiclass_nms_rotated_bev(boxes, scores, 0.9, 0.2, 100)
    assert box_idx.numel() == labels.numel() == s.numel() == 0
    box_idx, labels, s = multiclass_nms_rotated_bev(
        torch.zeros(0, 5), torch.zeros(0, 3), 0.1, 0.2, 10
    )
    assert box_idx.numel() == 0


def test_iou_upper_bound_bounds_shapely_iou_and_is_exact_for_aligned_boxes():
    """The NMS pre-filter may only drop pairs whose IoU cannot exceed the threshold."""
    from d2_pillars.layers.nms import _BOUND_MARGIN, iou_upper_bound_of_pairs

    g = torch.Generator().manual_seed(7)
    n = 120
    boxes = torch.cat(
        [
            (torch.rand(n, 2, generator=g) - 0.5) * 8.0,
            torch.rand(n, 2, generator=g) * 5.0 + 0.05,
            (torch.rand(n, 1, generator=g) * 2 - 1) * 4.0,
        ],
        dim=1,
    ).double()
    boxes[:10] = boxes[10:20]  # duplicates
    boxes[20:30] = boxes[30:40]
    boxes[20:30, 4] += math.pi  # the same rectangles turned by pi
    boxes[40:45, 2] = 0.0  # zero area
    i, j = torch.triu_indices(n, n, 1)
    bound = iou_upper_bound_of_pairs(boxes, i, j)
    exact = torch.from_numpy(shapely_iou_matrix(boxes.numpy())[i.numpy(), j.numpy()])
    assert (bound >= exact - 1e-9).all()
    assert (bound[exact == 0] >= 0).all() and (bound <= 1).all()
    # it prunes: most non-overlapping-enough pairs fall below a 0.2 threshold
    assert (bound <= 0.2 - _BOUND_MARGIN).float().mean() > 0.5
    # axis-aligned pairs: the bounding rectangles are the boxes, so the bound is the IoU
    aligned = boxes.clone()
    aligned[:, 4] = 0.0
    exact_aligned = shapely_iou_matrix(aligned.numpy())[i.numpy(), j.numpy()]
    torch.testing.assert_close(
        iou_upper_bound_of_pairs(aligned, i, j), torch.from_numpy(exact_aligned), atol=1e-9, rtol=0
    )
