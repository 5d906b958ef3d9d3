"""Compare two sets of detections the way floating-point arithmetic allows.

Two back-ends (eager torch and onnxruntime, a CPU and a GPU, two CPU kinds) compute the same
network with kernels that round differently: scores agree to ~1e-7, not bit for bit. With many
nearly equal scores (an untrained, full-load model) that changes the *order* of near ties, which
of two overlapping near-tied boxes the NMS keeps, and what falls off the ``max_detections`` cut.
None of that is a property of the code, so a test must not depend on it; a wrong box, a missing
class or a shifted centre must still fail.

:func:`assert_same_detections` therefore matches the two sets one to one (same class, box and
score within tolerance; order ignored) and accepts an unmatched box only when the other side's
own post-processing explains its absence:

- *suppressed by a near tie*: the other side produced the box as a candidate (its pre-NMS pool,
  given as ``candidates_*``) and kept a box of the same class overlapping it above the NMS
  threshold with a score at least as high, within ``tie_atol``;
- *cut by the limit*: the other side is full (``max_detections``) and the box's score is within
  ``tie_atol`` of the other side's lowest kept score.

A box that is in neither pool, or whose absence no kept box explains, fails the comparison.
"""

import numpy as np
from typing import Optional
import torch
from scipy.optimize import linear_sum_assignment

from d2_pillars.layers import pairwise_iou_rotated_bev
from d2_pillars.structures import LiDARBoxes

__all__ = ["assert_same_detections", "assert_same_arrays", "detections_of", "no_suppression"]


def detections_of(instances):
    """``(boxes (K, D) float64, scores (K,) float64, labels (K,) int64)`` of an ``Instances``."""
    boxes = instances.pred_boxes3d.tensor.detach().cpu().double().numpy()
    scores = instances.scores.detach().cpu().double().numpy()
    labels = instances.pred_classes.detach().cpu().numpy().astype(np.int64)
    return boxes, scores, labels


class no_suppression:
    """Context manager: the anchor ``head``'s inference keeps every candidate (no NMS, no
    limit), i.e. returns the pre-NMS pool that :func:`assert_same_detections` checks against."""

    def __init__(self, head):
        self.head = head

    def __enter__(self):
        self.saved = (self.head.nms_thresh, self.head.max_detections_per_sample)
        self.head.nms_thresh, self.head.max_detections_per_sample = 1.0, 0
        return self.head

    def __exit__(self, *exc):
        self.head.nms_thresh, self.head.max_detections_per_sample = self.saved


def _box_distance(a, b):
    """(Ka, Kb) largest absolute difference of box parameters, column 6 (yaw, when there is
    one) compared modulo 2 pi."""
    if not (len(a) and len(b)):
        return np.zeros((len(a), len(b)))
    diff = np.abs(a[:, None, :] - b[None, :, :])
    if a.shape[1] > 6:
        yaw = diff[..., 6] % (2 * np.pi)
        diff[..., 6] = np.minimum(yaw, 2 * np.pi - yaw)
    return diff.max(axis=-1)


def _close(a, b, *, atol, score_atol):
    """(Ka, Kb) bool: same class, every box parameter within ``atol``, score within
    ``score_atol``; and the cost of each pair (for the one-to-one assignment)."""
    (boxes_a, scores_a, labels_a), (boxes_b, scores_b, labels_b) = a, b
    dist = _box_distance(boxes_a, boxes_b)
    dscore = np.abs(scores_a[:, None] - scores_b[None, :])
    ok = (labels_a[:, None] == labels_b[None, :]) & (dist <= atol) & (dscore <= score_atol)
    return ok, dist / atol + dscore / score_atol


def _match(a, b, *, atol, score_atol):
    """Indices ``(ia, ib)`` of the largest one-to-one matching of close pairs."""
    ok, cost = _close(a, b, atol=atol, score_atol=score_atol)
    if not ok.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Close pairs cost < 2 each; a non-close pair costs more than all close pairs together.
    big = 2.0 * (ok.sum() + 1)
    ia, ib = linear_sum_assignment(np.where(ok, cost, big))
    good = ok[ia, ib]
    return ia[good], ib[good]


def _subset(dets, idx):
    return tuple(x[idx] for x in dets)


def _bev_iou(a_boxes, b_boxes):
    bev = lambda x: LiDARBoxes(torch.from_numpy(x[:, :7]).float()).bev()  # noqa: E731
    return pairwise_iou_rotated_bev(bev(a_boxes), bev(b_boxes)).double().numpy()


def _unexplained(missing, other_kept, other_pool, *, atol, score_atol, tie_atol, nms_thresh, cap):
    """Indices of the boxes of ``missing`` (kept by one side, unmatched on the other) whose
    absence from ``other_kept`` the other side's post-processing does not explain."""
    boxes, scores, labels = missing
    bad = []
    in_pool = (
        _close(missing, other_pool, atol=atol, score_atol=score_atol)[0].any(axis=1)
        if other_pool is not None
        else np.zeros(len(scores), dtype=bool)
    )
    if np.isfinite(nms_thresh) and len(other_kept[1]):
        iou = _bev_iou(boxes, other_kept[0])
    else:  # no NMS to explain a difference
        iou = np.zeros((len(scores), len(other_kept[1])))
    full = cap > 0 and len(other_kept[1]) >= cap
    lowest = other_kept[1].min() if len(other_kept[1]) else np.inf
    for k in range(len(scores)):
        if full and scores[k] <= lowest + tie_atol:
            continue  # at the max_detections cut: a near tie of the last kept score
        suppressors = (
            (other_kept[2] == labels[k])
            & (iou[k] > nms_thresh - 1e-6)
            & (other_kept[1] >= scores[k] - tie_atol)
        )
        if in_pool[k] and suppressors.any():
            continue  # the other side had it, and its NMS picked an overlapping near tie
        bad.append(k)
    return bad


def assert_same_detections(a, b, *, candidates_a=None, candidates_b=None, **tolerances):
    """Assert that ``Instances`` ``a`` and ``b`` hold the same detections up to float rounding.

    Args:
        a, b: ``Instances`` with ``pred_boxes3d``, ``scores`` and ``pred_classes``.
        candidates_a, candidates_b: the pre-NMS pools (``Instances``, or callables returning
            them, called only when some box is unmatched) of each side, e.g. run under
            :class:`no_suppression`; an unmatched box of ``b`` is accepted as suppressed by
            ``a``'s NMS only if ``candidates_a`` holds it (and vice versa).
        tolerances: those of :func:`assert_same_arrays`.
    """

    def pool(c):
        if c is None:
            return None
        return lambda: detections_of(c() if callable(c) else c)

    assert_same_arrays(
        detections_of(a),
        detections_of(b),
        candidates_a=pool(candidates_a),
        candidates_b=pool(candidates_b),
        **tolerances,
    )


def assert_same_arrays(
    da,
    db,
    *,
    atol: float = 1e-4,
    score_atol: float = 1e-5,
    tie_atol: float = 1e-5,
    nms_thresh: Optional[float] = None,
    max_detections: int = 0,
    candidates_a=None,
    candidates_b=None,
    max_unmatched_fraction: float = 0.02,
):
    """Assert that two sets of ``(boxes (K, D), scores (K,), labels (K,))`` arrays (e.g. read
    back from results files) hold the same detections up to float rounding.

    Args:
        da, db: the two sets; with ``nms_thresh`` the boxes need ``D >= 7`` (LiDAR boxes, for
            the BEV IoU).
        atol: largest difference of a box parameter (m, rad, m/s) of a matched pair.
        score_atol: largest score difference of a matched pair.
        tie_atol: scores this close are a near tie (NMS and the limit may pick either box).
        nms_thresh: the per-class BEV IoU threshold of the NMS that produced ``da`` and ``db``;
            ``None``: no unmatched box is accepted as a near-tie pick.
        max_detections: the limit the post-processing applied (``<= 0``: none).
        candidates_a, candidates_b: callables returning the pre-NMS pool of each side as such
            arrays (see :func:`assert_same_detections`).
        max_unmatched_fraction: at most this share of either side may be unmatched (explained
            near ties included): a change that moves many boxes is never "ties".
    """
    da = tuple(np.asarray(x) for x in da)
    db = tuple(np.asarray(x) for x in db)
    assert len(da[1]) > 0 and len(db[1]) > 0, f"no detections: {len(da[1])} vs {len(db[1])}"
    ia, ib = _match(da, db, atol=atol, score_atol=score_atol)
    rest_a = np.setdiff1d(np.arange(len(da[1])), ia)
    rest_b = np.setdiff1d(np.arange(len(db[1])), ib)
    limit = max_unmatched_fraction * max(len(da[1]), len(db[1]))
    assert max(len(rest_a), len(rest_b)) <= limit, (
        f"{len(rest_a)} of {len(da[1])} and {len(rest_b)} of {len(db[1])} detections have no "
        f"counterpart (at most {limit:.1f} allowed); first unmatched of a: "
        f"{_describe(da, rest_a[:3])}, of b: {_describe(db, rest_b[:3])}"
    )
    if not (len(rest_a) or len(rest_b)):
        return
    pool_a, pool_b = (None if c is None else c() for c in (candidates_a, candidates_b))
    common = dict(
        atol=atol,
        score_atol=score_atol,
        tie_atol=tie_atol,
        nms_thresh=np.inf if nms_thresh is None else nms_thresh,
        cap=max_detections,
    )
    bad_a = _unexplained(_subset(da, rest_a), db, pool_b, **common)
    bad_b = _unexplained(_subset(db, rest_b), da, pool_a, **common)
    assert not bad_a and not bad_b, (
        f"detections that the other side neither matches nor explains as a near tie: "
        f"a: {_describe(da, rest_a[bad_a])}; b: {_describe(db, rest_b[bad_b])}"
    )


def _describe(dets, idx):
    boxes, scores, labels = dets
    return (
        "["
        + ", ".join(
            f"class {labels[k]} score {scores[k]:.7f} at ({boxes[k, 0]:.3f}, {boxes[k, 1]:.3f})"
            for k in idx
        )
        + "]"
    )
