# -*- coding: utf-8 -*-
"""Greedy non-maximum suppression of rotated BEV boxes ``(x, y, l, w, yaw)``.

Semantics are those of detectron2 / torchvision: boxes are visited by decreasing score and a box
is suppressed when its IoU with an already kept box is **greater than** the threshold.

When the installed detectron2 has its compiled ``nms_rotated`` it is used; otherwise the torch
implementation here runs, in one of two forms that give the same result:

* host greedy (boxes on a device of :data:`HOST_GREEDY_DEVICES`, the CPU):

  1. the pairs whose IoU exceeds the threshold are found once, with the exact rotated IoU of
     :mod:`.rotated_iou` evaluated only on pairs whose bounding circles overlap, whose areas are
     within the threshold's factor (:func:`nms_candidate_pairs`) and whose cheap IoU upper bound
     exceeds the threshold (a sparse graph);
  2. the greedy pass walks the boxes by score with numpy, touching only boxes that have at least
     one such neighbour; boxes without neighbours are kept without any Python work.

* on the device (CUDA and any other device): the same sparse graph from fixed-size blocks of
  dense pair tests (:func:`overlap_pairs_dense`), then the greedy result as the fixed point of a
  vectorised iteration over the graph's edges (:func:`greedy_fixed_point`), every class at once.
  No numpy, no per-class loop: a handful of host synchronisations (one per block of rows, one per
  four iterations) instead of one per Python step.

For several classes the graph is built within each class only (classes never suppress each other),
and ``multiclass_nms_rotated_bev`` shares one graph between all classes because the boxes are
shared.
"""
import functools
import numpy as np
import torch

from .rotated_iou import bev_to_d2_rotated, compiled_detectron2_extension, iou_of_pairs

__all__ = [
    "nms_rotated_bev",
    "batched_nms_rotated_bev",
    "multiclass_nms_rotated_bev",
    "overlap_pairs_dense",
    "greedy_fixed_point",
    "HOST_GREEDY_DEVICES",
]

#: Device types whose NMS runs the host (numpy) greedy pass; the others run the vectorised
#: on-device form. Both give the same kept boxes.
HOST_GREEDY_DEVICES = ("cpu",)


def _host_greedy(boxes):
    return boxes.device.type in HOST_GREEDY_DEVICES


@functools.lru_cache(maxsize=None)
def detectron2_nms_rotated_available():
    """True when detectron2's compiled ``nms_rotated`` op is registered (not the placeholder)."""
    if compiled_detectron2_extension() is None:  # importing it registers torch.ops.detectron2
        return False
    try:
        torch.ops.detectron2.nms_rotated
    except (AttributeError, RuntimeError):
        return False
    return True


def _check(boxes, scores, iou_threshold):
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(
            "boxes must be a (N, 5) tensor (x, y, l, w, yaw) as returned by LiDARBoxes.bev(); "
            f"got {tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes)}"
        )
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores ({tuple(scores.shape)}) must have one row per box ({boxes.shape[0]} boxes)"
        )
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")


# Pairs whose IoU upper bound is below ``threshold - _BOUND_MARGIN`` skip the exact IoU.
_BOUND_MARGIN = 1e-4


def iou_upper_bound_of_pairs(boxes, i, j):
    """An upper bound of the IoU of the pairs ``(boxes[i], boxes[j])``, ~30 elementwise ops.

    The intersection is at most the overlap of either box with the other's axis-aligned bounding
    rectangle in its own frame (and at most the smaller area); IoU ``= I / (A + B - I)`` grows
    with ``I``, so that bound on ``I`` bounds the IoU. Exact for aligned boxes.

    Args:
        boxes: (N, 5) BEV boxes ``(x, y, l, w, yaw)``.
        i, j: (P,) int64 indices.

    Returns:
        (P,) tensor in [0, 1] (0 where both areas are 0), dtype of ``boxes``.
    """
    x, y, l, w, yaw = boxes.unbind(1)
    hl, hw = 0.5 * l.abs(), 0.5 * w.abs()
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    ci, si, cj, sj = cos[i], sin[i], cos[j], sin[j]
    # |cos| and |sin| of the relative heading
    cr = torch.addcmul(ci * cj, si, sj).abs_()
    sr = torch.addcmul(si * cj, -ci, sj).abs_()
    dx, dy = x[i] - x[j], y[i] - y[j]
    hli, hwi, hlj, hwj = hl[i], hw[i], hl[j], hw[j]

    def overlap(u, v, hl_a, hw_a, hl_b, hw_b):
        # box a (centre (u, v) in b's frame): its bounding rectangle there against b
        ex = torch.addcmul(hl_a * cr, hw_a, sr)
        ey = torch.addcmul(hl_a * sr, hw_a, cr)
        ox = torch.minimum(hl_b, u + ex) + torch.minimum(hl_b, ex - u)
        oy = torch.minimum(hw_b, v + ey) + torch.minimum(hw_b, ey - v)
        return ox.clamp_(min=0.0).mul_(oy.clamp_(min=0.0))

    # centre of i in j's frame, and of j in i's frame
    in_j = overlap(dx * cj + dy * sj, dy * cj - dx * sj, hli, hwi, hlj, hwj)
    in_i = overlap(-(dx * ci + dy * si), dx * si - dy * ci, hlj, hwj, hli, hwi)
    area_i, area_j = 4.0 * hli * hwi, 4.0 * hlj * hwj
    inter = torch.minimum(torch.minimum(in_j, in_i), torch.minimum(area_i, area_j))
    union = (area_i + area_j - inter).clamp_(min=torch.finfo(inter.dtype).tiny)
    return inter.div_(union).clamp_(0.0, 1.0)


# Elements of one (rows x columns) block of the bounding-circle test (2 MB of float64).
_CIRCLE_BLOCK = 1 << 17


def nms_candidate_pairs(boxes, iou_threshold):
    """Pairs ``(i, j)``, ``i < j``, that can have IoU > ``iou_threshold``: their bounding circles
    overlap and their areas are within a factor ``iou_threshold`` of each other.

    ``IoU = I / (A + B - I) <= min(A, B) / max(A, B)`` (``I <= min``, ``A + B - I >= max``), so a
    pair whose smaller area is at most ``iou_threshold`` times the larger cannot exceed the
    threshold. The boxes are sorted by area; each row's partners then form a contiguous range of
    larger areas, and the circle test (as :func:`candidate_pairs`: one float64 matrix product of
    5-vectors, a small tolerance keeping it a superset) runs on those ranges only. On anchor-head
    output (sizes and level scales several times apart) this halves the pairs and the work of
    the all-pairs circle test.

    Args:
        boxes: (N, 5) BEV boxes.
        iou_threshold: float in [0, 1].

    Returns:
        two (P,) int64 tensors with ``i < j`` (in no particular order).
    """
    device = boxes.device
    n = boxes.shape[0]
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n < 2:
        return empty, empty
    b = boxes.double()
    area = (b[:, 2] * b[:, 3]).abs()
    order = torch.argsort(area)
    b, area = b[order], area[order]
    ratio = float(iou_threshold) - _BOUND_MARGIN
    if ratio > 0:
        # partners of row k: columns k + 1 .. end[k] - 1 (areas up to area[k] / ratio)
        end = torch.searchsorted(area, area / ratio * (1 + 1e-9), right=True)
    else:
        end = torch.full((n,), n, dtype=torch.long, device=device)
    r = 0.5 * torch.hypot(b[:, 2], b[:, 3])
    p = b[:, :2]
    sq = (p * p).sum(1)
    one = torch.ones_like(r)
    u = torch.stack([p[:, 0], p[:, 1], r, sq - r * r, one], dim=1)
    v = torch.stack([-2 * p[:, 0], -2 * p[:, 1], -2 * r, one, sq - r * r], dim=0)
    tol = 1e-9 * (1.0 + float(sq.max()))
    end_list = end.tolist()
    pairs_i, pairs_j = [], []
    start = 0
    while start < n - 1:
        col0 = start + 1
        # grow the row block while its column range stays within the block budget
        rows = max(1, _CIRCLE_BLOCK // max(end_list[start] - col0, 1))
        stop = min(start + rows, n - 1)
        col1 = max(end_list[stop - 1], col0)
        if col1 > col0:
            ii, jj = ((u[start:stop] @ v[:, col0:col1]) < tol).nonzero(as_tuple=True)
            ii, jj = ii + start, jj + col0
            # upper triangle and each row's own area window, on the (few) hits only
            keep = (jj > ii) & (jj < end[ii])
            pairs_i.append(ii[keep])
            pairs_j.append(jj[keep])
        start = stop
    if not pairs_i:
        return empty, empty
    i, j = order[torch.cat(pairs_i)], order[torch.cat(pairs_j)]
    return torch.minimum(i, j), torch.maximum(i, j)


def overlap_graph(boxes, iou_threshold, groups=None):
    """Pairs of boxes with IoU > ``iou_threshold`` (and equal ``groups`` when given).

    Args:
        boxes: (N, 5) BEV boxes.
        iou_threshold: float.
        groups: optional (N,) integer tensor; only pairs within a group are considered.

    Returns:
        ``(i, j)``: two (E,) int64 numpy arrays with ``i < j``.
    """
    boxes = boxes.float() if boxes.dtype not in (torch.float32, torch.float64) else boxes
    if groups is None:
        members = [None]
    else:
        groups_cpu = groups.to("cpu", torch.int64)
        order = torch.argsort(groups_cpu, stable=True)
        _, counts = torch.unique_consecutive(groups_cpu[order], return_counts=True)
        members = [m for m in torch.split(order, counts.tolist()) if m.numel() > 1]
    all_i, all_j = [], []
    for m in members:
        sub = boxes if m is None else boxes[m.to(boxes.device)]
        i, j = nms_candidate_pairs(sub, iou_threshold)
        # The exact IoU only where a cheap upper bound can exceed the threshold (the margin
        # covers rounding): on clustered detections that is ~10x fewer pairs than circle overlap.
        maybe = iou_upper_bound_of_pairs(sub, i, j) > iou_threshold - _BOUND_MARGIN
        i, j = i[maybe], j[maybe]
        if i.numel() == 0:
            continue
        iou = iou_of_pairs(sub[i], sub[j])
        hit = iou > iou_threshold
        i, j = i[hit].cpu(), j[hit].cpu()
        if m is not None:
            i, j = m[i], m[j]
        all_i.append(i)
        all_j.append(j)
    if not all_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return torch.cat(all_i).numpy(), torch.cat(all_j).numpy()


def _adjacency(num_boxes, pairs):
    """CSR adjacency of the overlap graph: ``(ptr list (N + 1,), neighbours, degree (N,))``."""
    i, j = pairs
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    perm = np.argsort(src, kind="stable")
    neighbours = dst[perm]
    ptr = np.zeros(num_boxes + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=num_boxes), out=ptr[1:])
    return ptr.tolist(), neighbours, ptr[1:] - ptr[:-1]


def _greedy_on(order, num_boxes, adjacency):
    """Greedy suppression of ``order`` on an :func:`_adjacency` graph (see :func:`_greedy`).

    Neighbours outside ``order`` may be marked removed: they are never read, so a graph over a
    superset of the candidates gives the same result as the graph restricted to them.
    """
    ptr_list, neighbours, degree = adjacency
    # Only boxes with neighbours need the sequential pass; the others are always kept.
    busy = order[degree[order] > 0]
    removed = np.zeros(num_boxes, dtype=bool)
    for b in busy.tolist():
        if removed[b]:
            continue
        # ``b`` is kept: every later neighbour is suppressed (earlier ones are already decided,
        # and none of them is kept, or ``b`` would have been removed).
        removed[neighbours[ptr_list[b] : ptr_list[b + 1]]] = True
    return order[~removed[order]]


def _greedy(order, num_boxes, pairs):
    """Greedy suppression on a sparse overlap graph.

    Args:
        order: (K,) int64 numpy array of candidate box indices by decreasing score.
        num_boxes: N, the size of the index space.
        pairs: ``(i, j)`` numpy arrays of overlapping pairs (either direction).

    Returns:
        (K',) int64 numpy array: kept indices, in the order of ``order``.
    """
    if pairs[0].size == 0 or order.size == 0:
        return order
    return _greedy_on(order, num_boxes, _adjacency(num_boxes, pairs))


def nms_rotated_bev(boxes, scores, iou_threshold):
    """Greedy NMS of rotated BEV boxes.

    Args:
        boxes: (N, 5) ``(x, y, l, w, yaw)``.
        scores: (N,).
        iou_threshold: a box is discarded when its IoU with a kept box is > this.

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score (ties: lower index first).
    """
    _check(boxes, scores, iou_threshold)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if detectron2_nms_rotated_available():
        from detectron2.layers import nms_rotated

        return nms_rotated(bev_to_d2_rotated(boxes.float()), scores.float(), iou_threshold)
    if not _host_greedy(boxes):
        return _nms_on_device(boxes.detach(), scores.detach(), iou_threshold)
    order = torch.argsort(scores.detach().cpu(), descending=True, stable=True).numpy()
    keep = _greedy(order, boxes.shape[0], overlap_graph(boxes.detach(), iou_threshold))
    return torch.from_numpy(keep).to(boxes.device)


def batched_nms_rotated_bev(boxes, scores, idxs, iou_threshold):
    """NMS of rotated BEV boxes done independently per category (like torchvision's).

    Args:
        boxes: (N, 5); scores: (N,); idxs: (N,) integer category of each box.
        iou_threshold: float.

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    _check(boxes, scores, iou_threshold)
    if idxs.shape[0] != boxes.shape[0]:
        raise ValueError(f"idxs ({tuple(idxs.shape)}) must have one entry per box")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if detectron2_nms_rotated_available():
        from detectron2.layers import batched_nms_rotated

        return batched_nms_rotated(
            bev_to_d2_rotated(boxes.float()), scores.float(), idxs, iou_threshold
        )
    if not _host_greedy(boxes):
        return _nms_on_device(boxes.detach(), scores.detach(), iou_threshold, groups=idxs)
    # No pair crosses categories, so one greedy pass in global score order equals per-category NMS.
    order = torch.argsort(scores.detach().cpu(), descending=True, stable=True).numpy()
    graph = overlap_graph(boxes.detach(), iou_threshold, groups=idxs)
    keep = _greedy(order, boxes.shape[0], graph)
    return torch.from_numpy(keep).to(boxes.device)


def multiclass_nms_rotated_bev(boxes, scores, score_thresh, iou_threshold, max_num):
    """Per-class rotated BEV NMS of boxes shared by all classes (the anchor head's output).

    For each class ``c``: the boxes with ``scores[:, c] > score_thresh`` go through greedy NMS by
    that class's score; the survivors of all classes are then ranked by score and the first
    ``max_num`` returned. One box can be kept for several classes.

    Args:
        boxes: (N, 5) ``(x, y, l, w, yaw)``.
        scores: (N, C) per-class scores (e.g. sigmoid outputs).
        score_thresh: candidates need a score strictly above this.
        iou_threshold: suppression when IoU > this (within a class).
        max_num: maximum number of detections returned (``<= 0``: no limit).

    Returns:
        ``(box_index (K,) int64, labels (K,) int64, scores (K,))`` sorted by decreasing score
        (ties: lower class, then lower box index).
    """
    _check(boxes, scores, iou_threshold)
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, C) for multiclass NMS, got {tuple(scores.shape)}")
    device = boxes.device
    cand = scores > score_thresh  # (N, C)
    box_idx, labels = cand.nonzero(as_tuple=True)  # ordered by box, then class
    if box_idx.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, scores.new_zeros(0)
    if detectron2_nms_rotated_available():
        from detectron2.layers import batched_nms_rotated

        keep = batched_nms_rotated(
            bev_to_d2_rotated(boxes[box_idx].float()),
            scores[box_idx, labels].float(),
            labels,
            iou_threshold,
        )
        keep_box, keep_label = box_idx[keep], labels[keep]
    elif _host_greedy(boxes):
        keep_box, keep_label = _multiclass_torch(boxes, scores, cand, iou_threshold)
    else:
        keep_box, keep_label = _multiclass_on_device(
            boxes.detach(), scores.detach(), cand, iou_threshold
        )
    keep_score = scores[keep_box, keep_label]
    # Rank by score; ties by class then box index (a stable sort of a (class, box) ordered list).
    tie_order = torch.argsort(keep_label * boxes.shape[0] + keep_box)
    keep_box, keep_label, keep_score = (
        keep_box[tie_order],
        keep_label[tie_order],
        keep_score[tie_order],
    )
    rank = torch.argsort(keep_score, descending=True, stable=True)
    if max_num is not None and max_num > 0:
        rank = rank[:max_num]
    return keep_box[rank], keep_label[rank], keep_score[rank]


def _multiclass_torch(boxes, scores, cand, iou_threshold):
    n = boxes.shape[0]
    any_cand = cand.any(dim=1)
    members = any_cand.nonzero(as_tuple=True)[0]
    # One overlap graph over every box that is a candidate for some class, shared by all classes.
    i, j = overlap_graph(boxes.detach()[members], iou_threshold)
    members_np = members.cpu().numpy()
    pairs = (members_np[i], members_np[j])
    # The adjacency is built once: a class's pass only visits its own candidates, and a box
    # that is no candidate of the class is never kept there, so it never suppresses either.
    adjacency = _adjacency(n, pairs) if pairs[0].size else None
    scores_cpu = scores.detach().cpu()
    cand_cpu = cand.cpu()
    keep_boxes, keep_labels = [], []
    for c in range(scores.shape[1]):
        idx = cand_cpu[:, c].nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        order = idx[torch.argsort(scores_cpu[idx, c], descending=True, stable=True)].numpy()
        kept = order if adjacency is None else _greedy_on(order, n, adjacency)
        keep_boxes.append(torch.from_numpy(kept))
        keep_labels.append(torch.full((kept.size,), c, dtype=torch.long))
    if not keep_boxes:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty
    return (
        torch.cat(keep_boxes).to(boxes.device),
        torch.cat(keep_labels).to(boxes.device),
    )


# ------------------------------------------------------------------------------------------ #
# On-device form: dense pair tests in fixed blocks, greedy NMS as a fixed point
# ------------------------------------------------------------------------------------------ #
# Elements of one (rows x N) block of the dense pair tests (~10 float32 temporaries each).
_DENSE_BLOCK = 1 << 22


def overlap_pairs_dense(boxes, iou_threshold, groups=None):
    """Pairs ``(i, j)``, ``i < j``, of boxes with IoU > ``iou_threshold`` (and equal ``groups``),
    found with device-side tensor operations only.

    Rows are tested against all boxes in blocks of a fixed size (bounding circles overlap, areas
    within the threshold's factor, same group), one ``nonzero`` per block; the cheap upper bound
    (:func:`iou_upper_bound_of_pairs`) then the exact IoU run on the hits. The same pairs as
    :func:`overlap_graph` (both test supersets of the IoU > threshold pairs, and the exact IoU is
    the same function on the same values).

    Args:
        boxes: (N, 5) BEV boxes ``(x, y, l, w, yaw)`` (m, rad).
        iou_threshold: float in [0, 1].
        groups: optional (N,) integer tensor on the boxes' device.

    Returns:
        ``(i, j)``: two (E,) int64 tensors on the boxes' device.
    """
    boxes = boxes.float() if boxes.dtype not in (torch.float32, torch.float64) else boxes
    device, n = boxes.device, boxes.shape[0]
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n < 2:
        return empty, empty
    x, y = boxes[:, 0], boxes[:, 1]
    r = 0.5 * torch.hypot(boxes[:, 2], boxes[:, 3])
    area = (boxes[:, 2] * boxes[:, 3]).abs()
    ratio = float(iou_threshold) - _BOUND_MARGIN
    cols = torch.arange(n, device=device)
    rows = max(1, _DENSE_BLOCK // n)
    pairs_i, pairs_j = [], []
    for start in range(0, n - 1, rows):
        stop = min(start + rows, n)
        sl = slice(start, stop)
        dx, dy = x[sl, None] - x[None, :], y[sl, None] - y[None, :]
        reach = r[sl, None] + r[None, :]
        # bounding circles overlap (relative tolerance: a superset of the overlapping pairs)
        hit = (dx * dx + dy * dy) <= reach * reach * (1.0 + 1e-6) + 1e-12
        hit &= cols[None, :] > cols[sl, None]
        if ratio > 0:
            # IoU <= min(A, B) / max(A, B)
            lo = torch.minimum(area[sl, None], area[None, :])
            hi = torch.maximum(area[sl, None], area[None, :])
            hit &= lo >= hi * (ratio * (1.0 - 1e-6))
        if groups is not None:
            hit &= groups[sl, None] == groups[None, :]
        ii, jj = hit.nonzero(as_tuple=True)
        pairs_i.append(ii + start)
        pairs_j.append(jj)
    i, j = torch.cat(pairs_i), torch.cat(pairs_j)
    maybe = iou_upper_bound_of_pairs(boxes, i, j) > iou_threshold - _BOUND_MARGIN
    i, j = i[maybe], j[maybe]
    if i.numel() == 0:
        return i, j
    hit = iou_of_pairs(boxes[i], boxes[j]) > iou_threshold
    return i[hit], j[hit]


def greedy_fixed_point(candidates, scores, i, j, check_every=4):
    """Greedy NMS of every column (class) at once, on a graph of overlapping pairs.

    In column ``c`` the candidates are visited by decreasing ``scores[:, c]`` (ties: lower index
    first) and each kept box suppresses its later neighbours. That result is the unique fixed
    point of ``keep[b] = candidate[b] and no kept neighbour of b comes before b``: every box's
    decision depends on earlier boxes only. Iterating the map from "all candidates kept" fixes,
    after ``t`` steps, every box whose longest chain of earlier neighbours is shorter than ``t``,
    so it converges in at most (longest chain + 1) steps; a step is a few vectorised operations on
    the (E, C) edge-class pairs. Convergence is checked every ``check_every`` steps (one host
    synchronisation each).

    Args:
        candidates: (N, C) bool, box b is a candidate of class c.
        scores: (N, C) float.
        i, j: (E,) int64 overlapping pairs with ``i < j``.

    Returns:
        (N, C) bool: kept (box, class) pairs.
    """
    keep = candidates.clone()
    if i.numel() == 0:
        return keep
    si, sj = scores[i], scores[j]  # (E, C)
    live = candidates[i] & candidates[j]
    i_first = live & (si >= sj)  # i < j: ties go to i
    j_first = live & (sj > si)
    while True:
        for _ in range(check_every):
            previous = keep
            # suppression count of each (box, class) by kept earlier neighbours
            hits = torch.zeros(keep.shape, dtype=torch.int32, device=keep.device)
            hits.index_add_(0, j, (i_first & keep[i]).to(torch.int32))
            hits.index_add_(0, i, (j_first & keep[j]).to(torch.int32))
            keep = candidates & (hits == 0)
        if torch.equal(keep, previous):
            return keep


def _nms_on_device(boxes, scores, iou_threshold, groups=None):
    """Single-class (or per-group) NMS on the boxes' device; kept indices by decreasing score."""
    i, j = overlap_pairs_dense(boxes, iou_threshold, groups=groups)
    candidates = torch.ones(boxes.shape[0], 1, dtype=torch.bool, device=boxes.device)
    keep = greedy_fixed_point(candidates, scores.float()[:, None], i, j)[:, 0]
    order = torch.argsort(scores, descending=True, stable=True)
    return order[keep[order]]


def _multiclass_on_device(boxes, scores, cand, iou_threshold):
    """Kept (box, class) pairs of the per-class NMS, shared graph, all classes at once."""
    members = cand.any(dim=1).nonzero(as_tuple=True)[0]
    i, j = overlap_pairs_dense(boxes[members], iou_threshold)
    keep = greedy_fixed_point(cand[members], scores[members], i, j)
    box, label = keep.nonzero(as_tuple=True)
    return members[box], label
