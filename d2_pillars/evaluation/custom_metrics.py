"""Average precision of 3D detections on a user's own data: rotated BEV and 3D IoU, greedy
KITTI-style matching, AP over 40 recall positions, overall and by distance from the sensor.

Everything stays in the LiDAR frame of each frame (no ego or global pose). Boxes follow the
package convention ``(x, y, z, l, w, h, yaw)``: geometric centre (m), ``l`` along the heading,
``yaw`` about +z counter-clockwise from +x (rad).

The protocol, per class and per IoU threshold (the class's strict one and its loose one),
for the BEV IoU and the 3D IoU alike:

1. **Matching**, per frame: the class's predictions in descending score order each take the
   unmatched ground-truth box of the class with the highest IoU, if that IoU is
   ``>= threshold`` (greedy, as KITTI's and COCO's evaluations); a ground-truth box is matched
   at most once. Matched predictions are true positives (TP), the others false positives (FP);
   unmatched ground truth boxes are misses. Ground truth with label -1 (a class the model does
   not detect) is no ground truth of any class.
2. **Average precision**: all predictions of the class over all frames ranked by score;
   precision and recall at every distinct score (tied scores enter together, so the order of
   ties never matters); the precision at recall ``r`` is interpolated as the best precision at
   any recall ``>= r`` (0 where ``r`` is never reached); AP is the mean of the interpolated
   precision at the :data:`RECALL_POSITIONS` recalls ``1/40, 2/40, ..., 40/40`` (KITTI's
   current "R40" protocol; recall 0 is not a position). With no ground truth of a class its AP
   is undefined (None).
3. **Distance bins** (:data:`DISTANCE_BINS`, BEV range ``hypot(x, y)`` of the box centre from
   the sensor origin, ``lo <= d < hi``), because own data has no difficulty labels: within a
   bin the ground truth outside the bin is *ignored*, and each prediction is binned by its own
   distance. Matching prefers the bin's ground truth over ignored ground truth (COCO's
   area-range rule); a prediction matched to a ground-truth box of the bin is a TP whatever its
   own distance (so a box on the far side of a bin edge still finds its object), one matched to
   an ignored box is neither TP nor FP, and an unmatched prediction is a FP of the bin its own
   distance falls in only.
"""

import contextlib
import logging
import math
import numpy as np
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
import torch

from d2_pillars.class_names import VEHICLE_CLASSES, default_iou_thresholds
from d2_pillars.layers import pairwise_iou_rotated_3d, pairwise_iou_rotated_bev

__all__ = [
    "RECALL_POSITIONS",
    "DISTANCE_BINS",
    "VEHICLE_CLASSES",
    "default_iou_thresholds",
    "class_iou_thresholds",
    "average_precision",
    "greedy_match",
    "evaluate_detections",
]

logger = logging.getLogger(__name__)

#: Recall positions of the AP (KITTI's R40).
RECALL_POSITIONS = 40
#: ``(name, lo, hi)``: BEV range from the sensor in meters, ``lo <= d < hi``.
DISTANCE_BINS: Tuple[Tuple[str, float, float], ...] = (
    ("0-30", 0.0, 30.0),
    ("30-50", 30.0, 50.0),
    ("50+", 50.0, math.inf),
)
_HOW_TO_SET = "set them in the dataset's dataset.yaml as `class_iou_thresholds: {Car: [0.7, 0.5]}`"


def class_iou_thresholds(
    class_names: Sequence[str],
    configured: Optional[Mapping[str, Sequence[float]]] = None,
    *,
    source: str = "class_iou_thresholds",
) -> Dict[str, Tuple[float, float]]:
    """The checked ``{class: (strict, loose)}`` of every class: ``configured`` where it names
    the class, :func:`default_iou_thresholds` otherwise.

    Args:
        class_names: the dataset's classes.
        configured: ``{class: [strict, loose]}`` (e.g. from ``dataset.yaml``); may be None.
        source: where ``configured`` came from, for the error messages.

    Raises:
        ValueError: a threshold that is not a number in (0, 1]. (Thresholds of a class that is
            not one of ``class_names``, and a loose threshold above the strict one, are only
            warnings: the evaluator is built after training.)
    """
    configured = dict(configured or {})
    unknown = sorted(map(str, set(configured) - set(class_names)))
    if unknown:
        logger.warning(
            f"{source}: thresholds of {unknown} are ignored: they are not classes of the "
            f"dataset {list(class_names)}"
        )
    out = {}
    for name in class_names:
        value = configured.get(name)
        if value is None:
            out[name] = default_iou_thresholds(name)
            continue
        try:
            pair = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            pair = ()
        if len(pair) != 2 or not all(0.0 < v <= 1.0 for v in pair):
            raise ValueError(
                f"{source}: '{name}' has {value!r}; it needs [strict, loose], two IoUs in (0, 1]; "
                f"{_HOW_TO_SET}"
            )
        if pair[1] > pair[0]:
            logger.warning(
                f"{source}: '{name}' has [strict, loose] = {list(pair)}: the loose threshold is "
                "the higher one; the *_loose APs are scored at it as given"
            )
        out[name] = pair
    return out


def average_precision(
    scores: np.ndarray, is_tp: np.ndarray, num_gt: int, num_positions: int = RECALL_POSITIONS
) -> Optional[float]:
    """Interpolated AP over ``num_positions`` recall positions ``1/n, ..., n/n``.

    Args:
        scores: (K,) scores of the counted predictions (TP or FP; ignored ones left out).
        is_tp: (K,) bool, True for a true positive.
        num_gt: ground truth boxes that count (the recall denominator).

    Returns:
        AP in [0, 1]; 0 without predictions; None when ``num_gt`` is 0 (undefined).
    """
    if num_gt <= 0:
        return None
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores, is_tp = scores[order], is_tp[order]
    tp = np.cumsum(is_tp)
    fp = np.cumsum(~is_tp)
    # One operating point per distinct score: the last prediction of each run of equal scores.
    last = np.r_[scores[1:] != scores[:-1], True]
    tp, fp = tp[last], fp[last]
    recall = tp / float(num_gt)
    precision = tp / (tp + fp)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    positions = np.arange(1, num_positions + 1) / float(num_positions)
    # Recall is non-decreasing: the first point with recall >= r holds the envelope at r.
    first = np.searchsorted(recall, positions, side="left")
    reached = first < recall.size
    interpolated = np.where(reached, envelope[np.minimum(first, recall.size - 1)], 0.0)
    return float(interpolated.mean())


def greedy_match(iou: np.ndarray, threshold: float, preferred: Optional[np.ndarray] = None):
    """Greedy one-to-one matching of predictions (rows, in descending score order) to ground
    truth (columns).

    Each prediction in turn takes the unmatched ground-truth box with the highest IoU among
    those with ``IoU >= threshold``; with ``preferred`` (G,) bool, a preferred box is taken
    whenever one qualifies (the highest-IoU preferred one), another only if none does. Equal
    IoUs go to the lower column.

    Args:
        iou: (P, G) IoU.

    Returns:
        (P,) int64: the matched column of each row, -1 for none.
    """
    return _RankedIoU(iou).match(threshold, preferred)


class _RankedIoU:
    """The positive IoUs of each row of a (P, G) matrix, in descending order, as Python lists:
    sorted once, then matched at every threshold and preference (the greedy walk is sequential,
    and on such short rows plain lists beat per-row numpy calls many times over)."""

    def __init__(self, iou: np.ndarray):
        iou = np.asarray(iou, dtype=np.float64)
        self.shape = iou.shape
        self.rows: List[Tuple[int, List[int], List[float]]] = []
        if iou.size == 0:
            return
        order = np.argsort(-iou, axis=1, kind="stable")
        values = np.take_along_axis(iou, order, axis=1)
        lengths = (values > 0).sum(axis=1)
        for i in np.flatnonzero(lengths).tolist():
            k = int(lengths[i])
            self.rows.append((i, order[i, :k].tolist(), values[i, :k].tolist()))

    def match(self, threshold: float, preferred: Optional[np.ndarray] = None) -> np.ndarray:
        num_pred, num_gt = self.shape
        match = np.full(num_pred, -1, dtype=np.int64)
        if num_gt == 0:
            return match
        prefer = [True] * num_gt if preferred is None else np.asarray(preferred, bool).tolist()
        free = [True] * num_gt
        for i, cols, values in self.rows:
            if values[0] < threshold:
                continue
            pick = -1
            for j, v in zip(cols, values):
                if v < threshold:
                    break
                if free[j]:
                    if prefer[j]:
                        pick = j
                        break
                    if pick < 0:
                        pick = j  # the best other box, unless a preferred one follows
            if pick >= 0:
                match[i] = pick
                free[pick] = False
        return match


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch single-threaded inside the block (the previous setting is restored).

    The per-frame IoU matrices are tiny: intra-op threads only add their start and join, which
    on a busy CPU made each call ~30x slower (33 ms instead of 1 ms for 150 x 10 boxes, 2 cores
    shared by several processes)."""
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _bev(boxes: torch.Tensor) -> torch.Tensor:
    return boxes[:, [0, 1, 3, 4, 6]]


def _pairwise_ious(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(BEV IoU, 3D IoU), each (P, G) float64, of (P, 7) predictions and (G, 7) ground truth."""
    if len(pred) == 0 or len(gt) == 0:
        zeros = np.zeros((len(pred), len(gt)))
        return zeros, zeros
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)
    bev = pairwise_iou_rotated_bev(_bev(p), _bev(g))
    iou3d = pairwise_iou_rotated_3d(p, g, bev_iou=bev)
    return bev.double().numpy(), iou3d.double().numpy()


class _Accumulator:
    """Counted predictions (score, TP flag) and ground-truth count of one (class, metric,
    threshold, bin) over all frames."""

    __slots__ = ("scores", "tp", "num_gt")

    def __init__(self):
        self.scores: List[np.ndarray] = []
        self.tp: List[np.ndarray] = []
        self.num_gt = 0

    def add(self, scores: np.ndarray, tp: np.ndarray, num_gt: int) -> None:
        self.scores.append(scores)
        self.tp.append(tp)
        self.num_gt += int(num_gt)

    def ap(self, num_positions: int) -> Optional[float]:
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        tp = np.concatenate(self.tp) if self.tp else np.zeros(0, dtype=bool)
        return average_precision(scores, tp, self.num_gt, num_positions)


def _frame_arrays(frame: Optional[Mapping], with_scores: bool):
    """Checked float64 (K, 7) boxes, int64 (K,) labels and, for predictions, float64 scores."""
    if frame is None:
        frame = {}
    boxes = np.asarray(frame.get("boxes", np.zeros((0, 7))), dtype=np.float64)
    boxes = boxes.reshape(-1, boxes.shape[-1] if boxes.ndim == 2 else 7)
    if boxes.shape[1] < 7:
        raise ValueError(f"boxes must be (K, 7+) (x, y, z, l, w, h, yaw, ...), got {boxes.shape}")
    labels = np.asarray(frame.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    scores = None
    if with_scores:
        scores = np.asarray(frame.get("scores", np.zeros(0)), dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    return np.ascontiguousarray(boxes[:, :7]), labels, scores


_METRICS = ("3D", "BEV")
_KINDS = ("", "_loose")  # the strict threshold, then the loose one
_ALL = ("all", 0.0, math.inf)


def evaluate_detections(
    ground_truth: Mapping[str, Mapping],
    predictions: Mapping[str, Mapping],
    class_names: Sequence[str],
    iou_thresholds: Optional[Mapping[str, Sequence[float]]] = None,
    *,
    num_positions: int = RECALL_POSITIONS,
    distance_bins: Iterable[Tuple[str, float, float]] = DISTANCE_BINS,
) -> dict:
    """AP per class (BEV and 3D IoU, strict and loose thresholds, overall and by distance).

    Args:
        ground_truth: ``{frame: {"boxes": (G, 7+), "labels": (G,)}}`` of the labelled frames
            (labels index ``class_names``; -1: not a class, ignored). Only these frames count.
        predictions: ``{frame: {"boxes": (K, 7+), "scores": (K,), "labels": (K,)}}``; a labelled
            frame without an entry has no prediction; entries of other frames are not read.
        class_names: label -> class name.
        iou_thresholds: ``{class: (strict, loose)}``; missing classes get
            :func:`default_iou_thresholds`.

    Returns:
        dict, JSON-ready: ``{"classes": {name: {"iou", "AP_3D", "AP_BEV", "iou_loose",
        "AP_3D_loose", "AP_BEV_loose", "num_gt", "by_distance": {bin: {"AP_3D", "AP_BEV",
        "AP_3D_loose", "AP_BEV_loose", "num_gt"}}}}, "mAP_3D", "mAP_BEV", "recall_positions"}``.
        APs are fractions in [0, 1], None where the class (or bin) has no ground truth; the mAPs
        average the strict-threshold APs of the classes that have ground truth (None if none).
    """
    class_names = list(class_names)
    thresholds = class_iou_thresholds(class_names, iou_thresholds)
    bins = [_ALL] + list(distance_bins)
    acc = {
        (c, metric, kind, b): _Accumulator()
        for c in range(len(class_names))
        for metric in _METRICS
        for kind in range(len(_KINDS))
        for b in range(len(bins))
    }
    with _one_torch_thread():
        for token, gt_frame in ground_truth.items():
            _add_frame(acc, token, gt_frame, predictions.get(token), class_names, thresholds, bins)
    return _summary(acc, class_names, thresholds, bins, num_positions)


def _add_frame(acc, token, gt_frame, pred_frame, class_names, thresholds, bins) -> None:
    """Match one frame's predictions to its ground truth, class by class, into ``acc``."""
    gt_boxes, gt_labels, _ = _frame_arrays(gt_frame, with_scores=False)
    pred_boxes, pred_labels, pred_scores = _frame_arrays(pred_frame, with_scores=True)
    bad = (pred_labels < 0) | (pred_labels >= len(class_names))
    if bad.any():
        raise ValueError(
            f"Frame {token!r}: predicted labels {sorted(set(pred_labels[bad].tolist()))} are "
            f"outside [0, {len(class_names)}) of the classes {class_names}"
        )
    for c, name in enumerate(class_names):
        g = gt_boxes[gt_labels == c]
        sel = np.flatnonzero(pred_labels == c)
        sel = sel[np.argsort(-pred_scores[sel], kind="stable")]
        p, s = pred_boxes[sel], pred_scores[sel]
        if len(g) == 0 and len(p) == 0:
            continue
        g_dist, p_dist = np.hypot(g[:, 0], g[:, 1]), np.hypot(p[:, 0], p[:, 1])
        ious = dict(zip(("BEV", "3D"), map(_RankedIoU, _pairwise_ious(p, g))))
        for b, (_, lo, hi) in enumerate(bins):
            care = (g_dist >= lo) & (g_dist < hi)
            own = (p_dist >= lo) & (p_dist < hi)
            for metric in _METRICS:
                for kind, threshold in enumerate(thresholds[name]):
                    match = ious[metric].match(threshold, care)
                    matched = match >= 0
                    tp = np.zeros(len(p), dtype=bool)
                    tp[matched] = care[match[matched]]
                    counted = tp | (~matched & own)
                    acc[c, metric, kind, b].add(s[counted], tp[counted], care.sum())


def _summary(acc, class_names, thresholds, bins, num_positions) -> dict:
    """The JSON-ready result of the accumulated matches (see :func:`evaluate_detections`)."""
    classes = {}
    for c, name in enumerate(class_names):
        strict, loose = thresholds[name]
        entry = {"iou": strict}
        by_distance = {}
        for b, (bin_name, _, _) in enumerate(bins):
            values = {}
            for kind, suffix in enumerate(_KINDS):
                for metric in _METRICS:
                    values[f"AP_{metric}{suffix}"] = acc[c, metric, kind, b].ap(num_positions)
            values["num_gt"] = acc[c, _METRICS[0], 0, b].num_gt
            if b == 0:
                entry.update(AP_3D=values["AP_3D"], AP_BEV=values["AP_BEV"], iou_loose=loose)
                entry.update(AP_3D_loose=values["AP_3D_loose"], AP_BEV_loose=values["AP_BEV_loose"])
                entry["num_gt"] = values["num_gt"]
            else:
                by_distance[bin_name] = values
        entry["by_distance"] = by_distance
        classes[name] = entry
    return {
        "classes": classes,
        "mAP_3D": _mean([e["AP_3D"] for e in classes.values()]),
        "mAP_BEV": _mean([e["AP_BEV"] for e in classes.values()]),
        "recall_positions": int(num_positions),
    }


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None
