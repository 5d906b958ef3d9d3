"""3D IoU of rotated upright boxes against an independent reference: shapely polygon
intersection area times the overlap of the z intervals, over the union volume."""

import math
import numpy as np
import pytest
import shapely
import torch

from d2_pillars.layers import pairwise_iou_rotated_3d, pairwise_iou_rotated_bev


def shapely_rectangles(boxes):
    """BEV footprints of (N, 7) ``x y z l w h yaw`` boxes as shapely polygons (float64)."""
    b = np.asarray(boxes, dtype=np.float64)
    local = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    xy = local[None] * b[:, None, 3:5]
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x = b[:, 0:1] + c * xy[..., 0] - s * xy[..., 1]
    y = b[:, 1:2] + s * xy[..., 0] + c * xy[..., 1]
    return shapely.polygons(np.stack([x, y], axis=-1))


def shapely_iou_3d(boxes1, boxes2):
    """(N, M) reference 3D IoU."""
    b1, b2 = np.asarray(boxes1, np.float64), np.asarray(boxes2, np.float64)
    p1, p2 = shapely_rectangles(b1), shapely_rectangles(b2)
    area = shapely.area(shapely.intersection(p1[:, None], p2[None, :]))
    top = np.minimum((b1[:, 2] + b1[:, 5] / 2)[:, None], (b2[:, 2] + b2[:, 5] / 2)[None])
    bottom = np.maximum((b1[:, 2] - b1[:, 5] / 2)[:, None], (b2[:, 2] - b2[:, 5] / 2)[None])
    inter = area * np.clip(top - bottom, 0, None)
    vol1 = b1[:, 3] * b1[:, 4] * b1[:, 5]
    vol2 = b2[:, 3] * b2[:, 4] * b2[:, 5]
    return inter / (vol1[:, None] + vol2[None] - inter)


def random_boxes(gen, n):
    return torch.cat(
        [
            (torch.rand(n, 2, generator=gen) - 0.5) * 6.0,  # x, y: many overlaps
            (torch.rand(n, 1, generator=gen) - 0.5) * 2.0,  # z
            torch.rand(n, 3, generator=gen) * 4.0 + 0.3,  # l, w, h
            (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi,  # yaw
        ],
        dim=1,
    ).double()


def test_matches_shapely_on_random_boxes():
    gen = torch.Generator().manual_seed(0)
    a, b = random_boxes(gen, 40), random_boxes(gen, 30)
    got = pairwise_iou_rotated_3d(a, b)
    assert got.shape == (40, 30) and got.dtype == torch.float64
    ref = shapely_iou_3d(a.numpy(), b.numpy())
    assert (ref > 0.05).sum() > 50  # the set exercises real overlaps
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-9)


def test_known_cases():
    box = torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3]], dtype=torch.float64)
    assert pairwise_iou_rotated_3d(box, box).item() == pytest.approx(1.0, abs=1e-12)
    # Shifted up by half its height: 1/2 of the volume shared, IoU = 0.5 / 1.5.
    up = box.clone()
    up[0, 2] += 0.75
    assert pairwise_iou_rotated_3d(box, up).item() == pytest.approx(1 / 3, abs=1e-12)
    # Same footprint, stacked on top: no volume in common, yet BEV IoU 1.
    above = box.clone()
    above[0, 2] += 1.5
    assert pairwise_iou_rotated_3d(box, above).item() == 0.0
    assert pairwise_iou_rotated_bev(box[:, [0, 1, 3, 4, 6]], above[:, [0, 1, 3, 4, 6]]).item() == (
        pytest.approx(1.0, abs=1e-12)
    )
    # Nested: the small box lies inside; IoU = its volume / the large one.
    small = box.clone()
    small[0, 3:6] = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    assert pairwise_iou_rotated_3d(small, box).item() == pytest.approx(1.0 / 12.0, abs=1e-12)


def test_velocity_columns_float32_and_empty():
    gen = torch.Generator().manual_seed(1)
    a, b = random_boxes(gen, 5), random_boxes(gen, 4)
    with_velocity = torch.cat([a, torch.randn(5, 2, generator=gen, dtype=torch.float64)], dim=1)
    ref = pairwise_iou_rotated_3d(a, b)
    np.testing.assert_allclose(pairwise_iou_rotated_3d(with_velocity, b).numpy(), ref.numpy())
    got32 = pairwise_iou_rotated_3d(a.float(), b.float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), ref.numpy(), atol=1e-5)
    assert pairwise_iou_rotated_3d(a[:0], b).shape == (0, 4)
    assert pairwise_iou_rotated_3d(a, b[:0]).shape == (5, 0)


def test_given_bev_iou_is_used_and_checked():
    gen = torch.Generator().manual_seed(2)
    a, b = random_boxes(gen, 6), random_boxes(gen, 7)
    bev = pairwise_iou_rotated_bev(a[:, [0, 1, 3, 4, 6]], b[:, [0, 1, 3, 4, 6]])
    np.testing.assert_allclose(
        pairwise_iou_rotated_3d(a, b, bev_iou=bev).numpy(), pairwise_iou_rotated_3d(a, b).numpy()
    )
    with pytest.raises(ValueError, match="bev_iou must be"):
        pairwise_iou_rotated_3d(a, b, bev_iou=bev[:, :3])
    with pytest.raises(ValueError, match=r"\(N, 7\+\)"):
        pairwise_iou_rotated_3d(a[:, :5], b)
