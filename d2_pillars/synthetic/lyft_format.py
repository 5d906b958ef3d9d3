"""The Lyft ``v1.01-train`` format as data (:data:`LYFT_FORMAT`): tables under
``<root>/v1.01-train/v1.01-train/``, data under ``<root>/v1.01-train/`` (``lidar/``, ``maps/``),
64-hex tokens (32 for the map), float microsecond timestamps, every LIDAR_TOP sample_data a 5 Hz
keyframe, file names carrying GPS nanoseconds, intensity 100, ``num_lidar_pts = -1``, empty
``visibility_token``. Checked against the real excerpts in ``shared/data/samples`` and the SDK.
"""

import datetime
import numpy as np

from .formats import GPS_EPOCH_UNIX_NS, FormatSpec, make_token, placeholder_png
from .lidar import LidarSpec
from .world import MOVING, PARKED, SITTING, STANDING, STOPPED, WorldSpec

__all__ = ["LYFT_FORMAT"]


def _lyft_meta(spec, options, version, scene_index):
    host = 101 + (scene_index * 7) % 40
    day = datetime.datetime(
        2019, 5, 1, 1, 46, 5, tzinfo=datetime.timezone.utc
    ) + datetime.timedelta(days=scene_index, minutes=29 * scene_index)
    t0_ns = int(day.timestamp()) * 10**9 + 903_083_166
    log = {
        "date_captured": f"{day:%Y-%m-%d}",
        "location": "Palo Alto",
        "token": make_token(spec, options, "log", scene_index),
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
    return f"lidar/{meta['host']}_lidar1_{t_ns - GPS_EPOCH_UNIX_NS}.bin"


def _lyft_maps(spec, options, logs):
    rec = {
        "log_tokens": [log["token"] for log in logs],
        "token": make_token(spec, options, "map", "palo_alto", nhex=32),
        "filename": "maps/map_raster_palo_alto.png",
        "category": "semantic_prior",
    }
    return [(rec, placeholder_png(64, 64, 4, np.random.default_rng([options.seed, 7])))]


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
