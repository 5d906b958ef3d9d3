# -*- coding: utf-8 -*-
"""Residual box coding between 3D anchors and boxes, and the heading-direction bins.

Boxes and anchors follow the package convention (``d2_pillars.structures``): ``(x, y, z, l, w, h,
yaw[, vx, vy])`` with the geometric centre ``(x, y, z)``. Because both sides use centre z, the
height residual ``t_z = (z_g - z_a) / h_a`` equals the reference's centre-to-centre residual.
"""
import math
from typing import Tuple
import torch

from ..structures.lidar_boxes import limit_period

__all__ = [
    "ResidualBoxCoder",
    "limit_period",
    "direction_targets",
    "apply_direction",
    "add_sin_difference",
]

# Largest log-ratio allowed when decoding l, w, h (as detectron2's ``_DEFAULT_SCALE_CLAMP``):
# keeps ``exp`` finite for wild early-training predictions; about 62x the anchor size.
_DIM_LOG_CLAMP = math.log(1000.0 / 16)


class ResidualBoxCoder:
    """
    The residual coding of SECOND / PointPillars (mmdetection3d ``DeltaXYZWLHRBBoxCoder``).

    With anchor ``a`` and box ``g`` and ``D = sqrt(l_a^2 + w_a^2)``::

        t_x = (x_g - x_a) / D,  t_y = (y_g - y_a) / D,  t_z = (z_g - z_a) / h_a
        t_l = ln(l_g / l_a),    t_w = ln(w_g / w_a),    t_h = ln(h_g / h_a)
        t_yaw = yaw_g - yaw_a,  t_vx = vx_g,            t_vy = vy_g

    Velocity is regressed directly (anchor velocity 0). Every operation is elementwise over
    rows, so any number of boxes is coded at once.
    """

    def __init__(self, code_size: int = 7):
        """
        Args:
            code_size (int): 7 (no velocity) or 9 (with ``vx, vy``).
        """
        if code_size not in (7, 9):
            raise ValueError(f"box code size must be 7 or 9, got {code_size}")
        self.code_size = code_size

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """
        Args:
            boxes (Tensor): (N, >= code_size) target boxes; extra columns are ignored.
            anchors (Tensor): (N, >= 7) anchors; only the first 7 columns are used.

        Returns:
            Tensor: (N, code_size) residuals.
        """
        if boxes.shape[-1] < self.code_size:
            raise ValueError(
                f"boxes have {boxes.shape[-1]} values but the box code needs {self.code_size}; "
                "set MODEL.ANCHOR3D_HEAD.BOX_CODE_SIZE to 7 for datasets without velocity"
            )
        xa, ya, za, la, wa, ha, ra = anchors[..., :7].unbind(-1)
        xg, yg, zg, lg, wg, hg, rg = boxes[..., :7].unbind(-1)
        diag = torch.sqrt(la * la + wa * wa)
        deltas = [
            (xg - xa) / diag,
            (yg - ya) / diag,
            (zg - za) / ha,
            torch.log(lg / la),
            torch.log(wg / wa),
            torch.log(hg / ha),
            rg - ra,
        ]
        out = torch.stack(deltas, dim=-1)
        if self.code_size == 9:
            out = torch.cat([out, boxes[..., 7:9]], dim=-1)
        return out

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """
        Inverse of :meth:`encode`.

        Args:
            deltas (Tensor): (N, code_size) residuals.
            anchors (Tensor): (N, >= 7) anchors.

        Returns:
            Tensor: (N, code_size) boxes (yaw not wrapped).
        """
        xa, ya, za, la, wa, ha, ra = anchors[..., :7].unbind(-1)
        tx, ty, tz, tl, tw, th, tr = deltas[..., :7].unbind(-1)
        diag = torch.sqrt(la * la + wa * wa)
        boxes = [
            tx * diag + xa,
            ty * diag + ya,
            tz * ha + za,
            torch.exp(tl.clamp(max=_DIM_LOG_CLAMP)) * la,
            torch.exp(tw.clamp(max=_DIM_LOG_CLAMP)) * wa,
            torch.exp(th.clamp(max=_DIM_LOG_CLAMP)) * ha,
            tr + ra,
        ]
        out = torch.stack(boxes, dim=-1)
        if self.code_size == 9:
            out = torch.cat([out, deltas[..., 7:9]], dim=-1)
        return out


def direction_targets(yaw: torch.Tensor, dir_offset: float) -> torch.Tensor:
    """
    Heading bin of each box: ``floor(wrap(yaw - dir_offset, 0, 2*pi) / pi)`` clamped to {0, 1}.

    Bin 0 holds headings in ``[dir_offset, dir_offset + pi)`` (modulo 2*pi), bin 1 the rest.

    Args:
        yaw (Tensor): (N,) headings in radians.
        dir_offset (float): radians.

    Returns:
        Tensor: (N,) int64 in {0, 1}.
    """
    rel = limit_period(yaw - dir_offset, 0.0, 2 * math.pi)
    return torch.floor(rel / math.pi).long().clamp_(0, 1)


def apply_direction(yaw: torch.Tensor, dir_bins: torch.Tensor, dir_offset: float) -> torch.Tensor:
    """
    Resolve the pi ambiguity of regressed headings with the predicted direction bins.

    ``yaw' = wrap(yaw - dir_offset, 0, pi) + dir_offset + pi * bin``, then wrapped to
    ``[-pi, pi)``. The result differs from ``yaw`` by a multiple of pi and lies in the half-turn
    of its bin.

    Args:
        yaw (Tensor): (N,) decoded headings (any range).
        dir_bins (Tensor): (N,) predicted bins in {0, 1} (argmax of the direction logits).
        dir_offset (float): the same offset as in :func:`direction_targets`.

    Returns:
        Tensor: (N,) headings in ``[-pi, pi)``.
    """
    rel = limit_period(yaw - dir_offset, 0.0, math.pi)
    out = rel + dir_offset + math.pi * dir_bins.to(yaw.dtype)
    return limit_period(out, 0.5, 2 * math.pi)


def add_sin_difference(
    pred: torch.Tensor, target: torch.Tensor, dim: int = 6
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Replace the yaw column so that an L1 on the pair acts on ``sin(pred - target)``.

    ``pred' = sin(pred) cos(target)``, ``target' = cos(pred) sin(target)``; the difference is
    ``sin(pred - target)``, which is blind to a pi flip (the direction bins resolve it).

    Args:
        pred, target (Tensor): (N, code_size) residuals.
        dim (int): index of the yaw column.

    Returns:
        tuple[Tensor, Tensor]: new (pred, target); the inputs are not modified.
    """
    p, t = pred[:, dim : dim + 1], target[:, dim : dim + 1]
    pred_sin = torch.sin(p) * torch.cos(t)
    target_sin = torch.cos(p) * torch.sin(t)
    pred = torch.cat([pred[:, :dim], pred_sin, pred[:, dim + 1 :]], dim=1)
    target = torch.cat([target[:, :dim], target_sin, target[:, dim + 1 :]], dim=1)
    return pred, target
