"""Point loading: the keyframe LiDAR file plus previous sweeps, merged in the keyframe LiDAR frame.

LiDAR files are raw float32 arrays of ``load_dim`` values per point; nuScenes and Lyft store
``x, y, z, intensity, ring`` (``load_dim`` 5). A merged cloud is a float32 array ``(N, C)`` whose
columns are picked by name (``INPUT.POINT_FEATURES``) from the file columns and ``time_lag``:

* ``time_lag`` = keyframe timestamp - sweep timestamp, in seconds (0 for the keyframe). It takes
  the place of the reference's 5th column (which it sets to 0 for the keyframe and to the time lag
  for sweeps); ``ring`` stays the raw ring index when requested.
* Sweeps are moved into the keyframe LiDAR frame with their ``sweep2lidar`` 4x4 transform
  (``p @ R.T + t``); an optional global transform (the training augmentation) is folded into the
  same matrix product, so every point is transformed exactly once.

Each file is read once (``np.fromfile``) and each point written once into the output array.

Files of other formats (``.npy``, ``.pcd``, ``.ply``, ``.las``/``.laz``; see ``point_files.py``),
and any file of a record with ``point_file`` options (own data: ``point_dim``, ``columns``,
intensity scales, the LAS ``offset``), are read by ``point_files.read_point_file`` into
``x, y, z, intensity`` and padded with zero columns (e.g. ``ring``) up to ``load_dim``.
"""

import logging
import numpy as np
import os
from typing import List, Optional, Sequence, Tuple
import torch

from .point_files import PointFileError, point_file_format, read_point_file

__all__ = [
    "FILE_COLUMNS",
    "PointFileError",
    "load_lidar_file",
    "feature_columns",
    "select_sweeps",
    "load_points",
]

logger = logging.getLogger(__name__)

# Names of the values stored per point in nuScenes / Lyft LiDAR files, in order.
FILE_COLUMNS = ("x", "y", "z", "intensity", "ring")
TIME_LAG = "time_lag"


def _file_column_names(load_dim: int) -> Tuple[str, ...]:
    if load_dim < 3:
        raise ValueError(f"LiDAR files need at least x, y, z per point; got load_dim={load_dim}")
    extra = tuple(f"col{i}" for i in range(len(FILE_COLUMNS), load_dim))
    return (FILE_COLUMNS + extra)[:load_dim]


_warned_no_intensity = False


def _load_point_file(path: str, load_dim: int, options: Optional[dict]) -> np.ndarray:
    global _warned_no_intensity
    pf = read_point_file(path, **(options or {}))
    if not pf.has_intensity and not _warned_no_intensity:
        _warned_no_intensity = True
        logger.warning("%s has no intensity field: its intensity is 0 (warned once)", path)
    if pf.num_dropped:
        logger.warning("Dropped %d points with NaN/inf values from %s", pf.num_dropped, path)
    points = pf.points
    if load_dim <= points.shape[1]:
        return np.ascontiguousarray(points[:, :load_dim])
    pad = np.zeros((points.shape[0], load_dim - points.shape[1]), dtype=np.float32)
    return np.concatenate([points, pad], axis=1)


def load_lidar_file(path: str, load_dim: int = 5, options: Optional[dict] = None) -> np.ndarray:
    """Read a LiDAR file into an ``(N, load_dim)`` float32 array.

    A ``.bin`` without ``options`` is a raw float32 file of ``load_dim`` values per point
    (nuScenes, Lyft). Other formats, and files with ``options`` (the keywords of
    ``point_files.read_point_file``, as own-data records store them), give ``x, y, z, intensity``
    padded with zero columns to ``load_dim`` (or cut to it).

    Raises:
        PointFileError: the file is missing, or its size is not a multiple of ``4 * load_dim``
            bytes (a truncated or corrupt file), or (other formats) it cannot be read.
    """
    if options is not None or point_file_format(path) not in (None, "bin"):
        return _load_point_file(path, load_dim, options)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise PointFileError(
            f"LiDAR file {path} does not exist. Check the dataset root, or list every missing "
            "file with `python tools/create_data.py <nuscenes|lyft> --root DATASET_ROOT "
            "--version VERSION --check`."
        ) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        point_bytes = 4 * load_dim
        if size % point_bytes:
            whole = size - size % point_bytes
            raise PointFileError(
                f"LiDAR file {path} has {size} bytes, not a whole number of points of "
                f"{load_dim} float32 values ({point_bytes} bytes): it is truncated or corrupt "
                "(the Lyft release has one such file, host-a011_lidar1_1233090652702363606.bin, "
                "whose last point lacks its last 2 values). Fix: restore the file from the "
                f"dataset archive, or drop the partial last point with `truncate -s {whole} "
                f"{path}` (the reference's lyft_data_fixer.py instead appends the missing values "
                "100.0, 1.0). `python tools/create_data.py <nuscenes|lyft> --root DATASET_ROOT "
                "--version VERSION --check` lists every such file."
            )
        data = np.fromfile(f, dtype=np.float32)
    return data.reshape(-1, load_dim)


def feature_columns(point_features: Sequence[str], load_dim: int) -> List[int]:
    """Index of each requested feature in the file columns; -1 stands for ``time_lag``.

    ``point_features`` must start with x, y, z.
    """
    names = _file_column_names(load_dim)
    if tuple(point_features[:3]) != ("x", "y", "z"):
        raise ValueError(f"POINT_FEATURES must start with x, y, z; got {list(point_features)}")
    cols = []
    for name in point_features:
        if name == TIME_LAG:
            cols.append(-1)
        elif name in names:
            cols.append(names.index(name))
        else:
            raise ValueError(
                f"Unknown point feature {name!r}; with LOAD_DIM={load_dim} the choices are "
                f"{list(names) + [TIME_LAG]}"
            )
    if len(set(cols)) != len(cols):
        raise ValueError(f"POINT_FEATURES has duplicates: {list(point_features)}")
    return cols


def select_sweeps(
    sweeps: Sequence[dict], num_sweeps: int, rng: Optional[np.random.Generator] = None
) -> List[dict]:
    """The sweeps to merge: all if at most ``num_sweeps``; else a random subset (when ``rng`` is
    given, keeping nearest-first order) or the ``num_sweeps`` nearest."""
    if len(sweeps) <= num_sweeps:
        return list(sweeps)
    if rng is None:
        return list(sweeps[:num_sweeps])
    idx = np.sort(rng.choice(len(sweeps), num_sweeps, replace=False))
    return [sweeps[i] for i in idx]


def _remove_close(points: np.ndarray, radius: float) -> np.ndarray:
    close = (np.abs(points[:, 0]) < radius) & (np.abs(points[:, 1]) < radius)
    return points[~close] if close.any() else points


def load_points(
    record: dict,
    *,
    point_features: Sequence[str] = ("x", "y", "z", "time_lag"),
    load_dim: int = 5,
    num_sweeps: int = 10,
    sweep_rng: Optional[np.random.Generator] = None,
    remove_close_radius: float = 0.0,
    linear: Optional[np.ndarray] = None,
    offset: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Merge a keyframe and its sweeps into one cloud in the keyframe LiDAR frame.

    Args:
        record: a dataset dict (absolute ``lidar_path``, ``timestamp`` (s), ``sweeps``; own-data
            records also ``point_file``, the reader options of their files).
        point_features: output column names (x, y, z first).
        load_dim: float32 values per point in the files.
        num_sweeps: at most this many sweeps (0: keyframe only).
        sweep_rng: choose sweeps at random from this generator when there are more than
            ``num_sweeps``; None takes the nearest.
        remove_close_radius: drop sweep points with ``|x| < r`` and ``|y| < r`` in the sweep's own
            frame (the ego vehicle's returns); 0 keeps all.
        linear, offset: a global transform ``p -> p @ linear.T + offset`` applied to every point
            after the sweep transform (e.g. the augmentation; see ``transforms.GlobalTransform3D``).

    Returns:
        np.ndarray: (N, len(point_features)) float32; keyframe points first, then sweeps nearest
        first. Points with a NaN or infinite value are dropped, with a warning.
    """
    cols = feature_columns(point_features, load_dim)
    options = record.get("point_file")
    clouds = [(load_lidar_file(record["lidar_path"], load_dim, options), None, 0.0)]
    for sweep in select_sweeps(record.get("sweeps", ()), num_sweeps, sweep_rng):
        pts = load_lidar_file(sweep["lidar_path"], load_dim, options)
        if remove_close_radius > 0:
            pts = _remove_close(pts, remove_close_radius)
        clouds.append((pts, sweep["sweep2lidar"], record["timestamp"] - sweep["timestamp"]))

    total = sum(c[0].shape[0] for c in clouds)
    out = np.empty((total, len(cols)), dtype=np.float32)
    glob_lin = None if linear is None else np.asarray(linear, dtype=np.float64)
    glob_off = None if offset is None else np.asarray(offset, dtype=np.float64)
    start = 0
    for pts, sweep2lidar, time_lag in clouds:
        n = pts.shape[0]
        seg = out[start : start + n]
        start += n
        if n == 0:
            continue
        # Compose sweep -> keyframe and the global transform into one affine map.
        if sweep2lidar is not None:
            m = np.asarray(sweep2lidar, dtype=np.float64)
            rot, trans = m[:3, :3], m[:3, 3]
        else:
            rot, trans = None, None
        if glob_lin is not None:
            rot = glob_lin if rot is None else glob_lin @ rot
            trans = glob_off if trans is None else glob_lin @ trans + glob_off
        if rot is None:
            seg[:, :3] = pts[:, :3]
        else:
            # p @ R.T + t straight into the output columns (torch's addmm takes strided views;
            # numpy's matmul is ~4x slower on these (n, 3) slices).
            torch.addmm(
                torch.from_numpy(trans.astype(np.float32)),
                torch.from_numpy(pts)[:, :3],
                torch.from_numpy(np.ascontiguousarray(rot.T, dtype=np.float32)),
                out=torch.from_numpy(seg)[:, :3],
            )
        for j, c in enumerate(cols[3:], start=3):
            seg[:, j] = time_lag if c < 0 else pts[:, c]

    if np.isfinite(out).all():  # fast path on the flat array; rows only when needed
        return out
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        logger.warning(
            "Dropped %d of %d points with NaN/inf values while loading %s and its sweeps",
            int((~finite).sum()),
            total,
            record["lidar_path"],
        )
        out = out[finite]
    return out
