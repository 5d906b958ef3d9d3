"""Write a synthetic world (:mod:`.world`, scanned by :mod:`.lidar`) as nuScenes or Lyft tables and
LiDAR files.

Everything that differs between the two formats is data in a :class:`~.formats.FormatSpec`
(:data:`NUSCENES_FORMAT`, :data:`LYFT_FORMAT`, in :data:`FORMATS`): versions and folders, token
lengths, the LiDAR and its mount, sweep rate and keyframe stride, category/attribute tables,
timestamp types, file names. The scene simulation and the table assembly here are shared.
"""

import json
import math
import numpy as np
import os
from typing import Dict, List, NamedTuple, Optional

from d2_pillars.utils.file_io import atomic_open

from .formats import (
    GPS_EPOCH_UNIX_NS,
    TABLE_NAMES,
    VISIBILITY,
    FormatSpec,
    GenerationOptions,
    attribute_group,
    make_token,
)
from .geometry import quaternion_from_ypr, quaternion_to_matrix
from .lidar import LidarSimulator, count_points_in_boxes
from .lyft_format import LYFT_FORMAT
from .nuscenes_format import NUSCENES_FORMAT
from .world import KIND_NAMES, build_world, select_near

__all__ = ["FORMATS", "generate_scene", "write_shared_tables", "write_tables"]

FORMATS: Dict[str, FormatSpec] = {"nuscenes": NUSCENES_FORMAT, "lyft": LYFT_FORMAT}


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
        attribute = spec.attribute_of.get((attribute_group(kind), int(world.state[obj])))
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
    tok = lambda *p: make_token(spec, options, *p)  # noqa: E731
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
        gps_start_ns=int(t_ns[0]) - GPS_EPOCH_UNIX_NS,
        gps_end_ns=int(t_ns[-1]) - GPS_EPOCH_UNIX_NS,
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
    tok = lambda *p: make_token(spec, options, *p)  # noqa: E731
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
        "visibility": [{"description": d, "token": t, "level": lvl} for t, lvl, d in VISIBILITY],
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
