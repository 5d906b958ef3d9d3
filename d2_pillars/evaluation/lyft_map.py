"""Lyft mAP (IoU 0.5:0.05:0.95): the SDK's numbers, computed with vectorised numpy.

``lyft_dataset_sdk.eval.detection.mAP_evaluation`` computes every 3D IoU with shapely inside
Python loops, once per threshold. :func:`lyft_average_precisions` gives the same numbers with
two implementations:

* ``"sdk"``: the SDK's own ``get_average_precisions``, once per threshold (slow, the reference);
* ``"fast"``: the same definition, vectorised: IoUs are computed once for every
  (prediction, ground truth) pair of the same sample and class, then matched at all thresholds.

The fast path reproduces the SDK's behaviour, not the geometric truth:

* box footprints are built from the first row of the rotation matrix as the SDK does
  (``cos = R[0, 0]``, ``sin = R[0, 1]``), which mirrors them (yaw acts as -yaw) and shrinks them
  for tilted quaternions;
* IoU = BEV intersection area x z-overlap / (w*l*h + w'*l'*h' - intersection), clipped to [0, 1];
* predictions of a class are taken in descending score order (stable for ties); each one is
  compared only with the ground truth box of its sample with the highest IoU (the first one on
  ties), and is a true positive iff that IoU is **strictly greater** than the threshold and that
  box is still unmatched (otherwise it is a false positive, even if another box would be free);
* AP is the SDK's ``get_ap`` (all-point interpolation with sentinels; its envelope loop
  vectorised, :func:`sdk_get_ap`) of the same cumulative recall/precision arrays; classes come
  from the ground truth (:func:`lyft_class_names`).
"""

import logging
import numpy as np
from typing import Dict, List, Sequence

__all__ = [
    "LYFT_IOU_THRESHOLDS",
    "lyft_class_names",
    "lyft_average_precisions",
    "lyft_map",
    "sdk_footprints",
    "convex_polygon_intersection_area",
    "pairwise_sample_ious",
    "sdk_get_ap",
]

logger = logging.getLogger(__name__)

#: The Lyft challenge thresholds, 0.5:0.05:0.95 (the SDK's own values, as ``np.arange`` gives).
LYFT_IOU_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.5, 1.0, 0.05), 2))

# "auto" uses the SDK for at most this many predictions, the vectorised path above it.
_AUTO_SDK_MAX_PREDICTIONS = 1000
# Pairs processed at once by the polygon intersection (memory ~ 0.5 kB per pair).
_PAIR_CHUNK = 200_000


def lyft_class_names(gt: Sequence[dict]) -> List[str]:
    """Sorted class names present in the ground truth (the SDK's ``get_class_names``)."""
    return sorted({box["name"] for box in gt})


# ----------------------------------------------------------------------------------------- geometry
def _box_arrays(boxes: Sequence[dict], with_score: bool, what: str) -> Dict[str, np.ndarray]:
    """Column arrays of a list of SDK box dicts, validated as ``Box3D`` does."""
    n = len(boxes)
    out = {
        "translation": np.array([b["translation"] for b in boxes], dtype=np.float64).reshape(n, 3),
        "size": np.array([b["size"] for b in boxes], dtype=np.float64).reshape(n, 3),
        "rotation": np.array([b["rotation"] for b in boxes], dtype=np.float64).reshape(n, 4),
        "sample_token": np.array([b["sample_token"] for b in boxes], dtype=object),
    }
    if with_score:
        out["score"] = np.array([b.get("score", -1) for b in boxes], dtype=np.float64)
    for key in ("translation", "size", "rotation") + (("score",) if with_score else ()):
        if not np.isfinite(out[key]).all():
            raise ValueError(f"Lyft {what}: '{key}' holds NaN or inf values")
    if n and not (out["size"] > 0).all():
        raise ValueError(f"Lyft {what}: every size (w, l, h) must be > 0")
    return out


def sdk_footprints(translation: np.ndarray, size: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(N, 4, 2) BEV footprints exactly as the SDK's ``Box3D.calculate_ground_bbox_coords``.

    Args:
        translation (ndarray): (N, 3) centres (m).
        size (ndarray): (N, 3) ``[w, l, h]`` (m).
        rotation (ndarray): (N, 4) quaternions ``[w, x, y, z]`` (normalised here, as pyquaternion
            does before building its rotation matrix).
    """
    q = rotation / np.linalg.norm(rotation, axis=1, keepdims=True)
    qw, qx, qy, qz = q.T
    cos = qw * qw + qx * qx - qy * qy - qz * qz  # R[0, 0]
    sin = 2.0 * (qx * qy - qw * qz)  # R[0, 1] (= -sin(yaw) for a pure yaw: the mirror)
    half_l, half_w = size[:, 1] / 2, size[:, 0] / 2
    lx, ly = half_l * cos, half_l * sin
    wx, wy = half_w * sin, -half_w * cos
    offsets = np.stack(
        [
            np.stack([lx + wx, ly + wy], -1),
            np.stack([lx - wx, ly - wy], -1),
            np.stack([-lx - wx, -ly - wy], -1),
            np.stack([-lx + wx, -ly + wy], -1),
        ],
        axis=1,
    )
    return translation[:, None, :2] + offsets


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def convex_polygon_intersection_area(poly_a: np.ndarray, poly_b: np.ndarray) -> np.ndarray:
    """(K,) intersection areas of K pairs of convex quadrilaterals.

    Args:
        poly_a, poly_b (ndarray): (K, 4, 2) vertices in order (either orientation).

    The intersection polygon's vertices are the corners of each quad inside the other plus the
    edge-edge crossings; they are sorted by angle around their mean and summed with the shoelace
    formula (coordinates taken relative to a pair-local origin for precision).
    """
    k = poly_a.shape[0]
    if k == 0:
        return np.zeros(0)
    origin = poly_a.mean(axis=1, keepdims=True)
    a = poly_a - origin
    b = poly_b - origin
    # Counter-clockwise orientation for the half-plane tests.
    a = np.where((_cross(a, np.roll(a, -1, 1)).sum(1) < 0)[:, None, None], a[:, ::-1], a)
    b = np.where((_cross(b, np.roll(b, -1, 1)).sum(1) < 0)[:, None, None], b[:, ::-1], b)
    scale = np.maximum(np.abs(a).max(axis=(1, 2)), np.abs(b).max(axis=(1, 2)))
    eps = 1e-9 * np.maximum(scale, 1e-12) ** 2

    def inside(points, poly):  # (K, P, 2) in CCW (K, 4, 2) -> (K, P)
        edge = np.roll(poly, -1, 1) - poly  # (K, 4, 2)
        rel = points[:, :, None, :] - poly[:, None, :, :]  # (K, P, 4, 2)
        return (_cross(edge[:, None], rel) >= -eps[:, None, None]).all(-1)

    a_in_b = inside(a, b)
    b_in_a = inside(b, a)
    # Edge crossings: a_i + t (a_{i+1} - a_i) = b_j + u (b_{j+1} - b_j).
    da = (np.roll(a, -1, 1) - a)[:, :, None, :]  # (K, 4, 1, 2)
    db = (np.roll(b, -1, 1) - b)[:, None, :, :]  # (K, 1, 4, 2)
    ab = b[:, None, :, :] - a[:, :, None, :]  # (K, 4, 4, 2)
    denom = _cross(da, db)  # (K, 4, 4)
    ok = np.abs(denom) > 1e-12 * np.maximum(scale, 1e-12)[:, None, None] ** 2
    safe = np.where(ok, denom, 1.0)
    t = _cross(ab, db) / safe
    u = _cross(ab, da) / safe
    ok &= (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    crossings = (a[:, :, None, :] + t[..., None] * da).reshape(k, 16, 2)

    points = np.concatenate([a, b, crossings], axis=1)  # (K, 24, 2)
    valid = np.concatenate([a_in_b, b_in_a, ok.reshape(k, 16)], axis=1)
    count = valid.sum(1)
    centre = (points * valid[..., None]).sum(1) / np.maximum(count, 1)[:, None]
    rel = points - centre[:, None]
    angle = np.where(valid, np.arctan2(rel[..., 1], rel[..., 0]), np.inf)
    order = np.argsort(angle, axis=1, kind="stable")
    rel = np.take_along_axis(rel, order[..., None], axis=1)
    valid = np.take_along_axis(valid, order, axis=1)
    # Invalid slots (sorted last) repeat the first vertex: their shoelace terms vanish.
    rel = np.where(valid[..., None], rel, rel[:, :1])
    area = 0.5 * _cross(rel, np.roll(rel, -1, 1)).sum(1)
    return np.where(count >= 3, np.abs(area), 0.0)


def pairwise_sample_ious(pred: Dict[str, np.ndarray], gt: Dict[str, np.ndarray]):
    """IoUs (the SDK's ``Box3D.get_iou``) of every (prediction, ground truth) pair that share a
    sample token and can overlap.

    Args:
        pred, gt: column arrays (``translation``, ``size``, ``rotation``, ``sample_token``).

    Returns:
        (pred_index (M,), gt_index (M,), iou (M,)) for the pairs with a positive IoU; every
        other same-sample pair has IoU exactly 0.
    """
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if len(pred["size"]) == 0 or len(gt["size"]) == 0:
        return empty
    tokens, inverse = np.unique(
        np.concatenate([pred["sample_token"], gt["sample_token"]]).astype(str), return_inverse=True
    )
    p_sample, g_sample = inverse[: len(pred["size"])], inverse[len(pred["size"]) :]
    g_order = np.argsort(g_sample, kind="stable")
    g_count = np.bincount(g_sample, minlength=len(tokens))
    g_start = np.concatenate([[0], np.cumsum(g_count)[:-1]])

    fp_p = sdk_footprints(pred["translation"], pred["size"], pred["rotation"])
    fp_g = sdk_footprints(gt["translation"], gt["size"], gt["rotation"])
    rad_p = np.linalg.norm(fp_p[:, 0] - pred["translation"][:, :2], axis=1)
    rad_g = np.linalg.norm(fp_g[:, 0] - gt["translation"][:, :2], axis=1)
    zmin_p = pred["translation"][:, 2] - pred["size"][:, 2] / 2
    zmax_p = pred["translation"][:, 2] + pred["size"][:, 2] / 2
    zmin_g = gt["translation"][:, 2] - gt["size"][:, 2] / 2
    zmax_g = gt["translation"][:, 2] + gt["size"][:, 2] / 2
    vol_p = pred["size"][:, 0] * pred["size"][:, 1] * pred["size"][:, 2]
    vol_g = gt["size"][:, 0] * gt["size"][:, 1] * gt["size"][:, 2]

    reps = g_count[p_sample]
    cum = np.cumsum(reps)
    out_p, out_g, out_iou = [], [], []
    start = 0
    num_pred = len(reps)
    while start < num_pred:
        # Predictions [start, stop) produce at most _PAIR_CHUNK pairs (at least one prediction).
        limit = (cum[start - 1] if start else 0) + _PAIR_CHUNK
        stop = max(start + 1, int(np.searchsorted(cum, limit, side="right")))
        r = reps[start:stop]
        pi = np.repeat(np.arange(start, stop), r)
        within = np.arange(r.sum()) - np.repeat(np.cumsum(r) - r, r)
        gi = g_order[g_start[p_sample[pi]] + within]
        start = stop
        # Candidates: z ranges overlap and circumscribed circles intersect.
        keep = (np.minimum(zmax_p[pi], zmax_g[gi]) - np.maximum(zmin_p[pi], zmin_g[gi]) > 0) & (
            np.linalg.norm(pred["translation"][pi, :2] - gt["translation"][gi, :2], axis=1)
            < (rad_p[pi] + rad_g[gi]) * (1 + 1e-9)
        )
        pi, gi = pi[keep], gi[keep]
        height = np.maximum(
            0.0, np.minimum(zmax_p[pi], zmax_g[gi]) - np.maximum(zmin_p[pi], zmin_g[gi])
        )
        area = convex_polygon_intersection_area(fp_p[pi], fp_g[gi])
        inter = height * area
        iou = np.clip(inter / (vol_p[pi] + vol_g[gi] - inter), 0, 1)
        pos = iou > 0
        out_p.append(pi[pos])
        out_g.append(gi[pos])
        out_iou.append(iou[pos])
    if not out_p:
        return empty
    return np.concatenate(out_p), np.concatenate(out_g), np.concatenate(out_iou)


# ----------------------------------------------------------------------------------------- AP
def sdk_get_ap(recalls: np.ndarray, precisions: np.ndarray) -> float:
    """The SDK's ``get_ap`` (all-point interpolation with sentinels), with its Python loop over
    predictions (``get_envelope``) replaced by a reversed running maximum: identical values."""
    recalls = np.concatenate(([0.0], recalls, [1.0]))
    precisions = np.concatenate(([0.0], precisions, [0.0]))
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    i = np.where(recalls[1:] != recalls[:-1])[0]
    return np.sum((recalls[i + 1] - recalls[i]) * precisions[i + 1])


def _class_aps_fast(pred, gt, iou_thresholds) -> np.ndarray:
    """(T,) APs of one class from column arrays (see the module docstring)."""
    num_pred, num_gts = len(pred["score"]), len(gt["size"])
    pi, gi, iou = pairwise_sample_ious(pred, gt)
    # Best ground truth per prediction: highest IoU, first in ground-truth order on ties.
    best_iou = np.full(num_pred, -np.inf)
    best_gt = np.full(num_pred, -1, dtype=np.int64)
    if len(iou):
        order = np.lexsort((gi, -iou, pi))
        first = np.ones(len(order), dtype=bool)
        first[1:] = pi[order][1:] != pi[order][:-1]
        sel = order[first]
        best_iou[pi[sel]] = iou[sel]
        best_gt[pi[sel]] = gi[sel]

    ranked = np.argsort(-pred["score"], kind="stable")
    best_iou, best_gt = best_iou[ranked], best_gt[ranked]
    aps = np.zeros(len(iou_thresholds))
    for k, thr in enumerate(iou_thresholds):
        hit = np.flatnonzero(best_iou > thr)
        # The first (highest-scored) hit of each ground truth box takes it; later ones are FPs.
        _, first_hit = np.unique(best_gt[hit], return_index=True)
        tp = np.zeros(num_pred)
        tp[hit[first_hit]] = 1.0
        fp = 1.0 - tp
        fp = np.cumsum(fp, axis=0)
        tp = np.cumsum(tp, axis=0)
        recalls = tp / float(num_gts)
        precisions = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[k] = sdk_get_ap(recalls, precisions)
    return aps


def _group_by_name(boxes: Sequence[dict]) -> Dict[str, List[dict]]:
    groups: Dict[str, List[dict]] = {}
    for box in boxes:
        groups.setdefault(box["name"], []).append(box)
    return groups


def lyft_average_precisions(
    gt: Sequence[dict],
    predictions: Sequence[dict],
    class_names: Sequence[str],
    iou_thresholds: Sequence[float] = LYFT_IOU_THRESHOLDS,
    method: str = "fast",
) -> np.ndarray:
    """Average precision per class and threshold, equal to the SDK's ``get_average_precisions``.

    Args:
        gt (list[dict]): ground truth boxes (``sample_token``, ``translation``, ``size`` [w, l, h],
            ``rotation`` [w, x, y, z], ``name``), global frame.
        predictions (list[dict]): the same keys plus ``score``.
        class_names (list[str]): classes to evaluate; each must occur in ``gt`` (use
            :func:`lyft_class_names`). Predictions of other classes are ignored.
        iou_thresholds (list[float]): thresholds in [0, 1].
        method (str): "fast" (vectorised), "sdk" (the SDK's function) or "auto" (the SDK up to
            1000 predictions).

    Returns:
        ndarray: (len(class_names), len(iou_thresholds)) APs.
    """
    if method == "auto":
        method = "sdk" if len(predictions) <= _AUTO_SDK_MAX_PREDICTIONS else "fast"
    if method not in ("fast", "sdk"):
        raise ValueError(f"Lyft mAP method must be 'fast', 'sdk' or 'auto'; got {method!r}")
    for t in iou_thresholds:
        if not 0 <= t <= 1:
            raise ValueError(f"IoU thresholds must lie in [0, 1]; got {t}")
    gt_by_name = _group_by_name(gt)
    missing = [c for c in class_names if c not in gt_by_name]
    if missing:
        raise ValueError(
            f"Lyft mAP: classes {missing} have no ground truth box; take the class names from "
            "the ground truth (lyft_class_names), as the SDK requires"
        )
    if method == "sdk":
        from lyft_dataset_sdk.eval.detection.mAP_evaluation import get_average_precisions

        gt, predictions = list(gt), list(predictions)
        aps = [
            get_average_precisions(gt, predictions, list(class_names), t) for t in iou_thresholds
        ]
        return np.stack(aps, axis=1) if aps else np.zeros((len(class_names), 0))

    pred_by_name = _group_by_name(predictions)
    aps = np.zeros((len(class_names), len(iou_thresholds)))
    for c, name in enumerate(class_names):
        if name not in pred_by_name:
            continue
        pred = _box_arrays(pred_by_name[name], True, f"predictions of class {name!r}")
        gtc = _box_arrays(gt_by_name[name], False, f"ground truth of class {name!r}")
        aps[c] = _class_aps_fast(pred, gtc, iou_thresholds)
    return aps


def lyft_map(
    gt: Sequence[dict],
    predictions: Sequence[dict],
    iou_thresholds: Sequence[float] = LYFT_IOU_THRESHOLDS,
    method: str = "fast",
) -> dict:
    """The Lyft challenge metric over the classes of the ground truth.

    Returns:
        dict: ``class_names`` (list[str], sorted ground truth names), ``iou_thresholds``,
        ``ap`` ((C, T) ndarray), ``class_ap`` ((C,) mean over thresholds), ``mAP`` (float, mean
        over classes of the mean over thresholds) and ``mAP_per_threshold`` ((T,)).
    """
    class_names = lyft_class_names(gt)
    ap = lyft_average_precisions(gt, predictions, class_names, iou_thresholds, method=method)
    return {
        "class_names": class_names,
        "iou_thresholds": list(iou_thresholds),
        "ap": ap,
        "class_ap": ap.mean(axis=1) if ap.size else np.zeros(len(class_names)),
        "mAP": float(ap.mean()) if ap.size else 0.0,
        "mAP_per_threshold": ap.mean(axis=0) if ap.size else np.zeros(len(iou_thresholds)),
    }
