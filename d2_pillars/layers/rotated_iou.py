# -*- coding: utf-8 -*-
"""Exact IoU of rotated bird's-eye-view rectangles.

A BEV box is ``(x, y, l, w, yaw)`` as returned by ``LiDARBoxes.bev()``: centre in meters, ``l``
along the heading, ``w`` across it, ``yaw`` in radians counter-clockwise from +x.

When the installed detectron2 has its compiled ``box_iou_rotated`` the public function uses it;
otherwise (as with the pure-Python detectron2 of this project) it runs the vectorised torch
implementation below, which works on CPU and CUDA:

1. a bounding-circle test (one small matrix product) selects the pairs that can overlap; all
   other IoUs are exactly 0;
2. for those pairs, box ``a`` is expressed in the frame of box ``b`` (where ``b`` is the
   axis-aligned rectangle ``[-l/2, l/2] x [-w/2, w/2]``) and clipped by ``b``'s four sides, a
   Sutherland-Hodgman clipping vectorised over all pairs with fixed-size tensors (see
   :func:`intersection_area_of_pairs`);
3. the intersection area is the shoelace sum over the clipped boundary.

:func:`pairwise_iou_rotated_3d` extends it to upright 3D boxes ``(x, y, z, l, w, h, yaw)``
(geometric centre): the BEV intersection area (recovered from the BEV IoU and the two areas,
so both back-ends serve it) times the overlap of the z intervals, over the union volume.
"""
import functools
import torch

__all__ = ["pairwise_iou_rotated_bev", "pairwise_iou_rotated_3d"]

# Pairs processed at once by the exact intersection (small blocks stay in cache).
_PAIR_CHUNK = 1 << 14
# Elements of one (rows x M) block of the bounding-circle test: 2 MB of float64, which stays in
# cache and in the allocator's free lists (1 << 22: +20% time on 3,000 boxes).
_CIRCLE_BLOCK = 1 << 18


def compiled_detectron2_extension():
    """detectron2's compiled ``_C`` extension module, or None when detectron2 has none (not
    built, or only the pure-Python placeholder ``_C.py`` of this project's install)."""
    try:
        from detectron2 import _C
    except ImportError:
        return None
    if str(getattr(_C, "__file__", "")).endswith(".py"):
        return None
    return _C


@functools.lru_cache(maxsize=None)
def detectron2_box_iou_rotated_available():
    """Whether detectron2's compiled ``box_iou_rotated`` exists (not the placeholder ``_C.py``)."""
    extension = compiled_detectron2_extension()
    if extension is None:
        return False
    try:
        return hasattr(extension, "box_iou_rotated")
    except Exception:  # a placeholder module may raise anything from __getattr__
        return False


def bev_to_d2_rotated(boxes):
    """(N, 5) ``(x, y, l, w, yaw_rad)`` -> detectron2 rotated boxes ``(cx, cy, w, h, angle_deg)``.

    detectron2 rotates its corners by ``+angle`` in the same (x, y) numbers, so ``w = l``,
    ``h = w`` and ``angle = degrees(yaw)`` describe the same rectangle.
    """
    out = boxes.clone()
    out[:, 4] = torch.rad2deg(boxes[:, 4])
    return out


def _check_boxes(boxes, name):
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(
            f"{name} must be a (N, 5) tensor of BEV boxes (x, y, l, w, yaw) as returned by "
            f"LiDARBoxes.bev(); got {shape}"
        )


def _compute_dtype(*tensors):
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return dtype


def pairwise_iou_rotated_bev(boxes1, boxes2):
    """IoU of every pair of rotated BEV rectangles.

    Args:
        boxes1: (N, 5) ``(x, y, l, w, yaw)``, meters and radians.
        boxes2: (M, 5) same layout, same device.

    Returns:
        (N, M) tensor of IoU in [0, 1], dtype of ``boxes1`` (float32 for non-float inputs).
        Pairs where both boxes have zero area get IoU 0.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    dtype = _compute_dtype(boxes1)
    n, m = boxes1.shape[0], boxes2.shape[0]
    if n == 0 or m == 0:
        return boxes1.new_zeros((n, m), dtype=dtype)
    if detectron2_box_iou_rotated_available():
        from detectron2.layers.rotated_boxes import pairwise_iou_rotated

        b1 = bev_to_d2_rotated(boxes1.float())
        b2 = bev_to_d2_rotated(boxes2.to(b1))
        return pairwise_iou_rotated(b1, b2).to(dtype)
    return _pairwise_iou_torch(boxes1.to(dtype), boxes2.to(device=boxes1.device, dtype=dtype))


def _check_boxes_3d(boxes, name):
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] < 7:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(
            f"{name} must be a (N, 7+) tensor of boxes (x, y, z, l, w, h, yaw, ...) as "
            f"LiDARBoxes.tensor; got {shape}"
        )


def pairwise_iou_rotated_3d(boxes1, boxes2, bev_iou=None):
    """3D IoU of every pair of upright boxes rotated about z.

    ``IoU = A_bev * dz / (V1 + V2 - A_bev * dz)`` with ``A_bev`` the overlap area of the rotated
    BEV rectangles and ``dz`` the overlap length of the z intervals ``[z - h/2, z + h/2]``.
    ``A_bev`` is recovered exactly from the BEV IoU ``u`` and the areas: ``A = u (a1 + a2) /
    (1 + u)``.

    Args:
        boxes1: (N, 7+) ``(x, y, z, l, w, h, yaw, ...)``: geometric centre (m), sizes (m), yaw
            (rad, CCW from +x); columns after the 7th (velocity) are ignored.
        boxes2: (M, 7+) same layout, same device.
        bev_iou: optional (N, M) :func:`pairwise_iou_rotated_bev` of these boxes, when the
            caller has it already (it is computed otherwise).

    Returns:
        (N, M) tensor of 3D IoU in [0, 1], dtype of ``boxes1`` (float32 for non-float inputs).
    """
    _check_boxes_3d(boxes1, "boxes1")
    _check_boxes_3d(boxes2, "boxes2")
    dtype = _compute_dtype(boxes1)
    b1 = boxes1[:, :7].to(dtype)
    b2 = boxes2[:, :7].to(device=boxes1.device, dtype=dtype)
    n, m = b1.shape[0], b2.shape[0]
    if bev_iou is None:
        bev_iou = pairwise_iou_rotated_bev(b1[:, [0, 1, 3, 4, 6]], b2[:, [0, 1, 3, 4, 6]])
    elif tuple(bev_iou.shape) != (n, m):
        raise ValueError(f"bev_iou must be ({n}, {m}) for these boxes, got {tuple(bev_iou.shape)}")
    if n == 0 or m == 0:
        return b1.new_zeros((n, m))
    u = bev_iou.to(b1)
    area1 = (b1[:, 3] * b1[:, 4]).abs()
    area2 = (b2[:, 3] * b2[:, 4]).abs()
    inter_bev = u * (area1[:, None] + area2[None, :]) / (1.0 + u)
    half1, half2 = 0.5 * b1[:, 5].abs(), 0.5 * b2[:, 5].abs()
    top = torch.minimum((b1[:, 2] + half1)[:, None], (b2[:, 2] + half2)[None, :])
    bottom = torch.maximum((b1[:, 2] - half1)[:, None], (b2[:, 2] - half2)[None, :])
    inter = inter_bev * (top - bottom).clamp(min=0.0)
    vol1, vol2 = area1 * 2.0 * half1, area2 * 2.0 * half2
    union = vol1[:, None] + vol2[None, :] - inter
    iou = inter / union.clamp(min=torch.finfo(union.dtype).tiny)
    return iou.clamp_(0.0, 1.0)


def _pairwise_iou_torch(boxes1, boxes2):
    """Dense (N, M) IoU with the torch implementation (no detectron2 dispatch)."""
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = boxes1.new_zeros((n, m))
    i, j = candidate_pairs(boxes1, boxes2)
    if i.numel():
        out[i, j] = iou_of_pairs(boxes1[i], boxes2[j])
    return out


def _radius(boxes):
    return 0.5 * torch.hypot(boxes[:, 2], boxes[:, 3])


def candidate_pairs(boxes1, boxes2, *, upper_triangle=False):
    """Index pairs ``(i, j)`` whose bounding circles overlap (only they can have IoU > 0).

    ``|c_i - c_j|^2 < (r_i + r_j)^2`` is one float64 matrix product of 5-vectors per row block
    (``u_i . v_j < 0`` with ``u = (x, y, r, x^2 + y^2 - r^2, 1)`` and
    ``v = (-2x, -2y, -2r, 1, x^2 + y^2 - r^2)``), a small tolerance keeping it a superset.

    Args:
        boxes1: (N, 5), boxes2: (M, 5) BEV boxes.
        upper_triangle: keep only ``i < j`` (for ``boxes1 is boxes2``).

    Returns:
        two (P,) long tensors, ordered by ``i`` then ``j``.
    """
    device = boxes1.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    n, m = boxes1.shape[0], boxes2.shape[0]
    if n == 0 or m == 0:
        return empty, empty
    r1, r2 = _radius(boxes1).double(), _radius(boxes2).double()
    p1, p2 = boxes1[:, :2].double(), boxes2[:, :2].double()
    sq1, sq2 = (p1 * p1).sum(1), (p2 * p2).sum(1)
    one1, one2 = torch.ones_like(r1), torch.ones_like(r2)
    u = torch.stack([p1[:, 0], p1[:, 1], r1, sq1 - r1 * r1, one1], dim=1)
    v = torch.stack([-2 * p2[:, 0], -2 * p2[:, 1], -2 * r2, one2, sq2 - r2 * r2], dim=0)
    tol = 1e-9 * (1.0 + float(torch.maximum(sq1.max(), sq2.max())))
    rows = max(1, _CIRCLE_BLOCK // m)
    pairs_i, pairs_j = [], []
    for start in range(0, n, rows):
        # With upper_triangle, only the columns j > start can hold pairs of these rows.
        col0 = start + 1 if upper_triangle else 0
        hit = (u[start : start + rows] @ v[:, col0:]) < tol
        if upper_triangle:
            hit = torch.triu(hit)  # local column c is j = col0 + c > i = start + row <=> c >= row
        ii, jj = hit.nonzero(as_tuple=True)
        pairs_i.append(ii + start)
        pairs_j.append(jj + col0)
    return torch.cat(pairs_i), torch.cat(pairs_j)


def iou_of_pairs(boxes_a, boxes_b):
    """IoU of matched pairs of BEV boxes: (P, 5), (P, 5) -> (P,). Chunked to bound memory."""
    if boxes_a.shape[0] <= _PAIR_CHUNK:
        return _iou_of_pairs(boxes_a, boxes_b)
    return torch.cat(
        [
            _iou_of_pairs(boxes_a[s : s + _PAIR_CHUNK], boxes_b[s : s + _PAIR_CHUNK])
            for s in range(0, boxes_a.shape[0], _PAIR_CHUNK)
        ]
    )


def _iou_of_pairs(a, b):
    inter = intersection_area_of_pairs(a, b)
    area_a = (a[:, 2] * a[:, 3]).abs()
    area_b = (b[:, 2] * b[:, 3]).abs()
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=torch.finfo(union.dtype).tiny)
    return iou.clamp_(0.0, 1.0)


def intersection_area_of_pairs(a, b):
    """Overlap area of matched pairs of BEV boxes: (P, 5), (P, 5) -> (P,), square meters.

    Sutherland-Hodgman clipping of ``a`` by ``b``'s four sides, done in ``b``'s frame where ``b`` is
    ``[-hx, hx] x [-hy, hy]``. Instead of ordered vertex lists (which need a compaction per step),
    the polygon is kept as ``a``'s four edges, each shortened or emptied by every clip, plus the
    *chords*: pieces of ``b``'s sides that join a point where the boundary leaves a half-plane
    (exit) to the point where it comes back (entry). The area is the shoelace sum of the edges
    plus that of the chords. A chord on the line ``x = c`` from ``(c, y0)`` to ``(c, y1)``
    contributes ``c * (y1 - y0) / 2``, which is linear in its end points: the chord sum is
    ``c / 2 * (sum of entry y - sum of exit y)`` whatever the pairing of exits with entries, and
    later clips only clamp the end points' y. Every crossing point is computed once and written
    both into its edge and into the event list, so the boundary stays closed bit for bit; this
    makes the result robust for identical, touching and near-parallel boxes (an error in the
    position of a crossing along a nearly parallel edge cancels between the edge and the chord).
    """
    if a.shape[0] == 0:
        return a.new_zeros(0)
    # Layout (4, P): corner/edge k in row k, so that per-pair sums reduce over rows.
    # Masks are 0/1 floats and selections are ``x * m + y * (1 - m)`` (exact for finite values):
    # on CPU this is several times faster than ``torch.where`` with bool masks.
    cos_b, sin_b = torch.cos(b[:, 4]), torch.sin(b[:, 4])
    dx, dy = a[:, 0] - b[:, 0], a[:, 1] - b[:, 1]
    # Centre of a in b's frame (rotation by -yaw_b).
    cx = dx * cos_b + dy * sin_b
    cy = -dx * sin_b + dy * cos_b
    # Relative heading taken as one difference: accurate for near-parallel boxes.
    rel = a[:, 4] - b[:, 4]
    cos_r, sin_r = torch.cos(rel), torch.sin(rel)
    hl, hw = 0.5 * a[:, 2].abs(), 0.5 * a[:, 3].abs()
    # Corners of a, counter-clockwise, in its own frame then in b's frame: (4, P) each.
    sx = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=a.dtype, device=a.device)[:, None]
    sy = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=a.dtype, device=a.device)[:, None]
    lx, ly = sx * hl, sy * hw
    px = cx + cos_r * lx - sin_r * ly
    py = cy + sin_r * lx + cos_r * ly
    # Edge k runs from corner k to corner k + 1; end points are shared bit for bit.
    edges = [px, py, px.roll(-1, dims=0), py.roll(-1, dims=0)]  # x0, y0, x1, y1
    hx, hy = 0.5 * b[:, 2].abs(), 0.5 * b[:, 3].abs()

    # x = +hx and x = -hx: chord end points are kept to be clamped in y by the later clips.
    ev_xp = _clip_edges(edges, 0, 1.0, hx)
    ev_xm = _clip_edges(edges, 0, -1.0, hx)
    # y = +hy then y = -hy; chords on x = +-hx crossing them add events at b's corners.
    ev_yp = _clip_edges(edges, 1, 1.0, hy)
    ev_ym = _clip_edges(edges, 1, -1.0, hy)

    x0, y0, x1, y1 = edges
    area = 0.5 * (x0 * y1 - x1 * y0).sum(dim=0)
    corner_yp = torch.zeros_like(hx)  # sum over corner events on y = +hy of (+-1) * corner x
    corner_ym = torch.zeros_like(hx)
    for c, (entry, leave, y) in ((hx, ev_xp), (-hx, ev_xm)):
        net = entry - leave
        # Net entries minus exits of this line's chords into y <= hy, then into y >= -hy (after
        # the first clamp): the chords that cross b's top/bottom side there.
        corner_yp = corner_yp + c * (net * _inside(y - hy)).sum(0)
        y_top = torch.minimum(y, hy)
        corner_ym = corner_ym + c * (net * _inside(-y_top - hy)).sum(0)
        y_clamped = torch.maximum(y_top, -hy)
        area = area + 0.5 * c * (net * y_clamped).sum(0)
    for c, (entry, leave, x), corner in ((hy, ev_yp, corner_yp), (-hy, ev_ym, corner_ym)):
        area = area - 0.5 * c * (((entry - leave) * x).sum(0) + corner)
    return area.clamp_(min=0.0)


def _inside(f):
    """``(f <= 0)`` as a 0/1 float tensor (sign-based: faster than a bool compare + cast on CPU)."""
    return torch.sign(f).neg_().add_(1.0).clamp_(max=1.0)


def _select(mask, x, y):
    """``mask ? x : y`` for a 0/1 float ``mask``; exact for finite values."""
    return torch.addcmul(y * (1.0 - mask), x, mask)


def _clip_edges(edges, axis, sign, limit):
    """Clip the edges ``[x0, y0, x1, y1]`` (each (K, P)) in place to ``sign * v[axis] <= limit``.

    Returns:
        ``(entry, exit, other)``: (K, P) 0/1 float masks of the edges that enter / leave the
        half-plane and the other coordinate of their crossing points (chord end points).
    """
    other = 1 - axis
    a0, o0, a1, o1 = edges[axis], edges[other], edges[2 + axis], edges[2 + other]
    if sign > 0:
        f0, f1 = a0 - limit, a1 - limit
    else:
        f0, f1 = (a0 + limit).neg_(), (a1 + limit).neg_()
    in0, in1 = _inside(f0), _inside(f1)
    step = in1 - in0  # +1 entry, -1 exit, 0 no crossing
    entry = step.clamp(min=0.0)
    leave = step.neg().clamp_(min=0.0)
    outside = (1.0 - in0).mul_(1.0 - in1)
    # Crossing edges have f0, f1 of different signs, so f0 - f1 != 0; elsewhere divide by 1
    # (t is only used where the edge crosses).
    crossing = step.abs()
    denom = torch.addcmul(1.0 - crossing, f0 - f1, crossing)
    t = f0.div_(denom).clamp_(0.0, 1.0)
    cross_o = (o1 - o0).mul_(t).add_(o0)
    cross_a = sign * limit
    # Edge entirely outside: collapse it onto its end point (zero length, never crosses again).
    a0 = _select(outside, a1, a0)
    o0 = _select(outside, o1, o0)
    edges[axis] = _select(entry, cross_a, a0)
    edges[other] = _select(entry, cross_o, o0)
    edges[2 + axis] = _select(leave, cross_a, a1)
    edges[2 + other] = _select(leave, cross_o, o1)
    return entry, leave, cross_o
