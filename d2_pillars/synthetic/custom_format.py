"""The synthetic world written in the own-data layout (README, "Your own LiDAR data").

``ROOT/points/<scene>_<frame>.<ext>`` in mixed formats (``.bin``, ``.npy``, ``.pcd``, ``.ply``,
``.las`` by turns, each written by the format's own library), ``ROOT/labels/<id>.txt`` with
``x y z dx dy dz yaw class`` lines (box centre in the LiDAR frame), ``ROOT/splits/{train,val}.txt``
(the last scenes are val, so no scene is in both) and a ``ROOT/dataset.yaml`` naming the set. A
few frames get no label file: they are the unlabelled (inference-only) frames.

The world, the LiDAR and its mount are those of the synthetic nuScenes set (:mod:`.writer`), at
keyframes only (0.5 s apart); objects are labelled within :data:`LABEL_RADIUS` of the sensor when
at least one LiDAR point hits them, with the classes of :data:`CLASS_OF_KIND`. Output is a pure
function of the arguments.
"""

import json
import logging
import math
import numpy as np
import os
import shutil
from typing import Optional, Sequence

from d2_pillars.utils.file_io import atomic_open

from .formats import GenerationOptions
from .geometry import quaternion_from_ypr, quaternion_to_matrix
from .lidar import LidarSimulator
from .nuscenes_format import NUSCENES_FORMAT
from .world import KIND_NAMES, build_world
from .writer import _simulate_sweep

__all__ = ["CLASS_OF_KIND", "LABEL_RADIUS", "FILE_FORMATS", "make_synthetic_custom"]

logger = logging.getLogger(__name__)

#: Object kind of the world -> own-data class; other kinds are unlabelled background.
CLASS_OF_KIND = {
    "car": "Car",
    "truck": "Truck",
    "bus": "Truck",
    "pedestrian": "Pedestrian",
    "bicycle": "Cyclist",
    "motorcycle": "Cyclist",
}
#: Objects are labelled up to this BEV distance from the sensor (m).
LABEL_RADIUS = 50.0
#: Point file formats, used by turns (frame index modulo their number).
FILE_FORMATS = ("bin", "npy", "pcd", "ply", "las")
_MARKER = ".d2_pillars_synthetic_custom.json"


def _write_points(path: str, points: np.ndarray, fmt: str) -> None:
    """Write (N, 4) float32 x, y, z, intensity (0..255) with the format's library."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    if fmt == "bin":
        with atomic_open(path, "wb") as f:
            f.write(points.tobytes())
    elif fmt == "npy":
        with atomic_open(path, "wb") as f:
            np.save(f, points)
    elif fmt == "pcd":
        from pypcd4 import Encoding, PointCloud

        with atomic_open(path, "wb") as f:
            PointCloud.from_xyzi_points(points).save(f, encoding=Encoding.BINARY_COMPRESSED)
    elif fmt == "ply":
        from plyfile import PlyData, PlyElement

        vertex = np.empty(len(points), dtype=[(n, "f4") for n in ("x", "y", "z", "intensity")])
        for i, n in enumerate(("x", "y", "z", "intensity")):
            vertex[n] = points[:, i]
        with atomic_open(path, "wb") as f:
            PlyData([PlyElement.describe(vertex, "vertex")]).write(f)
    elif fmt == "las":
        import laspy

        header = laspy.LasHeader(point_format=1, version="1.2")
        header.scales = np.array([0.001, 0.001, 0.001])
        header.offsets = np.zeros(3)
        las = laspy.LasData(header)
        las.x, las.y, las.z = points[:, 0], points[:, 1], points[:, 2]
        # 0..255 -> 0..65535 (the reader's default LAS scale maps it back).
        las.intensity = np.round(np.clip(points[:, 3], 0, 255) * 257.0).astype(np.uint16)
        with atomic_open(path, "wb") as f:
            las.write(f)
    else:
        raise ValueError(f"unknown point file format {fmt!r}; choose one of {FILE_FORMATS}")


def _label_lines(centers, wlh, yaw, kinds, counts, rot, origin) -> list:
    """``x y z dx dy dz yaw class`` of the labelled objects, in the sensor frame."""
    lines = []
    local = (centers - origin) @ rot  # (N, 3): R^T (c - o)
    for i in range(len(centers)):
        cls = CLASS_OF_KIND.get(KIND_NAMES[kinds[i]])
        if cls is None or counts[i] < 1 or math.hypot(local[i, 0], local[i, 1]) > LABEL_RADIUS:
            continue
        heading = rot.T @ np.array([math.cos(yaw[i]), math.sin(yaw[i]), 0.0])
        yaw_s = math.atan2(heading[1], heading[0])
        w, length, h = wlh[i]
        x, y, z = local[i]
        lines.append(f"{x:.3f} {y:.3f} {z:.3f} {length:.3f} {w:.3f} {h:.3f} {yaw_s:.4f} {cls}")
    return lines


def _scene(options: GenerationOptions, root: str, scene: int, formats, unlabelled: set) -> list:
    spec = NUSCENES_FORMAT
    _, lidar = spec.resolve(options)
    rng = np.random.default_rng([options.seed, 7, scene])
    step = spec.sweep_period_ns * spec.keyframe_every / 1e9
    times = np.arange(options.keyframes_per_scene) * step
    world = build_world(
        rng, spec.world, float(times[-1]), rng.uniform(300.0, 2500.0, 2), lidar.max_range
    )
    ego_t, ego_q = world.ego_pose(times)
    ego_r = quaternion_to_matrix(ego_q)
    cs_r = quaternion_to_matrix(quaternion_from_ypr(*np.deg2rad(spec.mount_ypr_deg)))
    cs_t = np.asarray(spec.mount_translation)
    sim = LidarSimulator(lidar)
    ids = []
    for k, t in enumerate(times):
        rot, origin = ego_r[k] @ cs_r, ego_r[k] @ cs_t + ego_t[k]
        sweep = _simulate_sweep(spec, lidar, sim, world, rng, t, rot, origin, True)
        token = f"{scene:03d}_{k:03d}"
        fmt = formats[(scene * options.keyframes_per_scene + k) % len(formats)]
        _write_points(os.path.join(root, "points", f"{token}.{fmt}"), sweep.points[:, :4], fmt)
        ids.append(token)
        if token in unlabelled:
            continue
        centers, yaw = world.boxes_at(t)
        near = sweep.near
        lines = _label_lines(
            centers[near], world.wlh[near], yaw[near], world.kind[near], sweep.counts, rot, origin
        )
        with atomic_open(os.path.join(root, "labels", f"{token}.txt"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
    return ids


def make_synthetic_custom(
    out_dir: str,
    *,
    num_scenes: int = 10,
    keyframes_per_scene: int = 20,
    seed: int = 0,
    num_val_scenes: Optional[int] = None,
    num_unlabelled: int = 4,
    formats: Sequence[str] = FILE_FORMATS,
    num_beams: Optional[int] = None,
    azimuth_steps: Optional[int] = None,
    force: bool = False,
) -> str:
    """Write the synthetic world in the own-data layout under ``out_dir``; returns the root.

    Args:
        num_scenes, keyframes_per_scene: size (frames 0.5 s apart in each scene).
        num_val_scenes: the last scenes, listed in ``splits/val.txt`` (the rest in train.txt);
            default 20 % of the scenes, at least 1.
        num_unlabelled: frames without a label file (the last frame of the first scenes).
        formats: point file formats used by turns.
        num_beams, azimuth_steps: override the LiDAR resolution (tests use small ones).
        force: rewrite an existing dataset of other arguments (the same ones return at once).
    """
    if num_val_scenes is None:
        num_val_scenes = max(1, int(round(0.2 * num_scenes))) if num_scenes > 1 else 0
    if not 0 <= num_val_scenes < num_scenes:
        raise ValueError(f"need 0 <= num_val_scenes < num_scenes, got {num_val_scenes}")
    unknown = set(formats) - set(FILE_FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be some of {FILE_FORMATS}, got {list(formats)}")
    options = GenerationOptions(
        num_scenes, keyframes_per_scene, seed, None, num_beams, azimuth_steps
    )
    params = {
        "num_scenes": num_scenes,
        "keyframes_per_scene": keyframes_per_scene,
        "seed": seed,
        "num_val_scenes": num_val_scenes,
        "num_unlabelled": num_unlabelled,
        "formats": list(formats),
        "num_beams": num_beams,
        "azimuth_steps": azimuth_steps,
    }
    root = os.path.abspath(os.fspath(out_dir))
    marker = os.path.join(root, _MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == params and not force:
                logger.info("Synthetic own-data set already complete at %s; skipping", root)
                return root
        if not force:
            raise FileExistsError(
                f"{root} holds a synthetic own-data set of other arguments; pass force=True "
                "(--force) or choose another folder"
            )
    elif any(os.path.exists(os.path.join(root, d)) for d in ("points", "labels")):
        raise FileExistsError(
            f"{root}/points or labels exists and was not written by the generator; refusing to "
            "overwrite what may be real data. Choose another folder."
        )
    else:
        os.makedirs(root, exist_ok=True)
    for sub in ("points", "labels", "splits", "d2_pillars"):
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        if sub != "d2_pillars":
            os.makedirs(os.path.join(root, sub))
    if os.path.exists(marker):
        os.remove(marker)
    unlabelled = {f"{s:03d}_{keyframes_per_scene - 1:03d}" for s in range(num_unlabelled)}
    per_scene = [_scene(options, root, s, tuple(formats), unlabelled) for s in range(num_scenes)]
    n_train = num_scenes - num_val_scenes
    for split, scenes in (("train", per_scene[:n_train]), ("val", per_scene[n_train:])):
        with atomic_open(os.path.join(root, "splits", f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for ids in scenes for i in ids))
    with atomic_open(os.path.join(root, "dataset.yaml"), "w") as f:
        f.write(
            "# Synthetic own-data set (tools/make_synthetic_dataset.py --format custom)\n"
            "name: synthetic_custom\n"
            "point_dim: 4          # .bin / .npy columns: x y z intensity\n"
            "box_origin: center    # label z is the box centre\n"
        )
    with atomic_open(marker, "w") as f:
        json.dump(params, f)
    return root
