"""The synthetic nuScenes / Lyft writer, checked with the official devkits and brute-force geometry.

Small datasets (2 scenes x 4 keyframes, few beams) keep this fast; one test generates a single
full-size nuScenes frame (10 sweeps) to check the point count.
"""

import dataclasses
import glob
import json
import math
import numpy as np
import os
import runpy
import sys
import pytest
import shapely
from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.utils import (
    category_to_detection_name,
    detection_name_to_rel_attributes,
)
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

from d2_pillars.synthetic import (
    GENERATOR_VERSION,
    MARKER_NAME,
    make_synthetic_dataset,
    make_synthetic_lyft,
    make_synthetic_nuscenes,
)
from d2_pillars.synthetic.geometry import quaternion_from_ypr, quaternion_to_matrix
from d2_pillars.synthetic.lidar import LidarSimulator, LidarSpec, box_corners
from d2_pillars.synthetic.lyft_format import LYFT_FORMAT
from d2_pillars.synthetic.nuscenes_format import NUSCENES_FORMAT
from d2_pillars.synthetic.world import KIND_NAMES, OBJECT_KINDS, build_world

SMALL = dict(num_scenes=2, keyframes_per_scene=4, seed=0, num_beams=32, azimuth_steps=360)
LOW_RES = dict(SMALL, num_beams=8, azimuth_steps=256)  # as in the evaluation tests
DETECTION_CLASSES = {
    "car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle",
    "bicycle", "traffic_cone", "barrier",
}  # fmt: skip
SAMPLES = os.environ.get("D2_PILLARS_SAMPLES", "/work/shared/data/samples")
LYFT_SAMPLE_TABLES = os.path.join(SAMPLES, "lyft", "v1.01-train", "v1.01-train")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def nus_root(tmp_path_factory):
    return make_synthetic_nuscenes(str(tmp_path_factory.mktemp("synth_nus")), **SMALL)


@pytest.fixture(scope="module")
def nusc(nus_root):
    return NuScenes(version="v1.0-mini", dataroot=nus_root, verbose=False)


@pytest.fixture(scope="module")
def lyft_root(tmp_path_factory):
    return make_synthetic_lyft(str(tmp_path_factory.mktemp("synth_lyft")), **SMALL)


def _global_points(sdk, sd_token, cloud_cls=LidarPointCloud):
    """(3, N) points of a LiDAR sample_data in the global frame, the devkit way (float32)."""
    sd = sdk.get("sample_data", sd_token)
    pc = cloud_cls.from_file(sdk.get_sample_data_path(sd_token))
    cs = sdk.get("calibrated_sensor", sd["calibrated_sensor_token"])
    ep = sdk.get("ego_pose", sd["ego_pose_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pc.rotate(Quaternion(ep["rotation"]).rotation_matrix)
    pc.translate(np.array(ep["translation"]))
    return pc.points[:3].astype(np.float64)


def _aabb_sdf(local, lo, hi):
    """Signed distance (negative inside) of points (..., 3) to the axis-aligned box [lo, hi]."""
    q = np.abs(local - (lo + hi) / 2) - (hi - lo) / 2
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(axis=-1), 0)


def _shape_sdf(local, l, w, h, front_step=(0.0, 1.0)):
    """Signed distance (negative inside) of points (..., 3) in the box frame (x along ``l``
    towards the heading, z up, origin at the centre) to an object's shape, brute force: the box
    less the part above ``g * h`` of its front ``f * l`` (``front_step = (f, g)``)."""
    f, g = front_step
    half = np.array([l, w, h]) / 2
    if f == 0 or g == 1:
        return _aabb_sdf(local, -half, half)
    cabin = _aabb_sdf(local, -half, half - [f * l, 0, 0])
    hood = _aabb_sdf(local, np.array([half[0] - f * l, -half[1], -half[2]]),
                     np.array([half[0], half[1], g * h - half[2]]))  # fmt: skip
    return np.minimum(cabin, hood)


def _kind_of(category, wlh):
    """The object kind an annotation was generated from: of the kinds its category may come from
    (Lyft's other_vehicle: trailer or construction vehicle), the one closest in size."""
    kinds = [k for spec in (NUSCENES_FORMAT, LYFT_FORMAT)
             for k, cats in spec.kind_categories.items() if category in cats]  # fmt: skip
    return OBJECT_KINDS[
        min(kinds, key=lambda k: np.abs(np.subtract(OBJECT_KINDS[k].wlh, wlh)).sum())
    ]


def _box_sdf(points, box, front_step=(0.0, 1.0)):
    """Signed distance (negative inside) of points (3, N) to the shape of a devkit Box (the whole
    box unless a ``front_step`` is given), brute force."""
    local = box.rotation_matrix.T @ (points - box.center[:, None])
    return _shape_sdf(local.T, box.wlh[1], box.wlh[0], box.wlh[2], front_step)


def _surface_fraction(points, box, ground_z, others=(), tol=0.08):
    """Fraction of the non-ground points within 0.5 m of ``box`` that lie within ``tol`` of the
    shape of its object (``box.name`` is the category); points on ``others`` (boxes of the
    neighbours, e.g. a passing cyclist) do not count."""
    sdf = _box_sdf(points, box, _kind_of(box.name, box.wlh).front_step)
    shell = (np.abs(sdf) < 0.5) & (points[2] > ground_z + 0.2)
    for other in others:
        if other.token != box.token:
            shell &= _box_sdf(points, other) > 0.15
    return (np.abs(sdf[shell]) < tol).mean() if shell.any() else float("nan"), shell.sum()


def _attribute_names(sdk, ann):
    return [sdk.get("attribute", t)["name"] for t in ann["attribute_tokens"]]


# ------------------------------------------------------------------------------------------- #
# nuScenes
# ------------------------------------------------------------------------------------------- #
def test_nuscenes_devkit_loads(nusc, nus_root):
    assert len(nusc.scene) == 2 and len(nusc.sample) == 8
    assert len(nusc.sample_data) == 2 * (4 + 3 * 9)  # keyframes + 9 sweeps per interval
    for table in ("category", "attribute", "visibility", "sensor", "map", "log"):
        assert len(getattr(nusc, table)) > 0
    for rec in nusc.map:
        assert os.path.isfile(os.path.join(nus_root, rec["filename"]))
        assert len(rec["token"]) == 32
    sample = nusc.sample[1]
    path, boxes, intrinsic = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    assert os.path.isfile(path) and path.endswith(".pcd.bin") and "/samples/LIDAR_TOP/" in path
    assert intrinsic is None and len(boxes) == len(sample["anns"]) > 0
    points = np.fromfile(path, np.float32).reshape(-1, 5)
    assert np.all(points[:, 4] == np.round(points[:, 4]))
    assert points[:, 4].min() == 0 and points[:, 4].max() < SMALL["num_beams"]
    assert np.all(points[:, 3] == np.round(points[:, 3])) and 0 <= points[:, 3].min()
    assert points[:, 3].max() <= 255
    # Every token is 32 hex characters (visibility: "1".."4").
    for rec in nusc.sample_annotation[:50]:
        assert all(len(rec[k]) == 32 for k in ("token", "sample_token", "instance_token"))
        int(rec["token"], 16)
        assert rec["visibility_token"] in {"1", "2", "3", "4"}
    assert all(isinstance(s["timestamp"], int) for s in nusc.sample)


def test_nuscenes_scene_names_are_the_mini_splits(nusc, tmp_path):
    splits = create_splits_scenes()
    names = {s["name"] for s in nusc.scene}
    assert len(names & set(splits["mini_val"])) == 1
    assert len(names & set(splits["mini_train"])) == 1
    # 10 scenes: all of mini.
    with pytest.raises(ValueError, match="v1.0-trainval"):
        make_synthetic_nuscenes(str(tmp_path / "eleven"), num_scenes=11)
    assert not (tmp_path / "eleven").exists()  # checked before anything is written


def test_sweeps_chain_to_the_next_keyframe(nusc):
    for scene in nusc.scene:
        samples = [nusc.get("sample", scene["first_sample_token"])]
        while samples[-1]["next"]:
            samples.append(nusc.get("sample", samples[-1]["next"]))
        assert len(samples) == scene["nbr_samples"] == 4
        first_sd = nusc.get("sample_data", samples[0]["data"]["LIDAR_TOP"])
        assert first_sd["prev"] == ""  # the first keyframe has no previous sweeps
        for prev, cur in zip(samples, samples[1:]):
            sd = nusc.get("sample_data", cur["data"]["LIDAR_TOP"])
            assert sd["timestamp"] == cur["timestamp"]
            sweeps = []
            while True:
                sd = nusc.get("sample_data", sd["prev"])
                if sd["is_key_frame"]:
                    break
                sweeps.append(sd)
            assert sd["token"] == prev["data"]["LIDAR_TOP"]
            assert len(sweeps) == 9
            assert all(s["sample_token"] == cur["token"] for s in sweeps)  # the NEXT keyframe
            assert all("/sweeps/LIDAR_TOP/" in "/" + s["filename"] for s in sweeps)
            times = [cur["timestamp"]] + [s["timestamp"] for s in sweeps] + [prev["timestamp"]]
            assert np.all(np.diff(times) < 0)
            assert np.allclose(-np.diff(times), 50_000, atol=1_500)  # 20 Hz
            # Each sweep has its own ego pose (the ego moves or at least the pose record differs).
            assert len({s["ego_pose_token"] for s in sweeps}) == 9


def test_annotation_chains_and_velocity(nusc):
    for inst in nusc.instance:
        chain = [nusc.get("sample_annotation", inst["first_annotation_token"])]
        while chain[-1]["next"]:
            chain.append(nusc.get("sample_annotation", chain[-1]["next"]))
        assert len(chain) == inst["nbr_annotations"]
        assert chain[-1]["token"] == inst["last_annotation_token"]
        samples = [nusc.get("sample", a["sample_token"]) for a in chain]
        assert all(b["prev"] == a["token"] for a, b in zip(samples, samples[1:]))
    speeds = {"vehicle.parked": [], "vehicle.moving": [], "pedestrian.moving": []}
    for ann in nusc.sample_annotation:
        names = _attribute_names(nusc, ann)
        if names and names[0] in speeds and (ann["prev"] or ann["next"]):
            speeds[names[0]].append(np.linalg.norm(nusc.box_velocity(ann["token"])[:2]))
    assert max(speeds["vehicle.parked"]) < 1e-6
    assert min(speeds["vehicle.moving"]) > 1.0 and max(speeds["vehicle.moving"]) < 20.0
    assert 0.5 < np.median(speeds["pedestrian.moving"]) < 2.5


def test_num_lidar_pts_is_the_devkit_count(nusc):
    counted = 0
    for sample in nusc.sample:
        points = _global_points(nusc, sample["data"]["LIDAR_TOP"])
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            box = nusc.get_box(token)
            # The devkit decides; only points in the bounding sphere can be inside.
            near = np.linalg.norm(points - box.center[:, None], axis=0) < np.linalg.norm(box.wlh)
            n = int(points_in_box(box, points[:, near]).sum())
            assert n == ann["num_lidar_pts"], (ann["category_name"], n, ann["num_lidar_pts"])
            assert ann["num_radar_pts"] == 0
            counted += n > 0
    assert counted >= 20


def _parked_annotations(sdk, min_points):
    return [
        a
        for a in sdk.sample_annotation
        if a["num_lidar_pts"] >= min_points and _attribute_names(sdk, a) == ["vehicle.parked"]
    ]


def test_static_objects_land_on_their_boxes_in_keyframes_and_sweeps(nusc):
    parked = _parked_annotations(nusc, 15)
    assert len(parked) >= 3
    for ann in parked[:6]:
        box = nusc.get_box(ann["token"])
        ground = box.center[2] - box.wlh[2] / 2
        sample = nusc.get("sample", ann["sample_token"])
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        points = _global_points(nusc, sd["token"])
        assert points_in_box(box, points).sum() > 0
        frac, n = _surface_fraction(points, box, ground, nusc.get_boxes(sd["token"]))
        assert n >= 15 and frac > 0.97, (frac, n)
        # The previous sweep (own ego pose and time): a static box stays where it is.
        if sd["prev"]:
            others = nusc.get_boxes(sd["prev"])  # interpolated to the sweep's time
            frac, n = _surface_fraction(_global_points(nusc, sd["prev"]), box, ground, others)
            assert n == 0 or frac > 0.97, (frac, n)


def test_moving_objects_follow_the_devkit_interpolation_in_sweeps(nusc):
    checked = 0
    for sample in nusc.sample:
        if not sample["prev"]:
            continue
        sd = nusc.get("sample_data", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["prev"])
        assert not sd["is_key_frame"]
        points = _global_points(nusc, sd["token"])
        boxes = nusc.get_boxes(sd["token"])  # interpolated to the sweep's time
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            if ann["num_lidar_pts"] < 40 or _attribute_names(nusc, ann) != ["vehicle.moving"]:
                continue
            if np.linalg.norm(nusc.box_velocity(box.token)[:2]) < 3.0:
                continue
            ground = box.center[2] - box.wlh[2] / 2
            frac, n = _surface_fraction(points, box, ground, boxes, tol=0.12)
            if n >= 20:
                assert frac > 0.9, (frac, n)
                checked += 1
    assert checked >= 1


def test_categories_and_attributes_follow_the_detection_rules(nusc):
    table = {c["name"] for c in nusc.category}
    assert DETECTION_CLASSES <= {category_to_detection_name(n) for n in table}
    for ann in nusc.sample_annotation:
        name = category_to_detection_name(ann["category_name"])
        attrs = _attribute_names(nusc, ann)
        if name is None:
            continue
        if name in ("barrier", "traffic_cone"):
            assert attrs == []
        else:
            assert len(attrs) == 1 and attrs[0] in detection_name_to_rel_attributes(name)
        if name == "barrier":
            assert ann["size"][0] > 3 * ann["size"][1]  # long side is w
        q = np.array(ann["rotation"])
        assert abs(np.linalg.norm(q) - 1) < 1e-9 and np.all(q[1:3] == 0)
    assert any(a["rotation"][0] < 0 for a in nusc.sample_annotation)  # q and -q both occur


def test_every_detection_class_and_lyft_class_is_generated():
    kinds = set()
    for seed in range(3):
        world = build_world(np.random.default_rng(seed), NUSCENES_FORMAT.world, 19.5, (0, 0), 80.0)
        kinds |= {KIND_NAMES[k] for k in np.unique(world.kind)}
    names = {
        category_to_detection_name(c)
        for k in kinds
        for c in NUSCENES_FORMAT.kind_categories.get(k, {})
    }
    assert DETECTION_CLASSES <= names
    kinds = set()
    for seed in range(3):
        world = build_world(np.random.default_rng(seed), LYFT_FORMAT.world, 7.8, (0, 0), 100.0)
        kinds |= {KIND_NAMES[k] for k in np.unique(world.kind[world.annotated])}
    lyft = {c for k in kinds for c in LYFT_FORMAT.kind_categories[k]}
    assert lyft == {n for n, _ in LYFT_FORMAT.categories}


def _scene_samples(sdk, scene):
    samples = [sdk.get("sample", scene["first_sample_token"])]
    while samples[-1]["next"]:
        samples.append(sdk.get("sample", samples[-1]["next"]))
    return samples


def test_every_detection_class_has_points_near_the_ego_in_every_scene(tmp_path):
    """Even with 8 beams, each scene's 4 keyframes hold every detection class with points inside
    the devkit's evaluation range; the counts are the devkit's."""
    class_range = config_factory("detection_cvpr_2019").class_range
    root = make_synthetic_nuscenes(str(tmp_path), **LOW_RES)
    nusc = NuScenes(version="v1.0-mini", dataroot=root, verbose=False)
    for scene in nusc.scene:
        seen = {}
        for sample in _scene_samples(nusc, scene):
            sd_token = sample["data"]["LIDAR_TOP"]
            ego = nusc.get("ego_pose", nusc.get("sample_data", sd_token)["ego_pose_token"])
            points = _global_points(nusc, sd_token)
            for token in sample["anns"]:
                ann = nusc.get("sample_annotation", token)
                name = category_to_detection_name(ann["category_name"])
                dist = np.linalg.norm(np.subtract(ann["translation"], ego["translation"])[:2])
                if name in seen or not name or dist >= class_range[name]:
                    continue
                if ann["num_lidar_pts"] > 0:
                    seen[name] = ann["num_lidar_pts"]
                    count = int(points_in_box(nusc.get_box(token), points).sum())
                    assert count == ann["num_lidar_pts"], (name, count)
        assert set(seen) == DETECTION_CLASSES, (scene["name"], DETECTION_CLASSES - set(seen))


def test_every_lyft_class_has_points_near_the_ego_in_every_scene(tmp_path):
    from lyft_dataset_sdk.utils.data_classes import LidarPointCloud as LyftCloud
    from lyft_dataset_sdk.utils.geometry_utils import points_in_box as lyft_points_in_box

    ly = _lyft(make_synthetic_lyft(str(tmp_path), **LOW_RES))
    for scene in ly.scene:
        seen = set()
        for sample in _scene_samples(ly, scene):
            sd_token = sample["data"]["LIDAR_TOP"]
            ego = ly.get("ego_pose", ly.get("sample_data", sd_token)["ego_pose_token"])
            points = _global_points(ly, sd_token, LyftCloud)
            for token in sample["anns"]:
                box = ly.get_box(token)
                near = np.linalg.norm(box.center[:2] - np.array(ego["translation"][:2])) < 30.0
                if near and lyft_points_in_box(box, points).any():
                    seen.add(ly.get("sample_annotation", token)["category_name"])
        assert seen == {n for n, _ in LYFT_FORMAT.categories}, scene["name"]


@pytest.mark.parametrize(
    "spec, duration, max_range", [(NUSCENES_FORMAT, 19.5, 80.0), (LYFT_FORMAT, 7.8, 100.0)]
)
def test_guaranteed_kinds_beside_the_start_without_collisions(spec, duration, max_range):
    """Every guaranteed kind stands still beside the road within 30 m of the ego's start, and
    nothing overlaps the objects parked there at any time (brute force with shapely)."""
    for seed in range(4):
        world = build_world(np.random.default_rng(seed), spec.world, duration, (0, 0), max_range)
        centers, _ = world.boxes_at(0.0)
        ego = world.ego_pose([0.0])[0][0]
        still = world.speed == 0
        parked = still & (np.abs(world.lateral) > 8.0) & (np.abs(world.lateral) < 11.5)
        near = parked & (np.linalg.norm(centers[:, :2] - ego[:2], axis=1) < 30.0)
        assert {KIND_NAMES[k] for k in world.kind[near]} >= set(spec.world.guaranteed_kinds)
        # Sizes as everywhere else: within 2 standard deviations of the kind's mean.
        for i in np.flatnonzero(near):
            kind = OBJECT_KINDS[KIND_NAMES[world.kind[i]]]
            assert np.all(np.abs(world.wlh[i] - kind.wlh) <= 2 * np.array(kind.wlh_std) + 1e-3)
        check = np.flatnonzero(parked & (np.abs(world.s0) < 50.0))
        for t in np.linspace(0.0, duration, 7):
            centers, yaw = world.boxes_at(t)
            polygons = shapely.polygons(box_corners(centers, world.wlh, yaw)[:, :4, :2])
            tree = shapely.STRtree(polygons)
            for i in check:
                for j in tree.query(polygons[i], predicate="intersects"):
                    area = polygons[i].intersection(polygons[j]).area if j != i else 0.0
                    names = KIND_NAMES[world.kind[i]], KIND_NAMES[world.kind[j]]
                    assert area < 1e-6, (seed, t, names)


def test_full_size_frame_point_count(tmp_path):
    root = make_synthetic_nuscenes(str(tmp_path), num_scenes=1, keyframes_per_scene=2, seed=3)
    files = glob.glob(os.path.join(root, "s*", "LIDAR_TOP", "*.pcd.bin"))
    assert len(files) == 11
    with open(os.path.join(root, "v1.0-mini", "sample_data.json")) as f:
        records = json.load(f)
    frame = [r for r in records if r["sample_token"] == records[-1]["sample_token"]]
    assert len(frame) == 10  # keyframe + its 9 previous sweeps
    total = sum(os.path.getsize(os.path.join(root, r["filename"])) // 20 for r in frame)
    assert 300_000 <= total <= 350_000, total


# ------------------------------------------------------------------------------------------- #
# Lyft
# ------------------------------------------------------------------------------------------- #
def _lyft(lyft_root):
    from lyft_dataset_sdk.lyftdataset import LyftDataset

    data = os.path.join(lyft_root, "v1.01-train")
    return LyftDataset(data_path=data, json_path=os.path.join(data, "v1.01-train"), verbose=False)


def test_lyft_sdk_loads(lyft_root):
    from lyft_dataset_sdk.utils.data_classes import LidarPointCloud as LyftCloud
    from lyft_dataset_sdk.utils.geometry_utils import points_in_box as lyft_points_in_box

    ly = _lyft(lyft_root)
    assert len(ly.scene) == 2 and len(ly.sample) == 8 and len(ly.sample_data) == 8
    assert all(sd["is_key_frame"] for sd in ly.sample_data)
    assert all(
        a["num_lidar_pts"] == -1 and a["visibility_token"] == "" for a in ly.sample_annotation
    )
    for scene in ly.scene:
        s = ly.get("sample", scene["first_sample_token"])
        times = [s["timestamp"]]
        while s["next"]:
            s = ly.get("sample", s["next"])
            times.append(s["timestamp"])
        assert isinstance(times[0], float)
        assert np.allclose(np.diff(times), 200_000, atol=5_000)  # 5 Hz
    path, boxes, _ = ly.get_sample_data(ly.sample[2]["data"]["LIDAR_TOP"])
    pc = LyftCloud.from_file(path)
    assert np.all(pc.points[3] == 100)
    counts = [lyft_points_in_box(b, pc.points[:3]).sum() for b in boxes]
    assert sum(c > 0 for c in counts) >= 5
    # Static objects land on their boxes (Lyft mount, ego roll/pitch, ground far below z = 0).
    for ann in _parked_annotations_lyft(ly)[:4]:
        box = ly.get_box(ann["token"])
        sample = ly.get("sample", ann["sample_token"])
        points = _global_points(ly, sample["data"]["LIDAR_TOP"], LyftCloud)
        others = [ly.get_box(t) for t in sample["anns"]]
        frac, n = _surface_fraction(points, box, box.center[2] - box.wlh[2] / 2, others)
        assert n == 0 or frac > 0.97, (frac, n)


def _parked_annotations_lyft(ly):
    return [a for a in ly.sample_annotation if _attribute_names(ly, a) == ["object_action_parked"]]


@pytest.mark.skipif(not os.path.isdir(LYFT_SAMPLE_TABLES), reason="real Lyft tables not available")
def test_lyft_tables_match_the_real_schema(lyft_root):
    def schema(folder):
        out = {}
        for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
            with open(path) as f:
                records = json.load(f)
            fields = {}
            for r in records:
                if "width" in r or r.get("modality") == "camera" or r.get("camera_intrinsic"):
                    continue  # camera records: the synthetic set has no cameras
                for k, v in r.items():
                    kind = type(v).__name__
                    if "token" in k and isinstance(v, str) and v:
                        kind += f"[{len(v)}]"
                    fields.setdefault(k, set()).add(kind)
            out[os.path.basename(path)] = fields
        return out

    real = schema(LYFT_SAMPLE_TABLES)
    synth = schema(os.path.join(lyft_root, "v1.01-train", "v1.01-train"))
    assert set(real) == set(synth)
    for table, fields in real.items():
        assert set(fields) == set(synth[table]), table
        for key, kinds in fields.items():
            assert synth[table][key] <= kinds | {"list"}, (table, key, synth[table][key], kinds)


# ------------------------------------------------------------------------------------------- #
# Ray casting against brute force
# ------------------------------------------------------------------------------------------- #
def _to_box_frame(points, center, yaw):
    """Points (..., 3) in the frame of a yaw-only box (x along ``l``, towards its heading)."""
    rel = points - center
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([c * rel[..., 0] + s * rel[..., 1], -s * rel[..., 0] + c * rel[..., 1],
                     rel[..., 2]], -1)  # fmt: skip


@pytest.mark.parametrize("stepped", [False, True])
def test_ray_casting_matches_brute_force_marching(stepped):
    """Plain boxes, or boxes with front steps of every sort (none, (0, 1), long, low, high)."""
    rng = np.random.default_rng(0)
    spec = LidarSpec(num_beams=8, elevation_deg=(-25.0, 10.0), azimuth_steps=64, max_range=22.0)
    k, ground = 12, -0.3
    ang, dist = rng.uniform(-math.pi, math.pi, k), rng.uniform(4.0, 18.0, k)
    wlh = rng.uniform(0.5, 4.0, (k, 3))
    centers = np.c_[dist * np.cos(ang), dist * np.sin(ang), ground + wlh[:, 2] / 2]
    yaw = rng.uniform(-math.pi, math.pi, k)
    rot = quaternion_to_matrix(quaternion_from_ypr(0.7, 0.03, -0.02))
    origin = np.array([0.2, -0.1, 1.8])
    steps = np.tile([[0.0, 1.0], [0.25, 0.55], [0.0, 0.5], [0.6, 0.2], [0.3, 1.0], [0.4, 0.8]],
                    (2, 1)) if stepped else np.tile([0.0, 1.0], (k, 1))  # fmt: skip
    res = LidarSimulator(spec).scan(
        0.1, rot, origin, centers, wlh, yaw, ground_z=ground, front_step=steps if stepped else None
    )
    dirs = res.directions.astype(np.float64) @ rot.T
    lwh = wlh[:, [1, 0, 2]]

    def sdf(points, i):  # signed distance to the shape of box i
        return _shape_sdf(_to_box_frame(points, centers[i], yaw[i]), *lwh[i], steps[i])

    step = 0.02
    t = np.arange(step, spec.max_range, step)
    samples = origin + t[None, :, None] * dirs[:, None, :]  # (R, T, 3)
    blocked = samples[..., 2] <= ground
    for i in range(k):  # a handful of boxes: brute force
        blocked |= sdf(samples, i) <= 0
    first = np.where(blocked.any(1), t[blocked.argmax(1)], np.inf)
    # Nothing that marching finds is missed, and no hit comes before the first blocked sample.
    assert np.all(res.range <= first + 1e-3)
    hit = np.isfinite(res.range)
    assert np.all(res.range[hit] > first[hit] - step - 1e-3)
    # Hit points lie on the surface of the shape reported (or on the ground), never outside its
    # box; where a pair is entered, it is entered on the surface of that box's shape.
    points = origin + res.range[:, None] * dirs
    inner = 0
    for i in range(k):
        on = res.hit == i
        assert np.all(np.abs(sdf(points[on], i)) < 1e-3)
        inside = lwh[i] / 2 - np.abs(_to_box_frame(points[on], centers[i], yaw[i]))
        assert np.all(inside.min(1) > -1e-3)
        inner += (inside.min(1) > 1e-2).sum()  # on the step, inside the annotated box
        pair = (res.pair_box == i) & np.isfinite(res.pair_range)
        entry = origin + res.pair_range[pair, None] * dirs[res.pair_ray[pair]]
        assert np.all(np.abs(sdf(entry, i)) < 1e-3)
    assert (inner > 10) if stepped else inner == 0
    assert np.all(np.abs(points[res.hit == -1, 2] - ground) < 1e-3)
    assert (res.hit >= 0).sum() > 20 and (res.hit == -1).sum() > 20 and (res.hit == -2).sum() > 20


def _scan_one_box(sensor_xyz, aim_xyz, center, wlh, yaw, front_step):
    """Range and hit of a single horizontal ray from ``sensor_xyz`` towards ``aim_xyz`` (same
    height) against one box standing on the ground at z = 0."""
    spec = LidarSpec(num_beams=1, elevation_deg=(0.0, 0.0), azimuth_steps=8, max_range=50.0)
    aim = np.subtract(aim_xyz, sensor_xyz)
    assert aim[2] == 0
    res = LidarSimulator(spec).scan(
        math.atan2(aim[1], aim[0]), np.eye(3), np.asarray(sensor_xyz, np.float64),
        np.array([center]), np.array([wlh]), np.array([yaw]), 0.0,
        front_step=None if front_step is None else np.array([front_step]),
    )  # fmt: skip
    return float(res.range[0]), int(res.hit[0])


@pytest.mark.parametrize("yaw", [0.0, 0.6, -2.5])
def test_front_step_makes_the_heading_visible(yaw):
    """A car (l 4.6, h 1.7, hood: front 25 % up to 55 % of h = 0.935 m) seen head-on and from
    behind by horizontal rays through its centre line: above the hood the front ray passes over
    it and meets the windscreen (the cabin's front face, 1.15 m behind the bumper); the rear ray
    at the same height meets the rear face, and so does any ray of a plain cuboid. The heading is
    the box frame's +x, the direction of ``yaw`` (quaternion_from_ypr's convention)."""
    l, w, h = 4.6, 2.0, 1.7
    center = np.array([3.0, -2.0, h / 2])
    heading = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    # The devkit's box of this yaw points its +x (the front) along ``heading``.
    rot = quaternion_to_matrix(quaternion_from_ypr(yaw))
    assert np.allclose(rot @ [1.0, 0.0, 0.0], heading)
    car = OBJECT_KINDS["car"].front_step
    assert car == (0.25, 0.55)

    def ray(end, z, front_step):  # from 10 m before the front (end=1) or behind the back (-1)
        sensor = center + end * 10.0 * heading
        sensor[2] = z
        target = center.copy()
        target[2] = z
        return _scan_one_box(sensor, target, center, (w, l, h), yaw, front_step)

    above_hood, below_hood = 1.3, 0.6
    assert ray(1, above_hood, car) == pytest.approx((10 - l / 2 + 0.25 * l, 0), abs=1e-4)
    assert ray(-1, above_hood, car) == pytest.approx((10 - l / 2, 0), abs=1e-4)
    assert ray(1, below_hood, car) == pytest.approx((10 - l / 2, 0), abs=1e-4)
    assert ray(-1, below_hood, car) == pytest.approx((10 - l / 2, 0), abs=1e-4)
    for plain in (None, (0.0, 1.0), OBJECT_KINDS["bus"].front_step):
        assert ray(1, above_hood, plain) == pytest.approx((10 - l / 2, 0), abs=1e-4)
        assert ray(-1, above_hood, plain) == pytest.approx((10 - l / 2, 0), abs=1e-4)
    # A step as high as the box is no step; above the box everything passes.
    assert ray(1, above_hood, (0.25, 1.0)) == pytest.approx((10 - l / 2, 0), abs=1e-4)
    assert ray(1, h + 0.1, car) == (math.inf, -2)


def test_vehicles_have_a_front_step_and_others_are_plain():
    stepped = {n for n, k in OBJECT_KINDS.items() if k.front_step != (0.0, 1.0)}
    assert stepped == {"car", "truck", "construction_vehicle", "emergency_vehicle"}
    for name in stepped:
        f, g = OBJECT_KINDS[name].front_step
        assert 0.15 <= f <= 0.4 and 0.5 <= g <= 0.8, name
    world = build_world(np.random.default_rng(0), NUSCENES_FORMAT.world, 5.0, (0, 0), 80.0)
    expect = [OBJECT_KINDS[KIND_NAMES[k]].front_step for k in world.kind]
    assert np.array_equal(world.front_step, expect) and world.front_step.shape == (len(world), 2)
    with pytest.raises(ValueError, match="front_step"):
        dataclasses.replace(OBJECT_KINDS["car"], front_step=(1.0, 0.5))


def test_car_points_show_which_end_is_the_front(nusc):
    """In the written dataset, no point lies in the air above a car's hood (the front quarter of
    its annotated box, higher than 55 % of its height) while many lie as high over its rear
    quarter (rear face, roof): the written heading and the simulated shape agree, so the data
    shows the heading."""
    front = rear = 0
    for sample in nusc.sample:
        points = _global_points(nusc, sample["data"]["LIDAR_TOP"])
        for token in sample["anns"]:
            box = nusc.get_box(token)
            if box.name != "vehicle.car":
                continue
            local = box.rotation_matrix.T @ (points - box.center[:, None])
            l, w, h = box.wlh[1], box.wlh[0], box.wlh[2]
            near = np.all(np.abs(local) < (np.array([l, w, h]) / 2 + 0.1)[:, None], 0)
            high = near & (local[2] > 0.55 * h - h / 2 + 0.1)
            front += int((high & (local[0] > l / 4 + 0.1)).sum())
            rear += int((high & (local[0] < -l / 4)).sum())
    assert front == 0 and rear >= 50, (front, rear)


# ------------------------------------------------------------------------------------------- #
# Determinism, re-running, CLI
# ------------------------------------------------------------------------------------------- #
def _tree_bytes(root):
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_deterministic_rerunnable_and_safe(tmp_path, nus_root):
    small = dict(SMALL, num_beams=8, azimuth_steps=128)
    a = make_synthetic_nuscenes(str(tmp_path / "a"), **small)
    b = make_synthetic_nuscenes(str(tmp_path / "b"), num_workers=2, **small)
    assert os.path.isfile(os.path.join(a, MARKER_NAME))
    tree_a, tree_b = _tree_bytes(a), _tree_bytes(b)  # without the marker (it holds timings)
    assert MARKER_NAME not in tree_a and len(tree_a) > 70
    assert tree_a == tree_b
    # Another seed gives another dataset.
    c = make_synthetic_nuscenes(str(tmp_path / "c"), **dict(small, seed=1))
    assert _tree_bytes(c)["v1.0-mini/ego_pose.json"] != tree_a["v1.0-mini/ego_pose.json"]
    # Complete: a second call returns without rewriting.
    table = os.path.join(a, "v1.0-mini", "sample.json")
    mtime = os.stat(table).st_mtime_ns
    assert make_synthetic_nuscenes(a, **small) == a and os.stat(table).st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="force"):
        make_synthetic_nuscenes(a, **dict(small, keyframes_per_scene=3))
    make_synthetic_nuscenes(a, force=True, **dict(small, keyframes_per_scene=3))
    with open(os.path.join(a, "v1.0-mini", "sample.json")) as f:
        assert len(json.load(f)) == 6
    assert len(glob.glob(os.path.join(a, "samples", "LIDAR_TOP", "*"))) == 6  # old files removed
    # A dataset not written by the generator is never touched.
    foreign = tmp_path / "foreign"
    (foreign / "v1.0-mini").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="refusing"):
        make_synthetic_nuscenes(str(foreign), force=True, **small)
    (foreign / "v1.0-mini").rmdir()
    (foreign / "sweeps" / "LIDAR_TOP").mkdir(parents=True)  # e.g. next to v1.0-trainval
    with pytest.raises(FileExistsError, match="refusing"):
        make_synthetic_nuscenes(str(foreign), force=True, **small)
    assert (foreign / "sweeps" / "LIDAR_TOP").is_dir()
    with pytest.raises(ValueError, match="format"):
        make_synthetic_dataset("kitti", str(tmp_path / "k"))


def test_dataset_of_an_older_generator_is_regenerated(tmp_path):
    tiny = dict(num_scenes=1, keyframes_per_scene=2, seed=0, num_beams=4, azimuth_steps=64)
    root = make_synthetic_lyft(str(tmp_path / "old"), **tiny)
    marker = os.path.join(root, MARKER_NAME)

    def set_marker_version(version, **changes):
        with open(marker) as f:
            summary = json.load(f)
        summary["parameters"].update(generator_version=version, **changes)
        with open(marker, "w") as f:
            json.dump(summary, f)
        os.utime(marker, ns=(1, 1))  # older than anything written later

    # Same arguments, other generator version: stale, regenerated (a fresh marker, newer than
    # info files built from the old data, so that those are rebuilt too).
    set_marker_version(GENERATOR_VERSION - 1)
    stray = os.path.join(root, "v1.01-train", "lidar", "stale.bin")
    open(stray, "wb").close()
    assert make_synthetic_lyft(root, **tiny) == root
    with open(marker) as f:
        assert json.load(f)["parameters"]["generator_version"] == GENERATOR_VERSION
    assert os.stat(marker).st_mtime_ns > 1 and not os.path.exists(stray)
    # Other arguments as well: still refused without force.
    set_marker_version(GENERATOR_VERSION - 1, seed=5)
    with pytest.raises(FileExistsError, match="force"):
        make_synthetic_lyft(root, **tiny)


def test_cli(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    argv = [
        "make_synthetic_dataset.py", "--format", "lyft", "--out", str(out), "--scenes", "1",
        "--keyframes", "2", "--beams", "4", "--azimuth-steps", "64", "--workers", "1",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(os.path.join(REPO, "tools", "make_synthetic_dataset.py"), run_name="__main__")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"] == 2 and summary["parameters"]["format"] == "lyft"
    assert len(glob.glob(str(out / "v1.01-train" / "lidar" / "host-a*_lidar1_*.bin"))) == 2
    assert os.path.isfile(out / "v1.01-train" / "maps" / "map_raster_palo_alto.png")
