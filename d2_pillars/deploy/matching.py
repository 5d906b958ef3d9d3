"""One-to-one matching of two detectors' boxes on the same frames, for the int8 export's check.

:func:`match_detections` pairs each reference box (the float model's) with at most one candidate
box (the quantized graph's) of the same class, minimising the sum of BEV centre distances
(:func:`scipy.optimize.linear_sum_assignment`), and :class:`DetectionMatchReport` accumulates
over frames the share of reference boxes matched and the worst centre, size, yaw and score
differences of the matched pairs. :meth:`DetectionMatchReport.failures` compares them with a
:class:`MatchTolerance`.

Only reference boxes scoring at least ``min_score`` count (low-score boxes come and go with any
change of the network's arithmetic, float included); they may match a candidate box of any score,
so that a box whose score moves across ``min_score`` is not counted as lost.
"""

import math
import numpy as np
from dataclasses import asdict, dataclass, field
from typing import List

__all__ = ["MatchTolerance", "DetectionMatchReport", "match_detections"]


@dataclass
class MatchTolerance:
    """What :meth:`DetectionMatchReport.failures` accepts (defaults: the int8 export's)."""

    #: reference boxes scoring below this are not checked
    min_score: float = 0.3
    #: largest BEV centre distance (m) of a matched pair
    max_center_distance: float = 1.0
    #: smallest share of the checked reference boxes that must be matched
    min_matched: float = 0.9
    #: largest 95th percentile of the |score differences| of the matched pairs (a percentile,
    #: not the maximum: one near-tied box among hundreds, whose int8 score crosses a
    #: neighbour's, must not refuse a graph that scores the same mAP)
    max_score_diff: float = 0.15


@dataclass
class DetectionMatchReport:
    """Figures of :func:`match_detections` over one or more frames."""

    frames: int = 0
    #: reference boxes checked (score >= min_score) and how many of them were matched
    reference_boxes: int = 0
    matched: int = 0
    #: boxes of the candidate that scored >= min_score (for information)
    candidate_boxes: int = 0
    #: over the matched pairs: the largest BEV centre distance (m), relative size difference
    #: (max over l, w, h of |a - b| / a), |yaw difference| (rad, wrapped to [0, pi]) and
    #: |score difference|; the mean score difference
    worst_center_m: float = 0.0
    worst_size_rel: float = 0.0
    worst_yaw_rad: float = 0.0
    worst_score: float = 0.0
    score_diffs: List[float] = field(default_factory=list, repr=False)

    @property
    def matched_share(self) -> float:
        """Share of the checked reference boxes that were matched (1.0 when there were none)."""
        return self.matched / self.reference_boxes if self.reference_boxes else 1.0

    @property
    def mean_score(self) -> float:
        return float(np.mean(self.score_diffs)) if self.score_diffs else 0.0

    @property
    def p95_score(self) -> float:
        """95th percentile of the matched pairs' |score differences| (0 without pairs)."""
        return float(np.percentile(self.score_diffs, 95)) if self.score_diffs else 0.0

    def failures(self, tolerance: MatchTolerance) -> List[str]:
        """What exceeds ``tolerance``, one sentence each (empty: the check passes)."""
        out = []
        if self.matched_share < tolerance.min_matched:
            out.append(
                f"{self.matched} of {self.reference_boxes} boxes matched "
                f"({self.matched_share:.1%} < {tolerance.min_matched:.0%})"
            )
        if self.p95_score > tolerance.max_score_diff:
            out.append(
                f"95th percentile of the score differences {self.p95_score:.3f} > "
                f"{tolerance.max_score_diff:g} (largest {self.worst_score:.3f})"
            )
        return out

    def as_dict(self) -> dict:
        d = asdict(self)
        del d["score_diffs"]
        d.update(
            matched_share=self.matched_share, mean_score=self.mean_score, p95_score=self.p95_score
        )
        return d

    def summary(self) -> str:
        return (
            f"{self.matched}/{self.reference_boxes} boxes matched ({self.matched_share:.1%}) on "
            f"{self.frames} frames; worst centre {self.worst_center_m:.3f} m, size "
            f"{self.worst_size_rel:.1%}, yaw {self.worst_yaw_rad:.3f} rad, score "
            f"{self.worst_score:.3f} (95th percentile {self.p95_score:.3f}, mean "
            f"{self.mean_score:.3f})"
        )


def _fields(instances):
    boxes = instances.pred_boxes3d.tensor.detach().cpu().double().numpy()
    scores = instances.scores.detach().cpu().double().numpy()
    classes = instances.pred_classes.detach().cpu().numpy()
    return boxes, scores, classes


def match_detections(
    reference,
    candidate,
    *,
    min_score: float = 0.3,
    max_center_distance: float = 1.0,
    report: DetectionMatchReport = None,
) -> DetectionMatchReport:
    """
    Match the boxes of two detectors on one frame and add the figures to ``report``.

    Args:
        reference, candidate: ``Instances`` with ``pred_boxes3d`` (LiDARBoxes ``(N, 7+)``,
            ``(x, y, z, l, w, h, yaw, ...)``, m and rad), ``scores`` ``(N,)`` and
            ``pred_classes`` ``(N,)``, as the meta-architecture returns them.
        min_score: reference boxes scoring below it are not checked.
        max_center_distance: pairs whose BEV centres are farther apart (m) are not matched.
        report: accumulates over frames (default: a new one).

    Returns:
        DetectionMatchReport: ``report`` with this frame added.
    """
    from scipy.optimize import linear_sum_assignment

    report = DetectionMatchReport() if report is None else report
    report.frames += 1
    ref_boxes, ref_scores, ref_classes = _fields(reference)
    cand_boxes, cand_scores, cand_classes = _fields(candidate)
    checked = ref_scores >= min_score
    report.reference_boxes += int(checked.sum())
    report.candidate_boxes += int((cand_scores >= min_score).sum())
    for cls in np.unique(ref_classes[checked]):
        r = np.nonzero(checked & (ref_classes == cls))[0]
        c = np.nonzero(cand_classes == cls)[0]
        if len(c) == 0:
            continue
        dist = np.linalg.norm(ref_boxes[r, None, :2] - cand_boxes[None, c, :2], axis=-1)
        # pairs beyond the distance may not be matched: a cost no valid assignment prefers
        cost = np.where(dist <= max_center_distance, dist, 1e6)
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows, cols):
            if dist[i, j] > max_center_distance:
                continue
            a, b = ref_boxes[r[i]], cand_boxes[c[j]]
            report.matched += 1
            report.worst_center_m = max(report.worst_center_m, float(dist[i, j]))
            size = np.abs(a[3:6] - b[3:6]) / np.maximum(np.abs(a[3:6]), 1e-6)
            report.worst_size_rel = max(report.worst_size_rel, float(size.max()))
            yaw = abs((a[6] - b[6] + math.pi) % (2 * math.pi) - math.pi)
            report.worst_yaw_rad = max(report.worst_yaw_rad, float(yaw))
            score = abs(float(ref_scores[r[i]] - cand_scores[c[j]]))
            report.worst_score = max(report.worst_score, score)
            report.score_diffs.append(score)
    return report
