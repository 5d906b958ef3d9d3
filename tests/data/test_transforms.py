"""3D augmentations: points and LiDARBoxes move together (checked by brute force in numpy)."""

import math
import numpy as np
import pytest
import torch

from d2_pillars.config import add_pillars_config
from d2_pillars.data.transforms import (
    GlobalTransform3D,
    RandomGlobalTransform3D,
    flip_points,
    rotate_points,
    rotation_matrix_z,
    scale_points,
    translate_points,
)
from d2_pillars.structures import LiDARBoxes


def _random_boxes(rng, n=6):
    centre = rng.uniform(-30, 30, (n, 3))
    dims = np.c_[rng.uniform(2.0, 6.0, n), rng.uniform(0.5, 1.9, n), rng.uniform(1, 3, n)]
    yaw = rng.uniform(-math.pi, math.pi, n)
    vel = rng.normal(0, 5, (n, 2))
    return np.c_[centre, dims, yaw, vel].astype(np.float32)


def _points_in_boxes_numpy(points, boxes):
    """(P, N) inside test in each box's own frame, shrunk by 1 cm to avoid face ties."""
    d = points[:, None, :3].astype(np.float64) - boxes[None, :, :3]
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    lx = d[..., 0] * c + d[..., 1] * s
    ly = -d[..., 0] * s + d[..., 1] * c
    half = boxes[:, 3:6] / 2
    return (np.abs(lx) < half[:, 0]) & (np.abs(ly) < half[:, 1]) & (np.abs(d[..., 2]) < half[:, 2])


def _points_around(rng, boxes, per_box=200):
    """Points uniformly in 1.3x enlarged boxes (some inside, some just outside)."""
    pts = []
    for b in boxes:
        local = rng.uniform(-0.65, 0.65, (per_box, 3)) * b[3:6]
        c, s = math.cos(b[6]), math.sin(b[6])
        xy = local[:, :2] @ np.array([[c, -s], [s, c]]).T + b[:2]
        pts.append(np.c_[xy, local[:, 2] + b[2], rng.uniform(0, 1, per_box)])
    return np.concatenate(pts).astype(np.float32)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rotation=0.37),
        dict(rotation=-2.9),
        dict(scale=1.05),
        dict(translation=(0.3, -0.7, 0.2)),
        dict(flip_y=True),
        dict(flip_x=True),
        dict(rotation=0.3, scale=0.95, translation=(0.1, 0.2, -0.1), flip_y=True, flip_x=True),
    ],
)
def test_points_stay_in_their_boxes(kwargs):
    rng = np.random.default_rng(0)
    boxes_np = _random_boxes(rng)
    points = _points_around(rng, boxes_np)
    before = _points_in_boxes_numpy(points, boxes_np)
    assert 0 < before.sum() < before.size

    tfm = GlobalTransform3D(**kwargs)
    boxes = LiDARBoxes(torch.from_numpy(boxes_np.copy()))
    tfm.apply_boxes(boxes)
    moved = tfm.apply_points(points.copy())
    after = _points_in_boxes_numpy(moved, boxes.tensor.numpy().astype(np.float64))
    # Points close to a face may flip by float32 rounding; demand the same membership for all
    # points at least 1 mm from every face.
    margin = _points_in_boxes_numpy(points, _grow(boxes_np, 2e-3)) == _points_in_boxes_numpy(
        points, _grow(boxes_np, -2e-3)
    )
    assert np.array_equal(before[margin], after[margin])
    assert before.sum(0).tolist() == after.sum(0).tolist()
    # The package's own test agrees with the brute-force one.
    theirs = boxes.points_in_boxes(torch.from_numpy(moved)).numpy()
    assert np.array_equal(theirs[margin], after[margin])
    # The intensity column is untouched; yaw stays wrapped.
    np.testing.assert_array_equal(moved[:, 3], points[:, 3])
    yaw = boxes.yaw.numpy()
    assert (yaw >= -math.pi).all() and (yaw < math.pi).all()


def _grow(boxes, d):
    out = boxes.copy()
    out[:, 3:6] += 2 * d
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rotation=1.1),
        dict(scale=1.04),
        dict(flip_y=True),
        dict(flip_x=True),
        dict(rotation=-0.4, scale=0.97, translation=(1, 2, 0), flip_y=True),
    ],
)
def test_velocity_follows_motion(kwargs):
    """A box moving with v: transforming its centre after dt equals moving the transformed box
    with the transformed v for dt (v' = linear @ v, translation-free)."""
    rng = np.random.default_rng(1)
    boxes_np = _random_boxes(rng)
    dt = 0.5
    tfm = GlobalTransform3D(**kwargs)
    later = boxes_np[:, :3].copy()
    later[:, :2] += boxes_np[:, 7:9] * dt
    boxes = tfm.apply_boxes(LiDARBoxes(torch.from_numpy(boxes_np.copy())))
    later_moved = tfm.apply_points(later.copy())
    predicted = boxes.center.numpy().copy()
    predicted[:, :2] += boxes.velocity.numpy() * dt
    np.testing.assert_allclose(predicted, later_moved, atol=1e-4)
    np.testing.assert_allclose(
        boxes.velocity.numpy(), boxes_np[:, 7:9] @ tfm.linear[:2, :2].T, atol=1e-4
    )


def test_heading_follows_points():
    """The box heading is the image of its front point."""
    rng = np.random.default_rng(2)
    boxes_np = _random_boxes(rng)
    front = boxes_np[:, :3].copy()
    front[:, 0] += np.cos(boxes_np[:, 6]) * boxes_np[:, 3] / 2
    front[:, 1] += np.sin(boxes_np[:, 6]) * boxes_np[:, 3] / 2
    for kwargs in (dict(rotation=2.5, flip_y=True), dict(flip_x=True, scale=1.02)):
        tfm = GlobalTransform3D(**kwargs)
        boxes = tfm.apply_boxes(LiDARBoxes(torch.from_numpy(boxes_np.copy())))
        moved_front = tfm.apply_points(front.copy())
        t = boxes.tensor.numpy()
        expect = t[:, :2] + np.c_[np.cos(t[:, 6]), np.sin(t[:, 6])] * t[:, 3:4] / 2
        np.testing.assert_allclose(expect, moved_front[:, :2], atol=1e-4)


def test_point_functions_match_box_methods():
    rng = np.random.default_rng(3)
    pts = rng.normal(0, 10, (50, 4)).astype(np.float32)
    angle = 0.8
    r = rotation_matrix_z(angle)
    np.testing.assert_allclose(rotate_points(pts.copy(), angle)[:, :3], pts[:, :3] @ r.T, rtol=1e-5)
    np.testing.assert_allclose(scale_points(pts.copy(), 1.1)[:, :3], pts[:, :3] * 1.1, rtol=1e-6)
    np.testing.assert_allclose(
        translate_points(pts.copy(), [1, 2, 3])[:, :3], pts[:, :3] + [1, 2, 3], rtol=1e-6
    )
    flipped = flip_points(pts.copy(), "y")
    np.testing.assert_array_equal(flipped[:, 1], -pts[:, 1])
    np.testing.assert_array_equal(flipped[:, [0, 2, 3]], pts[:, [0, 2, 3]])
    # torch tensors are transformed in place as well
    t = torch.from_numpy(pts.copy())
    rotate_points(t, angle)
    np.testing.assert_allclose(t.numpy()[:, :3], pts[:, :3] @ r.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        flip_points(pts.copy(), "z")
    # A box centred at each point moves exactly like the point.
    boxes_np = np.c_[pts[:, :3], np.ones((50, 3)), np.zeros(50)].astype(np.float32)
    tfm = GlobalTransform3D(rotation=angle, scale=1.1, translation=(1, 2, 3), flip_y=True)
    boxes = tfm.apply_boxes(LiDARBoxes(torch.from_numpy(boxes_np)))
    np.testing.assert_allclose(
        boxes.center.numpy(), tfm.apply_points(pts.copy())[:, :3], rtol=1e-5, atol=1e-4
    )


def test_identity_and_composition():
    assert GlobalTransform3D().is_identity
    tfm = GlobalTransform3D(rotation=0.2, scale=2.0, translation=(1, 0, 0), flip_y=True)
    assert not tfm.is_identity
    p = np.array([[1.0, 0.0, 0.0]])
    # rotate -> scale -> translate -> flip y, by hand
    q = np.array([math.cos(0.2), math.sin(0.2), 0.0]) * 2.0 + [1, 0, 0]
    q[1] = -q[1]
    np.testing.assert_allclose(tfm.apply_points(p.copy())[0], q)


def test_random_transform_ranges_and_reproducibility():
    aug = RandomGlobalTransform3D(
        rotation_range=(-0.3925, 0.3925),
        scale_range=(0.95, 1.05),
        translation_std=(0.2, 0.2, 0.0),
        flip_y_prob=0.5,
        flip_x_prob=0.0,
    )
    draws = [aug(np.random.default_rng(i)) for i in range(400)]
    rot = np.array([d.rotation for d in draws])
    scale = np.array([d.scale for d in draws])
    trans = np.array([d.translation for d in draws])
    assert rot.min() >= -0.3925 and rot.max() <= 0.3925 and rot.std() > 0.15
    assert scale.min() >= 0.95 and scale.max() <= 1.05
    assert (trans[:, 2] == 0).all() and 0.15 < trans[:, 0].std() < 0.25
    flips = np.mean([d.flip_y for d in draws])
    assert 0.4 < flips < 0.6
    assert not any(d.flip_x for d in draws)
    a, b = aug(np.random.default_rng(7)), aug(np.random.default_rng(7))
    np.testing.assert_array_equal(a.linear, b.linear)


def test_from_config():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_pillars_config(cfg)
    aug = RandomGlobalTransform3D.from_config(cfg)
    assert aug.rotation_range == (-0.3925, 0.3925) and aug.flip_y_prob == 0.5
    cfg.INPUT.AUG.ENABLED = False
    assert RandomGlobalTransform3D.from_config(cfg) is None
