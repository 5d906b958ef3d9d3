import math
import numpy as np
import pytest
import torch
from lyft_dataset_sdk.utils.data_classes import Box as LyftBox
from nuscenes.eval.common.utils import quaternion_yaw
from nuscenes.utils.data_classes import Box as NuScenesBox
from pyquaternion import Quaternion

from d2_pillars.structures import BOX_CONVENTION_VERSION, LiDARBoxes

# Our corner k is the devkit's corner DEVKIT_ORDER[k] (devkit: 4 front corners, then 4 rear).
DEVKIT_ORDER = [3, 7, 6, 2, 0, 4, 5, 1]


def random_boxes(seed, n=20, velocity=True, span=40.0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.cat(
        [
            (torch.rand(n, 2, generator=gen) - 0.5) * span,
            torch.rand(n, 1, generator=gen) * 4 - 3,
            torch.rand(n, 3, generator=gen) * 4 + 0.3,
            (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi,
        ],
        dim=1,
    )
    if velocity:
        t = torch.cat([t, torch.randn(n, 2, generator=gen) * 5], dim=1)
    return LiDARBoxes(t)


def devkit_boxes(boxes, box_class=NuScenesBox):
    """Devkit boxes built directly from the convention (independent of to_devkit_boxes)."""
    out = []
    for row in boxes.tensor.double().numpy():
        velocity = (row[7], row[8], 0.0) if row.shape[0] == 9 else (np.nan,) * 3
        out.append(
            box_class(
                center=row[0:3],
                size=[row[4], row[3], row[5]],
                orientation=Quaternion(axis=[0, 0, 1], radians=row[6]),
                velocity=velocity,
            )
        )
    return out


def angle_diff(a, b):
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.abs((d + np.pi) % (2 * np.pi) - np.pi)


def assert_same_point_sets(a, b, atol=1e-4):
    """(N, 8, 3) corners equal as unordered sets per box."""
    d = torch.cdist(a.double(), b.double())  # (N, 8, 8)
    assert d.min(dim=2).values.max() < atol
    assert d.min(dim=1).values.max() < atol


def test_convention_version():
    assert BOX_CONVENTION_VERSION == 1


def test_container_protocol():
    boxes = random_boxes(0, 6)
    assert len(boxes) == 6 and boxes.has_velocity and boxes.velocity.shape == (6, 2)
    assert torch.equal(boxes[2].tensor, boxes.tensor[2:3])
    assert len(boxes[boxes.tensor[:, 0] > 0]) == int((boxes.tensor[:, 0] > 0).sum())
    clone = boxes.clone()
    clone.tensor[0, 0] += 1
    assert clone.tensor[0, 0] != boxes.tensor[0, 0]
    cat = LiDARBoxes.cat([boxes, boxes[:2]])
    assert len(cat) == 8 and torch.equal(cat.tensor[6:], boxes.tensor[:2])
    assert boxes.to("cpu").device.type == "cpu"
    b7 = random_boxes(0, 3, velocity=False)
    assert not b7.has_velocity and b7.velocity is None
    assert LiDARBoxes(torch.zeros(0, 9)).tensor.shape == (0, 9)
    with pytest.raises(ValueError):
        LiDARBoxes(torch.zeros(3, 8))
    assert torch.equal(boxes.center, boxes.tensor[:, :3])
    assert torch.equal(boxes.dims, boxes.tensor[:, 3:6])
    assert torch.equal(boxes.yaw, boxes.tensor[:, 6])
    bottom = boxes.bottom_center
    assert torch.allclose(bottom[:, 2], boxes.tensor[:, 2] - boxes.tensor[:, 5] / 2)
    assert torch.equal(bottom[:, :2], boxes.tensor[:, :2])


def test_corners_match_devkit_corners():
    boxes = random_boxes(1, 30)
    ours = boxes.corners()
    assert ours.shape == (30, 8, 3)
    ref = np.stack([b.corners().T[DEVKIT_ORDER] for b in devkit_boxes(boxes)])
    np.testing.assert_allclose(ours.double().numpy(), ref, atol=1e-5)
    # Bottom face then top face; counter-clockwise seen from above; corner 0 at (+l/2, +w/2).
    z = ours[..., 2]
    assert torch.all(z[:, :4] < z[:, 4:])
    xy = ours[:, :4, :2].double()
    signed = 0.5 * (xy[..., 0] * xy.roll(-1, 1)[..., 1] - xy.roll(-1, 1)[..., 0] * xy[..., 1]).sum(
        1
    )
    assert torch.all(signed > 0)
    lw = boxes.dims[:, 0:2].double()
    assert torch.allclose(signed, lw[:, 0] * lw[:, 1], rtol=1e-5)


def test_bev_and_nearest_bev():
    boxes = random_boxes(2, 200, velocity=False)
    # Stay away from the 45-degree ties of nearest_bev.
    yaw = boxes.tensor[:, 6].double()
    quarter = torch.remainder(yaw, math.pi / 2)
    boxes = boxes[(quarter - math.pi / 4).abs() > 1e-3]
    bev = boxes.bev()
    assert torch.equal(bev, boxes.tensor[:, [0, 1, 3, 4, 6]])
    # Reference: snap yaw to the nearest multiple of pi/2 and take the axis-aligned bounding box.
    t = boxes.tensor.double().numpy()
    snapped = np.round(t[:, 6] / (np.pi / 2)) * (np.pi / 2)
    c, s = np.abs(np.cos(snapped)), np.abs(np.sin(snapped))
    ext_x = c * t[:, 3] + s * t[:, 4]
    ext_y = s * t[:, 3] + c * t[:, 4]
    ref = np.stack(
        [t[:, 0] - ext_x / 2, t[:, 1] - ext_y / 2, t[:, 0] + ext_x / 2, t[:, 1] + ext_y / 2], 1
    )
    np.testing.assert_allclose(boxes.nearest_bev().double().numpy(), ref, atol=1e-5)


def test_rotate_matches_rotating_corners_and_velocity():
    boxes = random_boxes(3)
    before = boxes.clone()
    angle = 0.7
    out = boxes.rotate(angle)
    assert out is boxes
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    expected = before.corners().clone()
    expected[..., :2] = expected[..., :2] @ rot.T
    assert torch.allclose(boxes.corners(), expected, atol=1e-4)
    assert torch.allclose(boxes.velocity, before.velocity @ rot.T, atol=1e-5)
    assert torch.all(boxes.yaw >= -math.pi) and torch.all(boxes.yaw < math.pi)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_flip_matches_mirroring_corners_and_velocity(axis):
    boxes = random_boxes(4)
    before = boxes.clone()
    boxes.flip(axis)
    k = 0 if axis == "x" else 1
    mirrored = before.corners().clone()
    mirrored[..., k] = -mirrored[..., k]
    assert_same_point_sets(boxes.corners(), mirrored)
    expected_v = before.velocity.clone()
    expected_v[:, k] = -expected_v[:, k]
    assert torch.allclose(boxes.velocity, expected_v)
    assert torch.all(boxes.yaw >= -math.pi) and torch.all(boxes.yaw < math.pi)
    # The heading vector is mirrored too (not only the rectangle).
    heading = torch.stack([torch.cos(before.yaw), torch.sin(before.yaw)], 1)
    heading[:, k] = -heading[:, k]
    assert torch.allclose(
        torch.stack([torch.cos(boxes.yaw), torch.sin(boxes.yaw)], 1), heading, atol=1e-6
    )
    with pytest.raises(ValueError):
        boxes.flip("z")


def test_scale_and_translate():
    boxes = random_boxes(5)
    before = boxes.clone()
    boxes.scale(1.05)
    assert torch.allclose(boxes.corners(), before.corners() * 1.05, atol=1e-4)
    assert torch.allclose(boxes.velocity, before.velocity * 1.05)
    assert torch.equal(boxes.yaw, before.yaw)
    before = boxes.clone()
    offset = torch.tensor([1.0, -2.0, 0.5])
    boxes.translate(offset)
    assert torch.allclose(boxes.corners(), before.corners() + offset, atol=1e-5)
    assert torch.equal(boxes.velocity, before.velocity)


def random_rigid(seed, roll_pitch=0.1):
    gen = np.random.default_rng(seed)
    q = (
        Quaternion(axis=[0, 0, 1], radians=gen.uniform(-np.pi, np.pi))
        * Quaternion(axis=[0, 1, 0], radians=gen.uniform(-roll_pitch, roll_pitch))
        * Quaternion(axis=[1, 0, 0], radians=gen.uniform(-roll_pitch, roll_pitch))
    )
    m = np.eye(4)
    m[:3, :3] = q.rotation_matrix
    m[:3, 3] = gen.uniform(-30, 30, size=3)
    return m, q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transform_matches_devkit_box(seed):
    boxes = random_boxes(10 + seed, span=30.0)
    matrix, q = random_rigid(seed)
    out = boxes.transform(matrix)
    assert isinstance(out, LiDARBoxes) and out is not boxes
    ref = devkit_boxes(boxes)
    for b in ref:
        b.rotate(q)
        b.translate(matrix[:3, 3])
    t = out.tensor.double().numpy()
    np.testing.assert_allclose(t[:, 0:3], np.stack([b.center for b in ref]), atol=1e-5)
    np.testing.assert_allclose(t[:, [4, 3, 5]], np.stack([b.wlh for b in ref]), atol=1e-6)
    assert angle_diff(t[:, 6], [quaternion_yaw(b.orientation) for b in ref]).max() < 1e-5
    np.testing.assert_allclose(t[:, 7:9], np.stack([b.velocity[:2] for b in ref]), atol=1e-5)
    assert np.all(t[:, 6] >= -np.pi) and np.all(t[:, 6] < np.pi)
    # The inverse transform brings the centres back (yaw and velocity only without roll/pitch:
    # a tilted box is stored by the heading of its projected x axis, which loses the tilt).
    back = out.transform(np.linalg.inv(matrix))
    np.testing.assert_allclose(back.tensor[:, :6].numpy(), boxes.tensor[:, :6].numpy(), atol=1e-4)


def test_transform_round_trip_without_tilt():
    boxes = random_boxes(13, span=30.0)
    matrix, _ = random_rigid(5, roll_pitch=0.0)
    back = boxes.transform(matrix).transform(np.linalg.inv(matrix))
    np.testing.assert_allclose(back.tensor[:, :6].numpy(), boxes.tensor[:, :6].numpy(), atol=1e-4)
    assert angle_diff(back.yaw.numpy(), boxes.yaw.numpy()).max() < 1e-5
    np.testing.assert_allclose(back.velocity.numpy(), boxes.velocity.numpy(), atol=1e-4)


@pytest.mark.parametrize("box_class", [NuScenesBox, LyftBox])
def test_devkit_round_trip(box_class):
    boxes = random_boxes(20)
    names = [f"c{i}" for i in range(len(boxes))]
    scores = np.linspace(0.1, 0.9, len(boxes))
    dk = boxes.to_devkit_boxes(names=names, scores=scores, box_class=box_class)
    assert all(isinstance(b, box_class) for b in dk)
    ref = devkit_boxes(boxes, box_class)
    for ours, theirs, name, score in zip(dk, ref, names, scores):
        np.testing.assert_allclose(ours.center, theirs.center, atol=1e-6)
        np.testing.assert_allclose(ours.wlh, theirs.wlh, atol=1e-6)
        np.testing.assert_allclose(ours.corners(), theirs.corners(), atol=1e-5)
        np.testing.assert_allclose(ours.velocity[:2], theirs.velocity[:2], atol=1e-6)
        assert ours.name == name and ours.score == pytest.approx(score)
    back = LiDARBoxes.from_devkit_boxes(dk, with_velocity=True)
    assert torch.allclose(back.tensor, boxes.tensor, atol=1e-5)
    back7 = LiDARBoxes.from_devkit_boxes(dk)
    assert back7.tensor.shape[1] == 7 and torch.allclose(
        back7.tensor, boxes.tensor[:, :7], atol=1e-5
    )


def test_points_in_boxes_matches_bruteforce():
    boxes = random_boxes(6, 15, span=10.0)
    gen = np.random.default_rng(0)
    pts = np.concatenate([gen.uniform(-6, 6, (3000, 3)), boxes.center.numpy()]).astype(np.float32)
    pts[:, 2] = np.clip(pts[:, 2], -4, 2)
    inside = boxes.points_in_boxes(torch.from_numpy(pts))
    assert inside.shape == (len(pts), len(boxes)) and inside.dtype == torch.bool
    t = boxes.tensor.double().numpy()
    p = pts.astype(np.float64)
    for k in range(len(boxes)):
        d = p - t[k, 0:3]
        c, s = np.cos(t[k, 6]), np.sin(t[k, 6])
        local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
        margin = np.abs(local) - t[k, 3:6] / 2  # <= 0 inside on each axis
        ref = np.all(margin <= 0, axis=1)
        clear = np.abs(margin).min(axis=1) > 1e-4  # skip points on a face (float ties)
        np.testing.assert_array_equal(inside[:, k].numpy()[clear], ref[clear])
        assert inside[len(pts) - len(boxes) + k, k]  # the centre is inside
    assert inside.any(dim=1).sum() > 50


def test_wrap_yaw_range_and_congruence():
    yaws = torch.cat(
        [
            torch.linspace(-12.0, 12.0, 2001),
            torch.tensor([math.pi, -math.pi, 3 * math.pi, -3 * math.pi, 0.0, 2 * math.pi]),
            torch.tensor([math.pi]).nextafter(torch.tensor([0.0])),
            torch.tensor([-math.pi]).nextafter(torch.tensor([0.0])),
            torch.tensor([math.pi]).nextafter(torch.tensor([4.0])),
            torch.tensor([-math.pi]).nextafter(torch.tensor([-4.0])),
        ]
    )
    t = torch.zeros(len(yaws), 7)
    t[:, 3:6] = 1
    t[:, 6] = yaws
    wrapped = LiDARBoxes(t).wrap_yaw().yaw
    pi32 = torch.tensor(math.pi, dtype=torch.float32)
    # In float32, [-pi, pi) means [-float32(pi), float32(pi)): float32(pi) > pi is the only
    # representable neighbourhood of +-pi, and exactly one of +-float32(pi) may be returned.
    assert torch.all(wrapped >= -pi32), wrapped[wrapped < -pi32]
    assert torch.all(wrapped < pi32), (yaws[wrapped >= pi32], wrapped[wrapped >= pi32])
    assert angle_diff(wrapped.numpy(), yaws.numpy()).max() < 1e-5


def test_d2_rotated_round_trip():
    boxes = random_boxes(7, velocity=False)
    d2 = boxes.to_d2_rotated()
    assert torch.allclose(d2[:, 2:4], boxes.dims[:, :2])
    assert torch.allclose(d2[:, 4], torch.rad2deg(boxes.yaw))
    back = LiDARBoxes.from_d2_rotated(d2, boxes.tensor[:, 2], boxes.tensor[:, 5])
    assert torch.allclose(back.tensor, boxes.tensor, atol=1e-5)


def test_in_range_bev_is_strict():
    t = torch.zeros(4, 7)
    t[:, 3:6] = 1
    t[:, 0] = torch.tensor([0.0, 50.0, -50.0, 49.9])
    inside = LiDARBoxes(t).in_range_bev([-50, -50, -5, 50, 50, 3])
    assert inside.tolist() == [True, False, False, True]


def global_records(seed, n=12, tilt=0.0):
    gen = np.random.default_rng(seed)
    quats = [
        Quaternion(axis=[0, 0, 1], radians=gen.uniform(-np.pi, np.pi))
        * Quaternion(axis=[1, 0, 0], radians=gen.uniform(-tilt, tilt))
        for _ in range(n)
    ]
    return {
        "translation": gen.uniform(-40, 40, (n, 3)),
        "size": gen.uniform(0.5, 5, (n, 3)),
        "rotation": np.array([q.elements for q in quats]),
        "velocity": gen.normal(size=(n, 2)) * 3,
    }


@pytest.mark.parametrize("tilt", [0.0, 0.05])
def test_from_global_records_matches_devkit(tilt):
    rec = global_records(30, tilt=tilt)
    matrix, q = random_rigid(8)
    out = LiDARBoxes.from_global_records(
        rec["translation"], rec["size"], rec["rotation"], rec["velocity"], global_to_frame=matrix
    )
    t = out.tensor.double().numpy()
    for k in range(len(out)):
        v = rec["velocity"][k]
        box = NuScenesBox(
            rec["translation"][k],
            rec["size"][k],
            Quaternion(rec["rotation"][k]),
            velocity=(v[0], v[1], 0.0),
        )
        box.rotate(q)
        box.translate(matrix[:3, 3])
        np.testing.assert_allclose(t[k, 0:3], box.center, atol=1e-5)
        np.testing.assert_allclose(t[k, [4, 3, 5]], box.wlh, atol=1e-6)
        # A tilted global box is reduced to its yaw before the frame change: exact for yaw-only
        # annotations (nuScenes, Lyft), second order in the tilt otherwise.
        tol = 1e-5 if tilt == 0 else 5e-3
        assert angle_diff(t[k, 6], quaternion_yaw(box.orientation)) < tol
        np.testing.assert_allclose(t[k, 7:9], box.velocity[:2], atol=1e-5 if tilt == 0 else 5e-2)


def test_global_records_round_trip():
    rec = global_records(31)
    boxes = LiDARBoxes.from_global_records(
        rec["translation"], rec["size"], rec["rotation"], rec["velocity"]
    )
    out = boxes.to_global_records()
    np.testing.assert_allclose(out["translation"], rec["translation"], atol=1e-5)
    np.testing.assert_allclose(out["size"], rec["size"], atol=1e-6)
    np.testing.assert_allclose(out["velocity"], rec["velocity"], atol=1e-6)
    # q and -q are the same rotation.
    dots = np.abs(np.sum(out["rotation"] * rec["rotation"], axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-6)
    matrix, _ = random_rigid(9, roll_pitch=0.0)
    moved = boxes.to_global_records(frame_to_global=matrix)
    np.testing.assert_allclose(
        moved["translation"], boxes.transform(matrix).tensor[:, :3].numpy(), atol=1e-6
    )
