# -*- coding: utf-8 -*-
"""Aligned 3D anchor grids for the BEV feature maps of :class:`Anchor3DHead`."""
from typing import Dict, List, Sequence, Tuple
import torch
from torch import nn

from detectron2.config import configurable

from ..structures import LiDARBoxes

__all__ = ["Anchor3DGenerator"]


def _cell_centres(low: torch.Tensor, high: torch.Tensor, cells: int) -> torch.Tensor:
    """Centres of ``cells`` equal cells on ``[low, high]`` (0-d float32 tensors), in float32 as
    the reference's ``AlignedAnchor3DRangeGenerator`` computes them (``align_corner=False``)."""
    edges = torch.linspace(low, high, cells + 1, dtype=torch.float32, device=low.device)
    return (edges + (edges[1] - edges[0]) / 2)[:cells]


class Anchor3DGenerator(nn.Module):
    """
    Anchors on an aligned grid (mmdetection3d ``AlignedAnchor3DRangeGenerator``,
    ``align_corner=False``), in the package box convention ``(x, y, z, l, w, h, yaw)`` with the
    geometric-centre z.

    For a level of feature size ``(H, W)`` the anchor centres are
    ``x_i = x_min + (i + 0.5) * (x_max - x_min) / W`` (``y`` likewise with ``H``), so each level
    covers the same metric range whatever its stride. At every location there are
    ``A = num_sizes * num_rotations`` anchors, index ``a = size_idx * num_rotations + rot_idx``;
    a level's anchors flatten in ``(y, x, size, rotation)`` order, which matches a head output
    ``(B, A * K, H, W)`` permuted to ``(B, H, W, A, K)``.

    Level ``l`` multiplies every dimension (height included) of every size by
    ``level_scales[l]``; the anchor bottom stays at the range's z, so
    ``z_centre = z_bottom + h * scale / 2``.

    Grids are cached per (level, feature size, device): they are built once and reused.
    """

    @configurable
    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]],
        ranges: Sequence[Sequence[float]],
        rotations: Sequence[float],
        level_scales: Sequence[float] = (1.0,),
    ):
        """
        Args:
            sizes: S sizes ``[l, w, h]`` in meters (per class for single-level heads,
                class-agnostic for FPN heads).
            ranges: one range ``[x_min, y_min, z, x_max, y_max, z]`` shared by every size, or one
                per size; z is the anchor *bottom* (the two z values are averaged).
            rotations: R yaw angles (radians), e.g. ``[0, 1.57]``.
            level_scales: one multiplier per feature level (its length is the number of levels).
        """
        super().__init__()
        sizes = [list(map(float, s)) for s in sizes]
        ranges = [list(map(float, r)) for r in ranges]
        if len(sizes) == 0 or any(len(s) != 3 or min(s) <= 0 for s in sizes):
            raise ValueError(f"anchor sizes must be positive [l, w, h] triples, got {sizes}")
        if len(ranges) == 1:
            ranges = ranges * len(sizes)
        if len(ranges) != len(sizes):
            raise ValueError(
                f"MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES has {len(ranges)} ranges for {len(sizes)} "
                "sizes: give one range shared by all sizes or one range per size"
            )
        for r in ranges:
            if len(r) != 6 or not (r[3] > r[0] and r[4] > r[1]):
                raise ValueError(
                    f"anchor range must be [x_min, y_min, z, x_max, y_max, z], got {r}"
                )
        if len(rotations) == 0 or len(level_scales) == 0:
            raise ValueError("anchor rotations and level scales must not be empty")
        self.sizes = sizes
        self.ranges = ranges
        self.rotations = [float(r) for r in rotations]
        self.level_scales = [float(s) for s in level_scales]
        self._cache: Dict[Tuple[int, int, int, str], torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg):
        head = cfg.MODEL.ANCHOR3D_HEAD
        return {
            "sizes": head.ANCHOR_SIZES,
            "ranges": head.ANCHOR_RANGES,
            "rotations": head.ANCHOR_ROTATIONS,
            "level_scales": head.LEVEL_SCALES,
        }

    @property
    def num_anchors_per_location(self) -> int:
        """A = number of sizes x number of rotations (the same on every level)."""
        return len(self.sizes) * len(self.rotations)

    @property
    def num_levels(self) -> int:
        return len(self.level_scales)

    def _grid(self, level: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        scale = self.level_scales[level]
        sizes = torch.tensor(self.sizes, dtype=torch.float32, device=device) * scale  # (S, 3)
        ranges = torch.tensor(self.ranges, dtype=torch.float64, device=device)  # (S, 6)
        rots = torch.tensor(self.rotations, dtype=torch.float32, device=device)  # (R,)
        # Centres computed in float32 exactly as the reference does (cell edges by linspace, then
        # half a cell): for a range like +-49.6 m the values differ from the exact centres by an
        # ulp, which decides ties of the anchor assignment.
        ranges32 = ranges.float()
        xs = torch.stack([_cell_centres(r[0], r[3], width) for r in ranges32], dim=1)  # (W, S)
        ys = torch.stack([_cell_centres(r[1], r[4], height) for r in ranges32], dim=1)  # (H, S)
        z_bottom = (ranges[:, 2] + ranges[:, 5]) / 2
        zs = z_bottom.float() + sizes[:, 2] / 2  # (S,)

        num_s, num_r = sizes.shape[0], rots.shape[0]
        shape = (height, width, num_s, num_r)
        x = xs[None, :, :, None].expand(shape)
        y = ys[:, None, :, None].expand(shape)
        z = zs[None, None, :, None].expand(shape)
        dims = sizes[None, None, :, None, :].expand(*shape, 3)
        yaw = rots[None, None, None, :].expand(shape)
        anchors = torch.cat([torch.stack([x, y, z], -1), dims, yaw[..., None]], dim=-1)
        return anchors.reshape(-1, 7).contiguous()

    def grid_anchors(self, grid_sizes: List[Tuple[int, int]], device) -> List[torch.Tensor]:
        """
        Args:
            grid_sizes: ``(H, W)`` of each level, as many as ``level_scales``.
            device: where the anchors live.

        Returns:
            list[Tensor]: per level, (H * W * A, 7) float32 anchors (not to be modified).
        """
        if len(grid_sizes) != self.num_levels:
            raise ValueError(
                f"{len(grid_sizes)} feature levels but {self.num_levels} anchor level scales: "
                "MODEL.ANCHOR3D_HEAD.LEVEL_SCALES needs one entry per IN_FEATURES entry"
            )
        device = torch.device(device)
        out = []
        for level, (h, w) in enumerate(grid_sizes):
            key = (level, int(h), int(w), str(device))
            if key not in self._cache:
                self._cache[key] = self._grid(level, int(h), int(w), device)
            out.append(self._cache[key])
        return out

    @torch.no_grad()
    def candidate_pairs(
        self, gt_bev: torch.Tensor, grid_sizes: List[Tuple[int, int]]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Every (GT, anchor) pair whose nearest axis-aligned BEV rectangles may overlap.

        Anchors of one (level, size, rotation) form a regular grid with one BEV extent, so the
        anchors that can touch a GT rectangle form an index window per GT and anchor type; the
        windows are widened by one cell for rounding. Pairs outside them have zero IoU, so an
        assignment needs IoUs of these pairs only (a few thousand per GT instead of all anchors).

        Args:
            gt_bev (Tensor): (K, 4) ``(x1, y1, x2, y2)`` GT rectangles (``nearest_bev()``).
            grid_sizes: ``(H, W)`` per level, as for :meth:`grid_anchors`.

        Returns:
            gt_idx, anchor_idx (Tensor): (P,) int64 each; anchor indices address the
            concatenation of all levels' anchors. No pair appears twice.
        """
        device = gt_bev.device
        anchors = self.grid_anchors(grid_sizes, device)
        num_a, num_r = self.num_anchors_per_location, len(self.rotations)
        ranges = torch.tensor(self.ranges, dtype=torch.float32, device=device)
        ranges = ranges.repeat_interleave(num_r, dim=0)  # (A, 6), range of each anchor type
        gt_idx, anchor_idx, offset = [], [], 0
        for (h, w), level_anchors in zip(grid_sizes, anchors):
            bev = LiDARBoxes(level_anchors[:num_a]).nearest_bev()  # (A, 4), cell (0, 0)
            half_x = (bev[:, 2] - bev[:, 0]) / 2
            half_y = (bev[:, 3] - bev[:, 1]) / 2
            dx = (ranges[:, 3] - ranges[:, 0]) / w
            dy = (ranges[:, 4] - ranges[:, 1]) / h
            x0, y0 = level_anchors[:num_a, 0], level_anchors[:num_a, 1]
            # (K, A) index windows [lo, hi] of the anchor centres that can overlap each GT
            i_lo = torch.floor((gt_bev[:, None, 0] - half_x - x0) / dx) - 1
            i_hi = torch.ceil((gt_bev[:, None, 2] + half_x - x0) / dx) + 1
            j_lo = torch.floor((gt_bev[:, None, 1] - half_y - y0) / dy) - 1
            j_hi = torch.ceil((gt_bev[:, None, 3] + half_y - y0) / dy) + 1
            i_lo, i_hi = i_lo.clamp(0, w - 1).long(), i_hi.clamp(-1, w - 1).long()
            j_lo, j_hi = j_lo.clamp(0, h - 1).long(), j_hi.clamp(-1, h - 1).long()
            ni = (i_hi - i_lo + 1).clamp(min=0)
            nj = (j_hi - j_lo + 1).clamp(min=0)
            counts = (ni * nj).flatten()  # (K * A,)
            total = int(counts.sum())
            if total > 0:
                block = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
                starts = torch.cumsum(counts, 0) - counts
                t = torch.arange(total, device=device) - starts[block]
                ni_b = ni.flatten()[block]
                i = i_lo.flatten()[block] + t % ni_b
                j = j_lo.flatten()[block] + t // ni_b
                a = block % num_a
                gt_idx.append(block // num_a)
                anchor_idx.append(offset + (j * w + i) * num_a + a)
            offset += level_anchors.shape[0]
        if not gt_idx:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            return empty, empty.clone()
        return torch.cat(gt_idx), torch.cat(anchor_idx)

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            features: per level, a (B, C, H, W) feature map (only its size and device are used).

        Returns:
            list[Tensor]: per level, (H * W * A, 7) anchors.
        """
        return self.grid_anchors([tuple(f.shape[-2:]) for f in features], features[0].device)
