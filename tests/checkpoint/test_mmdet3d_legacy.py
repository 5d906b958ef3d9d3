"""0.x heads rewritten for the package's convention decode the same physical boxes, checked
against a 0.x decoder written out here."""

import math
import numpy as np
import pytest
import torch

from d2_pillars.checkpoint.mmdet3d_legacy import (
    HeadLayout,
    LegacyHeadError,
    legacy_dir_offset,
    legacy_head_to_current,
)
from d2_pillars.modeling.box_coder import ResidualBoxCoder, apply_direction

SIZES_0X = [[0.6, 1.7, 1.3], [2.0, 4.6, 1.7]]  # [w, l, h], as 0.x configs write them
ROTATIONS = [0.0, 1.57]
NUM_CLASSES, CODE_SIZE, CHANNELS = 3, 9, 5


def _wrap(v, offset, period):
    return v - math.floor(v / period + offset) * period


def _decode_0x(reg, dir_logits, anchor_xyz, size, r0):
    """mmdetection3d 0.x: residuals against (x, y, z, w, l, h, r0); yaw0 frame; dir offset
    +0.7854. Returns the box as (x, y, z, l, w, h, yaw) in the package's convention."""
    xa, ya, za = anchor_xyz
    wa, la, ha = size
    diag = math.hypot(wa, la)
    x, y, z = reg[0] * diag + xa, reg[1] * diag + ya, reg[2] * ha + za
    w, l, h = math.exp(reg[3]) * wa, math.exp(reg[4]) * la, math.exp(reg[5]) * ha
    yaw0 = reg[6] + r0
    yaw0 = _wrap(yaw0 - 0.7854, 0, math.pi) + 0.7854 + math.pi * int(np.argmax(dir_logits))
    return np.array([x, y, z, l, w, h, -yaw0 - math.pi / 2, reg[7], reg[8]])


def test_rewritten_head_decodes_the_0x_boxes():
    g = torch.Generator().manual_seed(0)
    num_anchors = len(SIZES_0X) * len(ROTATIONS)
    convs = {}
    for name, k in (("conv_cls", NUM_CLASSES), ("conv_reg", CODE_SIZE), ("conv_dir", 2)):
        convs[f"{name}.weight"] = torch.randn(num_anchors * k, CHANNELS, 1, 1, generator=g) * 0.5
        convs[f"{name}.bias"] = torch.randn(num_anchors * k, generator=g) * 0.5
    layout = HeadLayout(len(SIZES_0X), ROTATIONS, NUM_CLASSES, CODE_SIZE)
    new = legacy_head_to_current(convs, layout)
    coder = ResidualBoxCoder(CODE_SIZE)
    anchor_xyz = (3.0, -2.0, -1.0)
    for trial in range(20):
        feat = torch.randn(CHANNELS, generator=g, dtype=torch.float32)

        def outputs(c, name, k, feat=feat):
            w, b = c[f"{name}.weight"][:, :, 0, 0].double(), c[f"{name}.bias"].double()
            return (w @ feat.double() + b).view(num_anchors, k)

        old_cls, new_cls = outputs(convs, "conv_cls", NUM_CLASSES), outputs(new, "conv_cls", 3)
        old_reg, new_reg = outputs(convs, "conv_reg", CODE_SIZE), outputs(new, "conv_reg", 9)
        old_dir, new_dir = outputs(convs, "conv_dir", 2), outputs(new, "conv_dir", 2)
        for s, (w, l, h) in enumerate(SIZES_0X):
            expected, got, scores_old, scores_new = [], [], [], []
            for r, rot in enumerate(ROTATIONS):
                a = s * len(ROTATIONS) + r
                expected.append(
                    _decode_0x(old_reg[a].tolist(), old_dir[a].tolist(), anchor_xyz, (w, l, h), rot)
                )
                anchor = torch.tensor([[*anchor_xyz, l, w, h, rot]], dtype=torch.float64)
                box = coder.decode(new_reg[a : a + 1], anchor)[0]
                box[6] = apply_direction(
                    box[6:7], new_dir[a : a + 1].argmax(1), legacy_dir_offset()
                )[0]
                got.append(box.numpy())
                scores_old.append(old_cls[a].numpy())
                scores_new.append(new_cls[a].numpy())
            # the same boxes (and class logits) per size, anchors paired by footprint
            for e, sc in zip(expected, scores_old):
                match = [
                    i
                    for i, (b, sn) in enumerate(zip(got, scores_new))
                    if np.allclose(b[:6], e[:6], atol=1e-9)
                    and np.allclose(b[7:], e[7:], atol=1e-12)
                    and abs(_wrap(b[6] - e[6], 0.5, 2 * math.pi)) < 1e-6  # float32 bias shift
                    and np.allclose(sn, sc, atol=1e-12)
                ]
                assert len(match) == 1, (trial, s, e, got)


def test_rotations_without_a_0x_counterpart_are_refused():
    convs = {
        f"{n}.{p}": torch.zeros(3 * k, *((4, 1, 1) if p == "weight" else ()))
        for n, k in (("conv_cls", 1), ("conv_reg", 7), ("conv_dir", 2))
        for p in ("weight", "bias")
    }
    with pytest.raises(LegacyHeadError, match="one-to-one 0.x counterpart"):
        legacy_head_to_current(convs, HeadLayout(1, [0.0, 0.5, 1.0], 1, 7))
