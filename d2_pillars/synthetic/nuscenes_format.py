"""The nuScenes ``v1.0-*`` format as data (:data:`NUSCENES_FORMAT`): 13 tables under
``<root>/<version>/``, 32-hex tokens, integer microsecond timestamps, LiDAR keyframes at 2 Hz in
``samples/LIDAR_TOP/*.pcd.bin`` and 9 non-key sweeps (20 Hz) between keyframes in
``sweeps/LIDAR_TOP/``; a non-key sweep's ``sample_token`` is the *next* keyframe's sample;
``ego_pose`` tokens equal ``sample_data`` tokens; float32 x 5 points (x, y, z, intensity 0-255,
ring). Checked against the real excerpts in ``shared/data/samples`` and the devkit.
"""

import datetime
import numpy as np
from typing import List

from .formats import FormatSpec, make_token, placeholder_png
from .lidar import LidarSpec
from .world import MOVING, PARKED, SITTING, STANDING, STOPPED, WorldSpec

__all__ = ["NUSCENES_FORMAT", "nuscenes_scene_names"]

_NUSCENES_LOCATIONS = (
    # (location, vehicle, utc offset hours)
    ("singapore-onenorth", "n015", 8),
    ("boston-seaport", "n008", -4),
    ("singapore-queenstown", "n015", 8),
    ("singapore-hollandvillage", "n015", 8),
)


def nuscenes_scene_names(version: str, num_scenes: int) -> List[str]:
    """Real scene names of ``version``'s train/val splits (devkit ``nuscenes.utils.splits``), the
    validation scenes spread evenly so that any ``num_scenes >= 2`` has both splits."""
    from nuscenes.utils import splits

    train, val = (
        (splits.mini_train, splits.mini_val)
        if version.endswith("mini")
        else (splits.train, splits.val)
    )
    if num_scenes > len(train) + len(val):
        raise ValueError(
            f"nuScenes {version} has {len(train) + len(val)} scenes; asked for {num_scenes}. Use "
            f"version='v1.0-trainval' for more scenes."
        )
    n_val = (
        0
        if num_scenes < 2
        else min(len(val), max(1, round(num_scenes * len(val) / (len(train) + len(val)))))
    )
    names = list(train[: num_scenes - n_val]) + list(val[:n_val])
    return sorted(names)


def _nuscenes_meta(spec, options, version, scene_index):
    location, vehicle, utc = _NUSCENES_LOCATIONS[scene_index % len(_NUSCENES_LOCATIONS)]
    local = datetime.datetime(2018, 7, 24, 11, 22, 45) + datetime.timedelta(
        days=3 * scene_index, minutes=37 * scene_index
    )
    tz = datetime.timezone(datetime.timedelta(hours=utc))
    unix_s = int(local.replace(tzinfo=tz).timestamp())
    sign = "+" if utc >= 0 else "-"
    logfile = f"{vehicle}-{local:%Y-%m-%d-%H-%M-%S}{sign}{abs(utc):02d}00"
    log = {
        "token": make_token(spec, options, "log", scene_index),
        "logfile": logfile,
        "vehicle": vehicle,
        "date_captured": f"{local:%Y-%m-%d}",
        "location": location,
    }
    return {
        "log": log,
        "scene_name": spec.scene_names(version, options.num_scenes)[scene_index],
        "t0_ns": (unix_s + 60 + 13 * scene_index) * 10**9,
    }


def _nuscenes_lidar_filename(meta, t_ns, is_key_frame):
    folder = "samples" if is_key_frame else "sweeps"
    return f"{folder}/LIDAR_TOP/{meta['log']['logfile']}__LIDAR_TOP__{t_ns // 1000}.pcd.bin"


def _nuscenes_maps(spec, options, logs):
    records = []
    rng = np.random.default_rng([options.seed, 7])
    for location, _, _ in _NUSCENES_LOCATIONS:
        log_tokens = [log["token"] for log in logs if log["location"] == location]
        if not log_tokens:
            continue
        token = make_token(spec, options, "map", location, nhex=32)
        rec = {
            "category": "semantic_prior",
            "token": token,
            "filename": f"maps/{token}.png",
            "log_tokens": log_tokens,
        }
        records.append((rec, placeholder_png(64, 64, 1, rng)))
    return records


_NUSCENES_CATEGORIES = (
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.wheelchair", "Wheelchair user."),
    ("human.pedestrian.stroller", "Stroller."),
    ("human.pedestrian.personal_mobility", "Scooter, skateboard, segway and the like."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.construction_worker", "Construction worker."),
    ("animal", "Animal."),
    ("vehicle.car", "Passenger car, van, SUV, pickup."),
    ("vehicle.motorcycle", "Motorcycle or moped."),
    ("vehicle.bicycle", "Bicycle."),
    ("vehicle.bus.bendy", "Articulated bus."),
    ("vehicle.bus.rigid", "Rigid bus."),
    ("vehicle.truck", "Truck."),
    ("vehicle.construction", "Construction vehicle."),
    ("vehicle.emergency.ambulance", "Ambulance."),
    ("vehicle.emergency.police", "Police vehicle."),
    ("vehicle.trailer", "Trailer."),
    ("movable_object.barrier", "Temporary road barrier."),
    ("movable_object.trafficcone", "Traffic cone."),
    ("movable_object.pushable_pullable", "Cart, bin or other pushable object."),
    ("movable_object.debris", "Debris."),
    ("static_object.bicycle_rack", "Bicycle rack."),
)
_NUSCENES_ATTRIBUTES = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle is stationary with a driver, e.g. at a light."),
    ("vehicle.parked", "Vehicle is parked."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is no rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The pedestrian is sitting or lying down."),
    ("pedestrian.standing", "The pedestrian is standing."),
    ("pedestrian.moving", "The pedestrian is moving."),
)

NUSCENES_FORMAT = FormatSpec(
    name="nuscenes",
    seed_salt=0,
    versions=("v1.0-mini", "v1.0-trainval"),
    table_dir="{version}",
    data_dir="",
    owned_dirs=("{version}", "samples/LIDAR_TOP", "sweeps/LIDAR_TOP", "maps"),
    token_hex=32,
    # Velodyne HDL-32E: 32 beams, -30.67..+10.67 deg, 20 Hz.
    lidar=LidarSpec(
        num_beams=32, elevation_deg=(-30.67, 10.67), azimuth_steps=1080, max_range=80.0
    ),
    # One object of each of the 10 detection classes beside the road where every scene starts.
    world=WorldSpec(
        guaranteed_kinds=(
            "car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle",
            "bicycle", "traffic_cone", "barrier",
        )  # fmt: skip
    ),
    mount_translation=(0.943, 0.0, 1.841),
    mount_ypr_deg=(-90.0, 0.0, 0.0),
    sweep_period_ns=50_000_000,
    keyframe_every=10,
    constant_intensity=None,
    count_lidar_points=True,
    write_visibility=True,
    integer_timestamps=True,
    integer_zero_rotation=False,
    ego_pose_token_is_sample_data_token=True,
    scene_token_is_log_token=False,
    sample_data_fileformat="pcd",
    sample_data_extra={"height": 0, "width": 0},
    categories=_NUSCENES_CATEGORIES,
    kind_categories={
        "car": {"vehicle.car": 1.0},
        "truck": {"vehicle.truck": 1.0},
        "bus": {"vehicle.bus.rigid": 0.9, "vehicle.bus.bendy": 0.1},
        "trailer": {"vehicle.trailer": 1.0},
        "construction_vehicle": {"vehicle.construction": 1.0},
        "pedestrian": {
            "human.pedestrian.adult": 0.9,
            "human.pedestrian.construction_worker": 0.06,
            "human.pedestrian.police_officer": 0.04,
        },
        "motorcycle": {"vehicle.motorcycle": 1.0},
        "bicycle": {"vehicle.bicycle": 1.0},
        "traffic_cone": {"movable_object.trafficcone": 1.0},
        "barrier": {"movable_object.barrier": 1.0},
        "animal": {"animal": 1.0},
        "pushable_pullable": {"movable_object.pushable_pullable": 1.0},
        "emergency_vehicle": {"vehicle.emergency.police": 0.6, "vehicle.emergency.ambulance": 0.4},
    },
    attributes=_NUSCENES_ATTRIBUTES,
    attribute_of={
        ("vehicle", MOVING): "vehicle.moving",
        ("vehicle", STOPPED): "vehicle.stopped",
        ("vehicle", PARKED): "vehicle.parked",
        ("cycle", MOVING): "cycle.with_rider",
        ("cycle", STOPPED): "cycle.with_rider",
        ("cycle", PARKED): "cycle.without_rider",
        ("pedestrian", MOVING): "pedestrian.moving",
        ("pedestrian", STANDING): "pedestrian.standing",
        ("pedestrian", SITTING): "pedestrian.sitting_lying_down",
    },
    scene_meta=_nuscenes_meta,
    scene_names=nuscenes_scene_names,
    lidar_filename=_nuscenes_lidar_filename,
    map_records=_nuscenes_maps,
    json_indent=0,
)
