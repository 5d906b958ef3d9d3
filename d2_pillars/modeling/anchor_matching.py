# -*- coding: utf-8 -*-
"""Anchor assignment: detectron2's :class:`Matcher` on axis-aligned BEV IoU, plus the reference's
low-quality matches with a floor (mmdetection3d ``MaxIoUAssigner``, ``min_pos_iou``,
``gt_max_assign_all``), dense (chunked) or on sparse candidate pairs."""
from typing import Optional, Tuple
import torch
from torch import Tensor

from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou

__all__ = ["match_anchors", "match_pairs"]

# Anchors per chunk x GT boxes stay below this many IoU values at once during assignment.
_MATCH_CHUNK_ELEMENTS = 1 << 22


@torch.no_grad()
def match_anchors(
    matcher: Matcher,
    gt_bev: Tensor,
    anchor_bev: Tensor,
    low_quality_min_iou: Optional[float],
    candidates: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """
    Match anchors to GT boxes by axis-aligned BEV IoU with detectron2's :class:`Matcher`.

    The matcher labels each anchor from its best IoU (e.g. ``< 0.3`` negative, ``[0.3, 0.6)``
    ignored, ``>= 0.6`` positive). Low-quality matches are added here instead of by the matcher,
    with a floor: for each GT whose best IoU with any anchor is ``>= low_quality_min_iou`` (and
    > 0), every anchor reaching that best IoU (ties included) becomes positive and is matched to
    that GT (mmdetection3d ``MaxIoUAssigner`` with ``min_pos_iou``, ``gt_max_assign_all``).
    detectron2's own low-quality step has no floor: a GT that overlaps no anchor would turn every
    zero-IoU anchor positive. Pass a matcher built with ``allow_low_quality_matches=False``.

    Without ``candidates`` the (K, N) IoU matrix is computed with ``pairwise_iou`` in chunks of
    anchors (memory ``O(K * chunk)``). With ``candidates`` (a superset of the overlapping pairs,
    e.g. :meth:`Anchor3DGenerator.candidate_pairs`) only those IoUs are computed
    (``matched_pairwise_iou``); every other pair has IoU 0, so the result is the same.

    Args:
        matcher (Matcher): thresholds and labels (``allow_low_quality_matches`` must be False).
        gt_bev (Tensor): (K, 4) GT boxes ``(x1, y1, x2, y2)`` (``LiDARBoxes.nearest_bev()``).
        anchor_bev (Tensor): (N, 4) anchors, same format.
        low_quality_min_iou (float or None): the floor; None disables low-quality matches.
        candidates (tuple[Tensor, Tensor] or None): (P,) GT and (P,) anchor indices, no pair
            twice.

    Returns:
        matches (Tensor): (N,) int64 index of the matched GT (0 when there is no GT).
        match_labels (Tensor): (N,) int8 in {-1: ignore, 0: negative, 1: positive}.
    """
    if matcher.allow_low_quality_matches:
        raise ValueError(
            "match_anchors applies low-quality matches itself: build the Matcher with "
            "allow_low_quality_matches=False"
        )
    num_gt, num_anchors = gt_bev.shape[0], anchor_bev.shape[0]
    if num_gt == 0:
        return matcher(anchor_bev.new_zeros((0, num_anchors)))
    if candidates is None:
        matches, labels, pairs = _match_dense(matcher, gt_bev, anchor_bev, low_quality_min_iou)
        if low_quality_min_iou is not None:
            _add_low_quality_matches(matches, labels, *pairs, num_gt, low_quality_min_iou)
        return matches, labels
    g, a = candidates
    iou = matched_pairwise_iou(Boxes(gt_bev[g]), Boxes(anchor_bev[a]))
    return match_pairs(matcher, g, a, iou, num_gt, num_anchors, low_quality_min_iou)


@torch.no_grad()
def match_pairs(
    matcher: Matcher,
    gt_idx: Tensor,
    slot_idx: Tensor,
    iou: Tensor,
    num_gt: int,
    num_slots: int,
    low_quality_min_iou: Optional[float],
) -> Tuple[Tensor, Tensor]:
    """
    :func:`match_anchors` on sparse IoUs: ``iou[p]`` is the IoU of GT ``gt_idx[p]`` and anchor
    slot ``slot_idx[p]``; unlisted pairs have IoU 0. Slots may be the anchors of several samples
    (``sample * N + anchor``) as long as each GT index only pairs with its own sample's slots.

    Returns:
        matches (Tensor): (num_slots,) int64 matched GT index; labels (Tensor): (num_slots,) int8.
        A slot whose best IoU several GTs share is matched to the highest GT index of them.

    Written with masks and scatters, without compacting the pairs (no host synchronisation on a
    device): pairs of IoU 0 change no maximum.
    """
    g, a = gt_idx, slot_idx
    best = iou.new_zeros(num_slots).scatter_reduce_(0, a, iou, "amax", include_self=True)
    # The labels depend on each anchor's best IoU only: run the matcher on that row.
    _, labels = matcher(best[None, :])
    is_best = (iou == best[a]) & (iou > 0)
    matches = torch.zeros(num_slots, dtype=torch.int64, device=iou.device)
    matches.scatter_reduce_(0, a, torch.where(is_best, g, 0), "amax", include_self=True)
    if low_quality_min_iou is not None:
        _add_low_quality_matches(matches, labels, g, a, iou, num_gt, low_quality_min_iou)
    return matches, labels


def _add_low_quality_matches(matches, labels, g, a, iou, num_gt, floor):
    """In place: each GT's best anchors (ties included) become positive matches of that GT when
    its best IoU is >= floor; ``(g, a, iou)`` lists every pair with IoU > 0 (pairs of IoU 0 may be
    listed too). An anchor that is the best of several GTs is matched to the highest of them.
    Masks and scatters only (no compaction: no host synchronisation on a device)."""
    if iou.numel() == 0:
        return
    eligible = (iou >= floor) & (iou > 0)
    best = iou.new_zeros(num_gt).scatter_reduce_(
        0, g, torch.where(eligible, iou, 0), "amax", include_self=True
    )
    tie = eligible & (iou == best[g])
    tie_gt = torch.full_like(matches, -1).scatter_reduce_(
        0, a, torch.where(tie, g, -1), "amax", include_self=True
    )
    hit = tie_gt >= 0
    labels.masked_fill_(hit, 1)
    matches.copy_(torch.where(hit, tie_gt, matches))


def _match_dense(matcher, gt_bev, anchor_bev, low_quality_min_iou):
    """Chunked full-matrix matching; returns matches, labels and the (gt, anchor, IoU) pairs
    with IoU > 0 and >= the floor (what low-quality matching needs; None without it)."""
    num_gt, num_anchors = gt_bev.shape[0], anchor_bev.shape[0]
    chunk = max(1024, _MATCH_CHUNK_ELEMENTS // num_gt)
    gt_boxes = Boxes(gt_bev)
    floor = 0.0 if low_quality_min_iou is None else low_quality_min_iou
    matches, labels, pair_g, pair_a, pair_v = [], [], [], [], []
    for start in range(0, num_anchors, chunk):
        iou = pairwise_iou(gt_boxes, Boxes(anchor_bev[start : start + chunk]))  # (K, c)
        m, lab = matcher(iou)
        matches.append(m)
        labels.append(lab)
        if low_quality_min_iou is not None:
            g, a = torch.nonzero((iou >= floor) & (iou > 0), as_tuple=True)
            pair_g.append(g)
            pair_a.append(a + start)
            pair_v.append(iou[g, a])
    if low_quality_min_iou is None:
        pairs = None
    else:
        pairs = (torch.cat(pair_g), torch.cat(pair_a), torch.cat(pair_v))
    return torch.cat(matches), torch.cat(labels), pairs
