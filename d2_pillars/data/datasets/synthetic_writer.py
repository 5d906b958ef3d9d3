"""Write a synthetic world (``synthetic_scene``) as nuScenes or Lyft tables and LiDAR files.

Everything that differs between the two formats is data in a :class:`FormatSpec`
(:data:`NUSCENES_FORMAT`, :data:`LYFT_FORMAT`): versions and folders, token lengths, the LiDAR and
its mount, sweep rate and keyframe stride, category/attribute tables, timestamp types, file names.
The scene simulation and the table assembly below are shared.

Formats reproduced (checked against the real excerpts in ``shared/data/samples`` and the devkits):

* nuScenes ``v1.0-*``: 13 tables under ``<root>/<version>/``, 32-hex tokens, integer microsecond
  timestamps, LiDAR keyframes at 2 Hz in ``samples/LIDAR_TOP/*.pcd.bin`` and 9 non-key sweeps
  (20 Hz) between keyframes in ``sweeps/LIDAR_TOP/``; a non-key sweep's ``sample_token`` is the
  *next* keyframe's sample; ``ego_pose`` tokens equal ``sample_data`` tokens; float32 x 5 points
  (x, y, z, intensity 0-255, ring).
* Lyft ``v1.01-train``: tables under ``<root>/v1.01-train/v1.01-train/``, data under
  ``<root>/v1.01-train/`` (``lidar/``, ``maps/``), 64-hex tokens (32 for the map), float
  microsecond timestamps, every LIDAR_TOP sample_data a 5 Hz keyframe, file names carrying GPS
  nanoseconds, intensity 100, ``num_lidar_pts = -1``, empty ``visibility_token``.
"""

import dataclasses
import datetime
import hashlib
import io
import json
import math
import numpy as np
import os
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from d2_pillars.utils.file_io import atomic_open

from .synthetic_scene import (
    KIND_NAMES,
    MOVING,
    OBJECT_KINDS,
    PARKED,
    SITTING,
    STANDING,
    STOPPED,
    LidarSimulator,
    LidarSpec,
    WorldSpec,
    build_world,
    count_points_in_boxes,
    quaternion_from_ypr,
    quaternion_to_matrix,
    select_near,
)

__all__ = [
    "FormatSpec",
    "GenerationOptions",
    "NUSCENES_FORMAT",
    "LYFT_FORMAT",
    "FORMATS",
    "generate_scene",
    "write_shared_tables",
    "write_tables",
]

TABLE_NAMES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
_GPS_EPOCH_UNIX_NS = 315_964_800 * 10**9  # 1980-01-06 in Unix time
_VISIBILITY = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)
_VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle", "emergency_vehicle")
_CYCLES = ("bicycle", "motorcycle")


def _attribute_group(kind: str) -> Optional[str]:
    if kind in _VEHICLES:
        return "vehicle"
    if kind in _CYCLES:
        return "cycle"
    if kind in ("pedestrian", "animal"):
        return kind
    return None


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """What to generate (the format-independent knobs)."""

    num_scenes: int = 10
    keyframes_per_scene: int = 40
    seed: int = 0
    version: Optional[str] = None  # None: the format's default version
    num_beams: Optional[int] = None  # None: the format's LiDAR
    azimuth_steps: Optional[int] = None

    def __post_init__(self):
        if self.num_scenes < 1 or self.keyframes_per_scene < 2:
            raise ValueError(
                f"need num_scenes >= 1 and keyframes_per_scene >= 2, got {self.num_scenes}, "
                f"{self.keyframes_per_scene}"
            )


@dataclasses.dataclass(frozen=True)
class FormatSpec:
    """Everything that differs between the nuScenes and Lyft on-disk formats."""

    name: str
    seed_salt: int  # separates the random streams of the formats
    versions: Tuple[str, ...]  # first = default
    table_dir: str  # tables folder relative to the root; "{version}" is substituted
    data_dir: str  # devkit data root relative to the root; file names are relative to it
    owned_dirs: Tuple[str, ...]  # what a forced regeneration may delete (relative to the root)
    token_hex: int
    lidar: LidarSpec
    world: WorldSpec
    mount_translation: Tuple[float, float, float]
    mount_ypr_deg: Tuple[float, float, float]
    sweep_period_ns: int
    keyframe_every: int  # sweeps per keyframe interval (1: every sweep is a keyframe)
    constant_intensity: Optional[float]
    count_lidar_points: bool  # False: num_lidar_pts = -1 as in the Lyft release
    write_visibility: bool  # False: visibility_token = "" as in the Lyft release
    integer_timestamps: bool
    integer_zero_rotation: bool  # annotation rotation [w, 0, 0, z] with integer zeros
    ego_pose_token_is_sample_data_token: bool
    scene_token_is_log_token: bool
    sample_data_fileformat: str
    sample_data_extra: Dict[str, int]
    categories: Tuple[Tuple[str, str], ...]  # (name, description)
    kind_categories: Dict[str, Dict[str, float]]  # object kind -> {category: weight}
    attributes: Tuple[Tuple[str, str], ...]
    attribute_of: Dict[Tuple[str, int], str]  # (attribute group, state) -> attribute name
    # (spec, options, version, scene_index) -> {"log": log record, "t0_ns": start (Unix ns),
    # "scene_name": name, may hold {gps_start_ns} / {gps_end_ns}, ...}
    scene_meta: Callable
    # (version, num_scenes) -> scene names when the format has fixed ones (raises if too many)
    scene_names: Optional[Callable]
    lidar_filename: Callable  # (meta, t_ns, is_key_frame) -> file name
    map_records: Callable  # (spec, options, logs) -> [(record, png bytes)]
    json_indent: Optional[int]

    def tables_path(self, root: str, version: str) -> str:
        return os.path.join(root, self.table_dir.format(version=version))

    def data_path(self, root: str) -> str:
        return os.path.join(root, self.data_dir) if self.data_dir else root

    def resolve(self, options: GenerationOptions) -> Tuple[str, LidarSpec]:
        version = options.version or self.versions[0]
        if version not in self.versions:
            raise ValueError(
                f"{self.name}: unknown version {version!r}; choose one of {self.versions}"
            )
        if self.scene_names is not None:
            self.scene_names(version, options.num_scenes)  # raises if there are too few names
        lidar = dataclasses.replace(
            self.lidar,
            num_beams=options.num_beams or self.lidar.num_beams,
            azimuth_steps=options.azimuth_steps or self.lidar.azimuth_steps,
        )
        return version, lidar


def _token(spec: FormatSpec, options: GenerationOptions, *parts, nhex: Optional[int] = None) -> str:
    key = "|".join(str(p) for p in (spec.name, options.seed) + parts)
    return hashlib.blake2b(key.encode(), digest_size=(nhex or spec.token_hex) // 2).hexdigest()


def _png(height: int, width: int, channels: int, rng: np.random.Generator) -> bytes:
    """A small map raster (a road band on background) encoded as PNG."""
    from PIL import Image

    img = np.zeros((height, width, channels), np.uint8)
    img[height // 3 : 2 * height // 3] = 255
    img = np.where(rng.uniform(size=img.shape[:2] + (1,)) < 0.02, 255 - img, img)
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if channels == 1 else img).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- #
# nuScenes
# ------------------------------------------------------------------------------------------- #
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
        "token": _token(spec, options, "log", scene_index),
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
        token = _token(spec, options, "map", location, nhex=32)
        rec = {
            "category": "semantic_prior",
            "token": token,
            "filename": f"maps/{token}.png",
            "log_tokens": log_tokens,
        }
        records.append((rec, _png(64, 64, 1, rng)))
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


# ------------------------------------------------------------------------------------------- #
# Lyft
# ------------------------------------------------------------------------------------------- #
def _lyft_meta(spec, options, version, scene_index):
    host = 101 + (scene_index * 7) % 40
    day = datetime.datetime(
        2019, 5, 1, 1, 46, 5, tzinfo=datetime.timezone.utc
    ) + datetime.timedelta(days=scene_index, minutes=29 * scene_index)
    t0_ns = int(day.timestamp()) * 10**9 + 903_083_166
    log = {
        "date_captured": f"{day:%Y-%m-%d}",
        "location": "Palo Alto",
        "token": _token(spec, options, "log", scene_index),
        "vehicle": f"a{host:03d}",
        "logfile": "",
    }
    return {
        "log": log,
        "scene_name": f"host-a{host:03d}-lidar0-{{gps_start_ns}}-{{gps_end_ns}}",
        "t0_ns": t0_ns,
        "host": f"host-a{host:03d}",
    }


def _lyft_lidar_filename(meta, t_ns, is_key_frame):
    return f"lidar/{meta['host']}_lidar1_{t_ns - _GPS_EPOCH_UNIX_NS}.bin"


def _lyft_maps(spec, options, logs):
    rec = {
        "log_tokens": [log["token"] for log in logs],
        "token": _token(spec, options, "map", "palo_alto", nhex=32),
        "filename": "maps/map_raster_palo_alto.png",
        "category": "semantic_prior",
    }
    return [(rec, _png(64, 64, 4, np.random.default_rng([options.seed, 7])))]


_LYFT_CATEGORIES = tuple(
    (n, "")
    for n in (
        "car",
        "pedestrian",
        "animal",
        "other_vehicle",
        "bus",
        "motorcycle",
        "truck",
        "emergency_vehicle",
        "bicycle",
    )
)
_LYFT_ATTRIBUTES = tuple(
    (n, "")
    for n in (
        "object_action_lane_change_right",
        "object_action_running",
        "object_action_lane_change_left",
        "object_action_parked",
        "object_action_standing",
        "object_action_right_turn",
        "object_action_gliding_on_wheels",
        "object_action_loss_of_control",
        "object_action_u_turn",
        "object_action_sitting",
        "object_action_walking",
        "object_action_stopped",
        "object_action_left_turn",
        "object_action_reversing",
        "is_stationary",
        "object_action_driving_straight_forward",
        "object_action_abnormal_or_traffic_violation",
        "object_action_other_motion",
    )
)

LYFT_FORMAT = FormatSpec(
    name="lyft",
    seed_salt=1,
    versions=("v1.01-train",),
    table_dir="{version}/{version}",
    data_dir="v1.01-train",
    owned_dirs=("v1.01-train",),
    token_hex=64,
    lidar=LidarSpec(num_beams=40, elevation_deg=(-25.0, 15.0), azimuth_steps=1700, max_range=100.0),
    world=WorldSpec(
        ground_z_range=(-25.0, -10.0),
        ego_roll_pitch_deg=1.5,
        work_zone_prob=0.0,
        sidewalk_static_mix={"pedestrian": 0.75, "bicycle": 0.2, "animal": 0.05},
        # One object of each of the 9 classes (trailer: other_vehicle) where every scene starts.
        guaranteed_kinds=(
            "car", "truck", "bus", "emergency_vehicle", "trailer", "motorcycle", "bicycle",
            "pedestrian", "animal",
        ),  # fmt: skip
    ),
    mount_translation=(1.197, 0.0, 1.828),
    mount_ypr_deg=(179.3, -1.3, 0.0),
    sweep_period_ns=200_000_000,
    keyframe_every=1,
    constant_intensity=100.0,
    count_lidar_points=False,
    write_visibility=False,
    integer_timestamps=False,
    integer_zero_rotation=True,
    ego_pose_token_is_sample_data_token=False,
    scene_token_is_log_token=True,
    sample_data_fileformat="bin",
    sample_data_extra={},
    categories=_LYFT_CATEGORIES,
    kind_categories={
        "car": {"car": 1.0},
        "truck": {"truck": 1.0},
        "bus": {"bus": 1.0},
        "trailer": {"other_vehicle": 1.0},
        "construction_vehicle": {"other_vehicle": 1.0},
        "pedestrian": {"pedestrian": 1.0},
        "motorcycle": {"motorcycle": 1.0},
        "bicycle": {"bicycle": 1.0},
        "animal": {"animal": 1.0},
        "emergency_vehicle": {"emergency_vehicle": 1.0},
    },
    attributes=_LYFT_ATTRIBUTES,
    attribute_of={
        ("vehicle", MOVING): "object_action_driving_straight_forward",
        ("vehicle", STOPPED): "object_action_stopped",
        ("vehicle", PARKED): "object_action_parked",
        ("cycle", MOVING): "object_action_driving_straight_forward",
        ("cycle", STOPPED): "object_action_stopped",
        ("cycle", PARKED): "object_action_parked",
        ("pedestrian", MOVING): "object_action_walking",
        ("pedestrian", STANDING): "object_action_standing",
        ("pedestrian", SITTING): "object_action_sitting",
        ("animal", MOVING): "object_action_walking",
    },
    scene_meta=_lyft_meta,
    scene_names=None,
    lidar_filename=_lyft_lidar_filename,
    map_records=_lyft_maps,
    json_indent=None,
)

FORMATS: Dict[str, FormatSpec] = {"nuscenes": NUSCENES_FORMAT, "lyft": LYFT_FORMAT}


# ------------------------------------------------------------------------------------------- #
# Shared generation
# ------------------------------------------------------------------------------------------- #
def _rotation_record(q: np.ndarray, integer_zero: bool) -> list:
    w, x, y, z = (float(v) for v in q)
    if integer_zero:
        return [w, 0, 0, z]
    return [w, x, y, z]


def _links(tokens: List[str], i: int) -> Dict[str, str]:
    """``prev`` and ``next`` of record ``i`` of a chain of records (``""`` at either end)."""
    return {
        "prev": tokens[i - 1] if i > 0 else "",
        "next": tokens[i + 1] if i + 1 < len(tokens) else "",
    }


def _write_points(path: str, points: np.ndarray) -> None:
    """Write (N, 5) float32 points; a reader never sees a partial file (rename), no fsync."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(np.ascontiguousarray(points, np.float32).tobytes())
    os.replace(tmp, path)


class _Sweep(NamedTuple):
    points: np.ndarray  # (P, 5) float32 x, y, z, intensity, ring in the sensor frame
    counts: Optional[np.ndarray]  # (len(near),) points inside each box near the sensor
    visibility: Optional[np.ndarray]  # (len(near),) visibility level 1..4
    near: np.ndarray  # indices of the objects cast against


def _simulate_sweep(spec, lidar, sim, world, rng, t, sensor_rotation, sensor_origin, keyframe):
    """One LiDAR revolution at time ``t``; on counted keyframes also points per box, visibility."""
    centers, yaw = world.boxes_at(t)
    near = select_near(centers, world.wlh, sensor_origin, lidar.max_range)
    centers, wlh, yaw = centers[near], world.wlh[near], yaw[near]
    dazi = 2.0 * math.pi / lidar.azimuth_steps
    res = sim.scan(
        -math.pi + rng.uniform(0, dazi), sensor_rotation, sensor_origin, centers, wlh, yaw,
        world.ground_z, front_step=world.front_step[near],
    )  # fmt: skip
    noise = np.float32(lidar.range_noise_std) * rng.standard_normal(res.range.shape, np.float32)
    dist = res.range + noise
    valid = np.isfinite(res.range) & (dist >= lidar.min_range) & (dist <= lidar.max_range)
    dist = np.where(valid, dist, 0.0).astype(np.float32)
    xyz = res.directions * dist[:, None]
    if spec.constant_intensity is not None:
        intensity = np.full(dist.shape, spec.constant_intensity, np.float32)
    else:
        refl = world.reflectivity(res.hit, near) * (1.0 - 0.5 * dist / lidar.max_range)
        noise = 2.5 * rng.standard_normal(dist.shape, np.float32)
        intensity = np.clip(np.round(refl + noise), 0, 255)
    counts = visibility = None
    if keyframe and spec.count_lidar_points:
        # Count from the float32 points as stored, moved to the global frame in float64.
        sel = world.annotated[near][res.pair_box] & valid[res.pair_ray]
        pts_w = xyz.astype(np.float64) @ sensor_rotation.T + sensor_origin
        counts, ambiguous = count_points_in_boxes(
            pts_w, res.pair_ray[sel], res.pair_box[sel], centers, wlh, yaw, len(near)
        )
        valid &= ~ambiguous
        # Visibility: rays that reach the box over rays that would hit it without occluders.
        would = np.bincount(res.pair_box[np.isfinite(res.pair_range)], minlength=len(near))
        seen = np.bincount(res.hit[(res.hit >= 0) & valid], minlength=len(near))
        frac = np.divide(seen, would, out=np.zeros(len(near)), where=would > 0)
        visibility = 1 + np.searchsorted([0.4, 0.6, 0.8], frac, side="right")
    ring = np.tile(np.arange(lidar.num_beams, dtype=np.float32), lidar.azimuth_steps)
    points = np.concatenate([xyz, intensity[:, None], ring[:, None]], 1)[valid]
    return _Sweep(points, counts, visibility, near)


def _annotation_spans(spec, world, t_key, ego_xy):
    """Per object, the first and last keyframe with its centre within the annotation radius
    (``-1, -2`` if never); annotations are contiguous between them, like real instances."""
    centers = np.stack([world.boxes_at(t)[0] for t in t_key])  # (K, N, 3)
    near = (
        np.linalg.norm(centers[..., :2] - ego_xy[:, None], axis=-1) <= spec.world.annotation_radius
    )
    near &= world.annotated[None]
    seen = near.any(0)
    first = np.where(seen, near.argmax(0), -1)
    last = np.where(seen, len(t_key) - 1 - near[::-1].argmax(0), -2)
    return first, last


def _instance_records(spec, tok, rng, world, scene_index, t_key, first, last, sample_tokens,
                      num_lidar_pts, visibility):  # fmt: skip
    """``instance`` and ``sample_annotation`` records (global frame, geometric centre, size
    ``[w, l, h]``, yaw quaternion with a random sign as in the real data)."""
    attr_tokens = {name: tok("attribute", name) for name, _ in spec.attributes}
    cat_tokens = {name: tok("category", name) for name, _ in spec.categories}
    poses = [world.boxes_at(t) for t in t_key]
    instances, annotations = [], []
    for obj in np.flatnonzero(first >= 0):
        kind = KIND_NAMES[world.kind[obj]]
        cats = spec.kind_categories[kind]
        category = rng.choice(list(cats), p=np.array(list(cats.values())) / sum(cats.values()))
        attribute = spec.attribute_of.get((_attribute_group(kind), int(world.state[obj])))
        span = range(first[obj], last[obj] + 1)
        ann_tokens = [tok("sample_annotation", scene_index, obj, k) for k in span]
        instance_token = tok("instance", scene_index, obj)
        instances.append(
            {
                "token": instance_token,
                "category_token": cat_tokens[category],
                "nbr_annotations": len(ann_tokens),
                "first_annotation_token": ann_tokens[0],
                "last_annotation_token": ann_tokens[-1],
            }
        )
        flips = rng.uniform(size=len(ann_tokens)) < 0.5
        for j, k in enumerate(span):
            center, yaw = poses[k][0][obj], poses[k][1][obj]
            q = quaternion_from_ypr(yaw) * (-1.0 if flips[j] else 1.0)
            annotations.append(
                {
                    "token": ann_tokens[j],
                    "sample_token": sample_tokens[k],
                    "instance_token": instance_token,
                    "visibility_token": str(visibility[k, obj]) if spec.write_visibility else "",
                    "attribute_tokens": [attr_tokens[attribute]] if attribute else [],
                    "translation": [float(v) for v in center],
                    "size": [float(v) for v in world.wlh[obj]],
                    "rotation": _rotation_record(q, spec.integer_zero_rotation),
                    **_links(ann_tokens, j),
                    "num_lidar_pts": int(num_lidar_pts[k, obj]) if spec.count_lidar_points else -1,
                    "num_radar_pts": 0,
                }
            )
    return instances, annotations


def generate_scene(
    spec: FormatSpec, options: GenerationOptions, root: str, scene_index: int
) -> Dict[str, list]:
    """Simulate scene ``scene_index``, write its LiDAR files and return its table records.

    Returns ``{table: [records]}`` for the per-scene tables (log, scene, sample, sample_data,
    ego_pose, calibrated_sensor, instance, sample_annotation) plus ``"_stats"``.
    """
    version, lidar = spec.resolve(options)
    rng = np.random.default_rng([options.seed, spec.seed_salt, scene_index])
    tok = lambda *p: _token(spec, options, *p)  # noqa: E731
    meta = spec.scene_meta(spec, options, version, scene_index)

    # Timeline (integer ns; nuScenes keeps whole microseconds), with a little jitter.
    num_sweeps = (options.keyframes_per_scene - 1) * spec.keyframe_every + 1
    jitter = np.clip(rng.normal(0.0, 0.004, num_sweeps), -0.02, 0.02) * spec.sweep_period_ns
    jitter[0] = 0.0
    steps = np.round(np.arange(num_sweeps) * spec.sweep_period_ns + jitter).astype(np.int64)
    t_ns = meta["t0_ns"] + steps
    if spec.integer_timestamps:
        t_ns = t_ns // 1000 * 1000
    t_sim = (t_ns - t_ns[0]) / 1e9
    is_key = np.arange(num_sweeps) % spec.keyframe_every == 0
    key_sweeps = np.flatnonzero(is_key)
    ts_value = (lambda ns: int(ns // 1000)) if spec.integer_timestamps else (lambda ns: ns / 1e3)

    # World, ego poses and the LiDAR mount.
    origin = rng.uniform(300.0, 2500.0, size=2)
    world = build_world(rng, spec.world, float(t_sim[-1]), origin, lidar.max_range)
    ego_t, ego_q = world.ego_pose(t_sim)
    ego_R = quaternion_to_matrix(ego_q)
    ypr = np.deg2rad(spec.mount_ypr_deg) + rng.normal(0.0, [0.003, 0.005, 0.005])
    cs_q = quaternion_from_ypr(*ypr)
    cs_t = np.asarray(spec.mount_translation) + rng.normal(0.0, 0.005, 3)
    cs_R = quaternion_to_matrix(cs_q)
    first, last = _annotation_spans(spec, world, t_sim[key_sweeps], ego_t[key_sweeps, :2])

    sd_tokens = [tok("sample_data", scene_index, i) for i in range(num_sweeps)]
    sample_tokens = [tok("sample", scene_index, k) for k in range(len(key_sweeps))]
    ep_tokens = sd_tokens
    if not spec.ego_pose_token_is_sample_data_token:
        ep_tokens = [tok("ego_pose", scene_index, i) for i in range(num_sweeps)]
    cs_token = tok("calibrated_sensor", scene_index, "LIDAR_TOP")
    scene_token = tok("scene", scene_index)
    if spec.scene_token_is_log_token:
        scene_token = meta["log"]["token"]

    num_lidar_pts = np.zeros((len(key_sweeps), len(world)), np.int64)
    visibility = np.ones((len(key_sweeps), len(world)), np.int64)
    sim = LidarSimulator(lidar)
    ego_pose, sample_data = [], []
    total_points = np.zeros(num_sweeps, np.int64)
    for i in range(num_sweeps):
        sample_index = -(-i // spec.keyframe_every)  # the next keyframe (or this one)
        sweep = _simulate_sweep(
            spec, lidar, sim, world, rng, t_sim[i], ego_R[i] @ cs_R, ego_R[i] @ cs_t + ego_t[i],
            bool(is_key[i]),
        )  # fmt: skip
        if sweep.counts is not None:
            num_lidar_pts[sample_index, sweep.near] = sweep.counts
            visibility[sample_index, sweep.near] = sweep.visibility
        total_points[i] = len(sweep.points)
        filename = spec.lidar_filename(meta, int(t_ns[i]), bool(is_key[i]))
        _write_points(os.path.join(spec.data_path(root), filename), sweep.points)
        ego_pose.append(
            {
                "token": ep_tokens[i],
                "timestamp": ts_value(t_ns[i]),
                "rotation": [float(v) for v in ego_q[i]],
                "translation": [float(v) for v in ego_t[i]],
            }
        )
        sample_data.append(
            {
                "token": sd_tokens[i],
                "sample_token": sample_tokens[sample_index],
                "ego_pose_token": ep_tokens[i],
                "calibrated_sensor_token": cs_token,
                "timestamp": ts_value(t_ns[i]),
                "fileformat": spec.sample_data_fileformat,
                "is_key_frame": bool(is_key[i]),
                **spec.sample_data_extra,
                "filename": filename,
                **_links(sd_tokens, i),
            }
        )

    samples = [
        {
            "token": sample_tokens[k],
            "timestamp": ts_value(t_ns[i]),
            **_links(sample_tokens, k),
            "scene_token": scene_token,
        }
        for k, i in enumerate(key_sweeps)
    ]
    instances, annotations = _instance_records(
        spec, tok, rng, world, scene_index, t_sim[key_sweeps], first, last, sample_tokens,
        num_lidar_pts, visibility,
    )  # fmt: skip
    calibrated_sensor = {
        "token": cs_token,
        "sensor_token": tok("sensor", "LIDAR_TOP"),
        "translation": [float(v) for v in cs_t],
        "rotation": [float(v) for v in cs_q],
        "camera_intrinsic": [],
    }
    name = meta["scene_name"].format(
        gps_start_ns=int(t_ns[0]) - _GPS_EPOCH_UNIX_NS,
        gps_end_ns=int(t_ns[-1]) - _GPS_EPOCH_UNIX_NS,
    )
    scene = {
        "token": scene_token,
        "log_token": meta["log"]["token"],
        "nbr_samples": len(key_sweeps),
        "first_sample_token": sample_tokens[0],
        "last_sample_token": sample_tokens[-1],
        "name": name,
        "description": (
            f"Synthetic scene {scene_index} (d2_pillars generator, seed {options.seed}); "
            "not real data."
        ),
    }
    return {
        "log": [meta["log"]],
        "scene": [scene],
        "sample": samples,
        "sample_data": sample_data,
        "ego_pose": ego_pose,
        "calibrated_sensor": [calibrated_sensor],
        "instance": instances,
        "sample_annotation": annotations,
        "_stats": [{"points_per_sweep": total_points.tolist()}],
    }


def write_shared_tables(
    spec: FormatSpec, options: GenerationOptions, root: str, logs: List[dict]
) -> Dict[str, list]:
    """Records of the scene-independent tables; writes the map PNGs."""
    tok = lambda *p: _token(spec, options, *p)  # noqa: E731
    maps = []
    for rec, png in spec.map_records(spec, options, logs):
        with atomic_open(os.path.join(spec.data_path(root), rec["filename"]), "wb") as f:
            f.write(png)
        maps.append(rec)
    return {
        "attribute": [
            {"token": tok("attribute", n), "name": n, "description": d} for n, d in spec.attributes
        ],
        "category": [
            {"token": tok("category", n), "name": n, "description": d} for n, d in spec.categories
        ],
        "sensor": [
            {"token": tok("sensor", "LIDAR_TOP"), "channel": "LIDAR_TOP", "modality": "lidar"}
        ],
        "visibility": [{"description": d, "token": t, "level": lvl} for t, lvl, d in _VISIBILITY],
        "map": maps,
    }


def write_tables(spec: FormatSpec, tables_dir: str, tables: Dict[str, list]) -> None:
    """Write the 13 tables atomically (each file appears complete or not at all)."""
    missing = set(TABLE_NAMES) - set(tables)
    if missing:
        raise ValueError(f"synthetic writer: missing tables {sorted(missing)}")
    for name in TABLE_NAMES:
        with atomic_open(os.path.join(tables_dir, f"{name}.json"), "w") as f:
            json.dump(tables[name], f, indent=spec.json_indent)


def validate_spec(spec: FormatSpec) -> None:
    """Every kind that a scene can contain must map to a category of the format."""
    mixes = (
        spec.world.lane_mix,
        spec.world.cycle_mix,
        spec.world.parking_mix,
        spec.world.walker_mix,
        spec.world.sidewalk_static_mix,
    )
    kinds = {k for m in mixes for k, w in m.items() if w > 0} | set(spec.world.guaranteed_kinds)
    if spec.world.work_zone_prob > 0:
        kinds |= {k for k, w in spec.world.work_zone_mix.items() if w > 0}
    names = {n for n, _ in spec.categories}
    for kind in kinds:
        if kind not in OBJECT_KINDS or kind not in spec.kind_categories:
            raise ValueError(f"{spec.name}: object kind {kind!r} has no category")
        if not set(spec.kind_categories[kind]) <= names:
            raise ValueError(f"{spec.name}: categories of {kind!r} are not in the category table")
    attrs = {n for n, _ in spec.attributes}
    if not set(spec.attribute_of.values()) <= attrs:
        raise ValueError(f"{spec.name}: attribute map names unknown attributes")
