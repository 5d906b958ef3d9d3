"""The vectorised Lyft mAP against the Lyft SDK itself (and shapely for the geometry)."""

import numpy as np
import pytest
from lyft_dataset_sdk.eval.detection.mAP_evaluation import Box3D, get_average_precisions
from pyquaternion import Quaternion
from shapely.geometry import Polygon

from d2_pillars.evaluation.lyft_map import (
    LYFT_IOU_THRESHOLDS,
    convex_polygon_intersection_area,
    lyft_average_precisions,
    lyft_class_names,
    lyft_map,
    sdk_footprints,
)

CLASSES = ("car", "pedestrian", "truck")


def _box(rng, token, name, centre=None, tilt=0.0):
    centre = rng.uniform(-20, 20, 2) + [1500.0, 800.0] if centre is None else centre
    yaw = rng.uniform(-np.pi, np.pi)
    q = Quaternion(axis=[0, 0, 1], angle=yaw) * Quaternion(axis=[1, 0, 0], angle=tilt)
    return {
        "sample_token": token,
        "translation": [float(centre[0]), float(centre[1]), float(rng.uniform(-2, 2))],
        "size": rng.uniform(0.5, 5.0, 3).tolist(),
        "rotation": list(q.elements),
        "name": name,
    }


def random_scene(seed, num_samples=30, sigma=0.15):
    """Ground truth with tilted quaternions, noisy copies as predictions (some with a wrong
    class, some duplicated), random false positives, tied scores, empty samples."""
    rng = np.random.default_rng(seed)
    gt, pred = [], []
    for s in range(num_samples):
        token = f"sample{s:03d}"
        for _ in range(rng.integers(0, 15)):
            box = _box(rng, token, CLASSES[rng.integers(3)], tilt=rng.normal(0, 0.05))
            gt.append(box)
            for _ in range(rng.integers(0, 3)):
                yaw = Quaternion(box["rotation"]).yaw_pitch_roll[0] + rng.normal(0, 0.1)
                name = box["name"] if rng.random() < 0.9 else CLASSES[rng.integers(3)]
                pred.append(
                    {
                        "sample_token": token,
                        "translation": (
                            np.array(box["translation"]) + rng.normal(0, sigma, 3)
                        ).tolist(),
                        "size": (np.array(box["size"]) * rng.uniform(0.9, 1.1, 3)).tolist(),
                        "rotation": list(Quaternion(axis=[0, 0, 1], angle=yaw).elements),
                        "name": name,
                        "score": float(rng.random()),
                    }
                )
        for _ in range(rng.integers(0, 10)):
            box = _box(rng, token, CLASSES[rng.integers(3)])
            box["score"] = float(rng.random())
            pred.append(box)
    for i in range(0, len(pred) - 1, 7):  # ties: the SDK keeps the input order (stable sort)
        pred[i + 1]["score"] = pred[i]["score"]
    return gt, pred


def test_footprints_match_sdk_polygons():
    rng = np.random.default_rng(0)
    boxes = [_box(rng, "t", "car", tilt=rng.normal(0, 0.3)) for _ in range(50)]
    fp = sdk_footprints(
        np.array([b["translation"] for b in boxes]),
        np.array([b["size"] for b in boxes]),
        np.array([b["rotation"] for b in boxes]),
    )
    for b, corners in zip(boxes, fp):
        ref = np.array(Box3D(**b).ground_bbox_coords.exterior.coords)[:4]
        np.testing.assert_allclose(corners, ref, atol=1e-9)


def test_intersection_area_matches_shapely():
    rng = np.random.default_rng(1)
    n = 3000
    centres = rng.uniform(-2, 2, (2, n, 2)) + 1000.0
    sizes = rng.uniform(0.2, 5, (2, n, 3))
    yaws = rng.uniform(-np.pi, np.pi, (2, n))
    quats = np.stack([np.cos(yaws / 2), 0 * yaws, 0 * yaws, np.sin(yaws / 2)], -1)
    a = sdk_footprints(np.concatenate([centres[0], np.zeros((n, 1))], 1), sizes[0], quats[0])
    b = sdk_footprints(np.concatenate([centres[1], np.zeros((n, 1))], 1), sizes[1], quats[1])
    b[:50] = a[:50]  # identical boxes
    b[50:100] = a[50:100, ::-1]  # same box, opposite orientation
    b[100:150] = a[100:150] + [1e3, 0]  # far apart
    b[150:200] = a[150:200, [1, 2, 3, 0]]  # shared corners, rotated vertex order
    area = convex_polygon_intersection_area(a, b)
    ref = np.array([Polygon(p).intersection(Polygon(q)).area for p, q in zip(a, b)])
    assert (ref > 0).mean() > 0.5
    np.testing.assert_allclose(area, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed,sigma", [(0, 0.15), (2, 0.4)])
def test_fast_equals_sdk_on_random_data(seed, sigma):
    gt, pred = random_scene(seed, sigma=sigma)
    assert len(gt) > 150 and len(pred) > 300
    names = lyft_class_names(gt)
    assert names == sorted(CLASSES)
    sdk = lyft_average_precisions(gt, pred, names, method="sdk")
    fast = lyft_average_precisions(gt, pred, names, method="fast")
    assert sdk.shape == (3, 10)
    assert sdk.max() > 0.1  # non-trivial: matches happen at the low thresholds
    np.testing.assert_allclose(fast, sdk, rtol=0, atol=1e-6)
    # The SDK function itself, called directly at one threshold, gives the same row.
    direct = get_average_precisions(gt, pred, names, 0.5)
    np.testing.assert_allclose(fast[:, 0], direct, rtol=0, atol=1e-6)
    assert abs(lyft_map(gt, pred, method="fast")["mAP"] - sdk.mean()) <= 1e-6


def test_sdk_quirks_reproduced():
    """IoU exactly at a threshold is not a match; a prediction whose best box is taken is a
    false positive even when another box overlaps it; the footprint is mirrored."""
    base = {"sample_token": "s", "rotation": [1.0, 0.0, 0.0, 0.0], "name": "car"}
    gt = [
        dict(base, translation=[0.0, 0.0, 0.0], size=[2.0, 4.0, 1.0]),
        dict(base, translation=[0.5, 0.0, 0.0], size=[2.0, 4.0, 1.0]),
    ]
    # Same footprint as gt[0], twice its height around the same centre: IoU = 0.5 exactly.
    pred = [dict(base, translation=[0.0, 0.0, 0.0], size=[2.0, 4.0, 2.0], score=0.9)]
    for method in ("sdk", "fast"):
        ap = lyft_average_precisions(gt[:1], pred, ["car"], [0.45, 0.5], method=method)
        assert ap[0, 0] > 0.99 and ap[0, 1] == 0.0, method
    # Two predictions on gt[0]: the second is an FP although gt[1] overlaps it (IoU 0.78).
    pred = [
        dict(base, translation=[0.0, 0.0, 0.0], size=[2.0, 4.0, 1.0], score=0.9),
        dict(base, translation=[0.1, 0.0, 0.0], size=[2.0, 4.0, 1.0], score=0.8),
    ]
    aps = {m: lyft_average_precisions(gt, pred, ["car"], [0.5], method=m) for m in ("sdk", "fast")}
    assert aps["sdk"][0, 0] == pytest.approx(0.5) and aps["fast"][0, 0] == pytest.approx(0.5)
    # Mirror: a yaw of +30 deg and a truly identical box at -30 deg are matched differently.
    q = list(Quaternion(axis=[0, 0, 1], degrees=30).elements)
    g = [dict(base, translation=[10.0, 5.0, 0.0], size=[1.0, 4.0, 1.0], rotation=q)]
    fp = sdk_footprints(np.array([g[0]["translation"]]), np.array([g[0]["size"]]), np.array([q]))
    heading = fp[0, 0] - fp[0, 3]  # along +l
    assert np.degrees(np.arctan2(heading[1], heading[0])) == pytest.approx(-30.0)


def test_class_names_must_come_from_gt():
    gt, pred = random_scene(3, num_samples=5)
    with pytest.raises(ValueError, match="no ground truth"):
        lyft_average_precisions(gt, pred, ["car", "animal"], method="fast")
    # Predictions of a class without ground truth are ignored, as by the SDK.
    extra = pred + [dict(pred[0], name="animal")]
    names = lyft_class_names(gt)
    np.testing.assert_array_equal(
        lyft_average_precisions(gt, extra, names, method="fast"),
        lyft_average_precisions(gt, pred, names, method="fast"),
    )


def test_auto_and_empty_predictions():
    gt, pred = random_scene(4, num_samples=4)
    names = lyft_class_names(gt)
    np.testing.assert_allclose(
        lyft_average_precisions(gt, pred, names, method="auto"),
        lyft_average_precisions(gt, pred, names, method="sdk"),
        atol=1e-6,
    )
    assert lyft_map(gt, [], method="fast")["mAP"] == 0.0
    assert lyft_map(gt, [], method="sdk")["mAP"] == 0.0
    assert len(LYFT_IOU_THRESHOLDS) == 10 and LYFT_IOU_THRESHOLDS[-1] == 0.95
    with pytest.raises(ValueError, match="method"):
        lyft_map(gt, pred, method="gpu")


def test_vectorised_get_ap_is_the_sdks():
    from lyft_dataset_sdk.eval.detection.mAP_evaluation import get_ap

    from d2_pillars.evaluation.lyft_map import sdk_get_ap

    rng = np.random.default_rng(5)
    for n in (1, 2, 17, 300):
        tp = np.cumsum(rng.random(n) < 0.5).astype(float)
        fp = np.cumsum(np.ones(n)) - tp
        recalls, precisions = tp / max(tp[-1], 1.0) * 0.8, tp / np.maximum(tp + fp, 1e-16)
        assert sdk_get_ap(recalls, precisions.copy()) == get_ap(recalls, precisions.copy())
