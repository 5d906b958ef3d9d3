# -*- coding: utf-8 -*-
"""mmdetection3d 0.x (before 1.0) heads in the package's box convention, exactly.

A 0.x network regresses ``(x, y, z, w, l, h, yaw0)`` residuals against anchors of sizes
``[w, l, h]`` and rotations ``r0`` in a yaw frame ``yaw0 = -yaw - pi/2``, with direction bins
offset by ``+0.7854`` in that frame. :func:`legacy_head_to_current` rewrites the head's three 1x1
convolutions so that the package's anchors (same sizes as ``[l, w, h]``, rotations ``r``) decode
the same physical boxes: each anchor ``(s, r)`` takes the 0.x anchor of the same footprint (the
0.x rotation ``r0`` whose ``-r0 - pi/2`` is closest to ``r`` modulo pi), the ``(w, l)`` residual
channels swap, the yaw residual ``t`` becomes ``-t - r0 - pi/2 - r`` (negated weights, shifted
bias), and the direction offset becomes :func:`legacy_dir_offset` = ``pi/2 - 0.7854``.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple
import torch

__all__ = [
    "LEGACY_DIR_OFFSET",
    "LegacyHeadError",
    "HeadLayout",
    "legacy_head_to_current",
    "legacy_dir_offset",
]

#: Direction offset of every 0.x PointPillars config, in the 0.x yaw frame (radians).
LEGACY_DIR_OFFSET = 0.7854


class LegacyHeadError(ValueError):
    """A 0.x head that does not fit the config's anchors."""


@dataclass
class HeadLayout:
    """What the head's channel layout depends on: ``A = num_sizes * len(rotations)`` anchors per
    location, channel ``a * K + k`` with ``a = size_idx * R + rot_idx``."""

    num_sizes: int
    rotations: List[float]
    num_classes: int
    code_size: int

    @classmethod
    def from_head(cls, head) -> "HeadLayout":
        gen = head.anchor_generator
        return cls(len(gen.sizes), list(gen.rotations), head.num_classes, head.code_size)


def _legacy_rotation_pairs(rotations: Sequence[float]) -> List[Tuple[int, float]]:
    """For each rotation ``r`` of the package, the index ``i`` of the 0.x rotation (same values)
    whose footprint ``-r0_i - pi/2`` matches ``r`` modulo pi, and the yaw bias ``-r0_i - pi/2 - r``.
    """

    def distance(r0, r):
        d = math.fmod(-r0 - math.pi / 2 - r, math.pi)
        return min(abs(d), math.pi - abs(d))

    pairs = []
    for r in rotations:
        i = min(range(len(rotations)), key=lambda j: distance(rotations[j], r))
        pairs.append((i, -rotations[i] - math.pi / 2 - r))
    if sorted(i for i, _ in pairs) != list(range(len(rotations))):
        raise LegacyHeadError(
            f"Anchor rotations {list(rotations)} have no one-to-one 0.x counterpart (each "
            "rotation r needs a rotation r0 with -r0 - pi/2 = r modulo pi, as {0, 1.57} does)."
        )
    return pairs


def legacy_head_to_current(
    conv_weights: Mapping[str, torch.Tensor], layout: HeadLayout
) -> Dict[str, torch.Tensor]:
    """
    Rewrite a 0.x head's three 1x1 convolutions for the package's convention (see the module
    doc). Exact: the decoded boxes are the 0.x boxes as physical boxes.

    Args:
        conv_weights: ``{"conv_cls.weight", "conv_cls.bias", "conv_reg.weight", "conv_reg.bias",
            "conv_dir.weight", "conv_dir.bias"}`` in the 0.x channel layout.
        layout (HeadLayout): anchors, classes and code size of the model.

    Returns:
        dict: the same keys, converted (new tensors).
    """
    pairs = _legacy_rotation_pairs(layout.rotations)
    num_rot = len(layout.rotations)
    # destination anchor a = s * R + r takes source anchor s * R + pairs[r][0]
    source_anchor = [
        s * num_rot + pairs[r][0] for s in range(layout.num_sizes) for r in range(num_rot)
    ]
    yaw_bias = torch.tensor(
        [pairs[r][1] for _ in range(layout.num_sizes) for r in range(num_rot)], dtype=torch.float64
    )
    num_anchors = len(source_anchor)
    per_anchor = {"conv_cls": layout.num_classes, "conv_reg": layout.code_size, "conv_dir": 2}
    out = {}
    for conv, k in per_anchor.items():
        for param in ("weight", "bias"):
            key = f"{conv}.{param}"
            t = conv_weights[key]
            if t.shape[0] != num_anchors * k:
                raise LegacyHeadError(
                    f"{key} has {t.shape[0]} output channels, but the config's head has "
                    f"{num_anchors} anchors x {k} = {num_anchors * k}"
                )
            t = t.reshape(num_anchors, k, *t.shape[1:])[source_anchor].clone()
            if conv == "conv_reg":
                t[:, [3, 4]] = t[:, [4, 3]]  # residuals (w, l) -> (l, w)
                t[:, 6] = -t[:, 6]  # yaw = -yaw0 - pi/2 ...
                if param == "bias":  # ... - r0 - pi/2 relative to the anchor's rotation r
                    t[:, 6] = (t[:, 6].double() + yaw_bias).to(t.dtype)
            out[key] = t.reshape(num_anchors * k, *t.shape[2:])
    return out


def legacy_dir_offset() -> float:
    """The package-frame direction offset equivalent to the 0.x offset (radians)."""
    return math.pi / 2 - LEGACY_DIR_OFFSET
