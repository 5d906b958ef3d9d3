"""Point-cloud files of any common format read into one array: ``x, y, z, intensity``.

One reader per format, each through the format's maintained library (no hand-written parser):

==============  ===========================================  ==================================
extension       library                                      intensity taken from
==============  ===========================================  ==================================
``.bin``        numpy: raw float32, ``point_dim`` per point  the column named ``intensity``/``i``
``.npy``        numpy: (N, D) array or structured array      as ``.bin`` / the field by name
``.pcd``        ``pypcd4`` (ascii, binary, binary_compressed) field ``intensity`` or ``i``
``.ply``        ``plyfile`` (ascii, binary)                  ``intensity``/``scalar_intensity``
``.las/.laz``   ``laspy`` (LAZ through ``lazrs``)            the LAS intensity (uint16), scaled
==============  ===========================================  ==================================

Every reader returns a :class:`PointFile`: ``points`` (N, 4) float32 with the columns of
:data:`CLOUD_COLUMNS` and the ``offset`` (3,) float64 that was subtracted from x, y, z. Only LAS
files are recentred: survey files hold georeferenced coordinates (10^5 - 10^6 m) that float32
cannot carry to the centimetre, so a file whose x or y exceed :data:`RECENTER_THRESHOLD` loses
the rounded centre of its bounding box (in float64, before the cast) and reports it, so boxes
found in it map back by adding the offset. A file without intensity gets 0 (``has_intensity``
False; the callers warn once). Rows holding NaN or inf (no-return points of organised PCDs) are
dropped and counted in ``num_dropped``.

Problems raise :class:`PointFileError` naming the file and the reason: missing, an unknown
extension, a ``.bin`` whose size is not a whole number of points, a file the library cannot
parse, or one without x, y, z.
"""

import dataclasses
import logging
import numpy as np
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

__all__ = [
    "CLOUD_COLUMNS",
    "POINT_FILE_EXTENSIONS",
    "RECENTER_THRESHOLD",
    "DEFAULT_LAS_INTENSITY_SCALE",
    "PointFile",
    "PointFileError",
    "point_file_format",
    "read_point_file",
    "default_columns",
]

logger = logging.getLogger(__name__)

#: Columns of every cloud a reader returns, in order.
CLOUD_COLUMNS = ("x", "y", "z", "intensity")
#: Extension (lower case, with the dot) -> format name.
POINT_FILE_EXTENSIONS = {
    ".bin": "bin",
    ".npy": "npy",
    ".pcd": "pcd",
    ".ply": "ply",
    ".las": "las",
    ".laz": "las",
}
#: LAS files whose |x| or |y| exceed this (m) are recentred.
RECENTER_THRESHOLD = 1.0e4
#: LAS intensity is uint16 (0..65535); this maps it to the 0..255 of nuScenes-like sensors.
DEFAULT_LAS_INTENSITY_SCALE = 255.0 / 65535.0
# Field names read as intensity, in order of preference (lower case).
_INTENSITY_NAMES = ("intensity", "i", "scalar_intensity", "reflectance", "remission")


class PointFileError(ValueError):
    """A point file is missing, truncated, unreadable or lacks x, y, z; the message names the
    file, the reason and the command that lists every such file (``path``, ``reason``: the
    parts)."""

    def __init__(self, message: str, path: str = "", reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason or message


@dataclasses.dataclass
class PointFile:
    """A point file as read.

    Attributes:
        points: (N, 4) float32, columns :data:`CLOUD_COLUMNS` (m, m, m, file units x scale).
        offset: (3,) float64 subtracted from x, y, z (zeros unless a LAS file was recentred).
        has_intensity: the file has an intensity field (else the column is 0).
        num_dropped: rows dropped for NaN / inf values.
        format: the format name (``bin``, ``npy``, ``pcd``, ``ply``, ``las``).
    """

    points: np.ndarray
    offset: np.ndarray
    has_intensity: bool
    num_dropped: int
    format: str


def _error(path: str, reason: str) -> PointFileError:
    return PointFileError(
        f"Point file {path}: {reason}. `python tools/create_data.py custom --root ROOT --check` "
        "lists every broken file of a dataset.",
        path,
        reason,
    )


def point_file_format(path: str) -> Optional[str]:
    """The format name of ``path`` from its extension (case-insensitive), None if unknown."""
    return POINT_FILE_EXTENSIONS.get(os.path.splitext(os.fspath(path))[1].lower())


def default_columns(point_dim: int) -> Tuple[str, ...]:
    """Column names of a raw ``.bin`` / 2-D ``.npy`` with ``point_dim`` values per point:
    ``x, y, z, intensity``, then ``col4, col5, ...``."""
    if point_dim < 3:
        raise ValueError(f"point files need at least x, y, z per point; got point_dim={point_dim}")
    extra = tuple(f"col{i}" for i in range(len(CLOUD_COLUMNS), point_dim))
    return (CLOUD_COLUMNS + extra)[:point_dim]


def _intensity_index(names: Sequence[str]) -> Optional[int]:
    lower = [n.lower() for n in names]
    for candidate in _INTENSITY_NAMES:
        if candidate in lower:
            return lower.index(candidate)
    return None


def _columns(path: str, columns: Sequence[str]) -> Tuple[Tuple[int, int, int], Optional[int]]:
    lower = [c.lower() for c in columns]
    try:
        xyz = tuple(lower.index(c) for c in ("x", "y", "z"))
    except ValueError:
        raise _error(path, f"its columns {list(columns)} do not name x, y and z") from None
    return xyz, _intensity_index(columns)


# Each reader: (path, options) -> (xyz (N, 3) float32|float64, intensity (N,) or None).
def _read_bin(path: str, point_dim: int, columns: Optional[Sequence[str]], **_):
    columns = tuple(columns) if columns else default_columns(point_dim)
    if len(columns) != point_dim:
        raise ValueError(f"{len(columns)} column names {list(columns)} for point_dim={point_dim}")
    size = os.path.getsize(path)
    point_bytes = 4 * point_dim
    if size % point_bytes:
        raise _error(
            path,
            f"{size} bytes is not a whole number of points of {point_dim} float32 values "
            f"({point_bytes} bytes): the file is truncated, or its points have another number of "
            "values (set point_dim in ROOT/dataset.yaml, or --point-dim)",
        )
    data = np.fromfile(path, dtype=np.float32).reshape(-1, point_dim)
    (ix, iy, iz), ii = _columns(path, columns)
    return data[:, [ix, iy, iz]], (None if ii is None else data[:, ii])


def _read_npy(path: str, point_dim: int, columns: Optional[Sequence[str]], **_):
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # not an .npy, truncated, object array
        raise _error(
            path, f"numpy cannot read it as an .npy array ({type(e).__name__}: {e})"
        ) from e
    if data.dtype.names:  # structured array: fields by name
        names = data.dtype.names
        (ix, iy, iz), ii = _columns(path, names)
        xyz = np.stack([data[names[i]] for i in (ix, iy, iz)], axis=1)
        return xyz, (None if ii is None else data[names[ii]])
    if data.ndim != 2 or data.shape[1] < 3 or data.dtype.kind not in "fiu":
        raise _error(path, f"expected an (N, D >= 3) numeric array, got {data.dtype} {data.shape}")
    if columns and len(columns) == data.shape[1]:
        names = tuple(columns)
    else:
        names = default_columns(data.shape[1])
    (ix, iy, iz), ii = _columns(path, names)
    return data[:, [ix, iy, iz]], (None if ii is None else data[:, ii])


def _read_pcd(path: str, **_):
    from pypcd4 import PointCloud

    try:
        cloud = PointCloud.from_path(path)
        data = cloud.pc_data
    except Exception as e:  # pypcd4 raises bare ValueError/KeyError/... on a bad header or body
        raise _error(path, f"pypcd4 cannot read it as a PCD file ({type(e).__name__}: {e})") from e
    names = data.dtype.names or ()
    (ix, iy, iz), ii = _columns(path, names)
    xyz = np.stack([data[names[i]] for i in (ix, iy, iz)], axis=1)
    return xyz, (None if ii is None else data[names[ii]])


def _read_ply(path: str, **_):
    from plyfile import PlyData

    try:
        ply = PlyData.read(path)
        vertex = ply["vertex"].data
    except Exception as e:  # PlyParseError, KeyError (no vertex element), truncated body
        raise _error(
            path, f"plyfile cannot read its vertex element ({type(e).__name__}: {e})"
        ) from e
    names = vertex.dtype.names or ()
    (ix, iy, iz), ii = _columns(path, names)
    xyz = np.stack([vertex[names[i]] for i in (ix, iy, iz)], axis=1)
    return xyz, (None if ii is None else vertex[names[ii]])


def _read_las(path: str, las_intensity_scale: float = DEFAULT_LAS_INTENSITY_SCALE, **_):
    import laspy

    try:
        las = laspy.read(path)
        # Scaled coordinates in float64 (georeferenced values need it).
        xyz = np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1)
        intensity = np.asarray(las.intensity, dtype=np.float32) * np.float32(las_intensity_scale)
    except Exception as e:  # LaspyException, truncated chunk, missing LAZ backend
        raise _error(
            path, f"laspy cannot read it as a LAS/LAZ file ({type(e).__name__}: {e})"
        ) from e
    return xyz, intensity


_READERS: Dict[str, Callable] = {
    "bin": _read_bin,
    "npy": _read_npy,
    "pcd": _read_pcd,
    "ply": _read_ply,
    "las": _read_las,
}


def _recenter_offset(xyz: np.ndarray) -> np.ndarray:
    """Rounded bounding-box centre of x, y (and z when it is large too), or zeros."""
    offset = np.zeros(3)
    if xyz.shape[0] == 0:
        return offset
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.any():
        return offset
    lo, hi = xyz[finite].min(axis=0), xyz[finite].max(axis=0)
    big = np.maximum(np.abs(lo), np.abs(hi)) > RECENTER_THRESHOLD
    if big[:2].any():
        offset = np.where(big, np.round((lo + hi) / 2.0), 0.0)
    return offset


def read_point_file(
    path: str,
    *,
    point_dim: int = 4,
    columns: Optional[Sequence[str]] = None,
    intensity_scale: float = 1.0,
    las_intensity_scale: float = DEFAULT_LAS_INTENSITY_SCALE,
    offset: Optional[Sequence[float]] = None,
) -> PointFile:
    """Read a point file of any supported format.

    Args:
        path: the file; its extension picks the reader (:data:`POINT_FILE_EXTENSIONS`).
        point_dim: float32 values per point of a ``.bin`` file.
        columns: names of the ``.bin`` / 2-D ``.npy`` columns (default ``x, y, z, intensity,
            col4, ...``); x, y, z and intensity are found by name.
        intensity_scale: multiplies the intensity of every format.
        las_intensity_scale: multiplies the LAS uint16 intensity (before ``intensity_scale``).
        offset: subtract this (3,) from x, y, z instead of the automatic LAS recentring (the
            offset stored in an info record, so training reads a frame as it was checked).

    Returns:
        PointFile: the (N, 4) cloud, the offset subtracted, whether it had intensity, the number
        of non-finite rows dropped.

    Raises:
        PointFileError: missing / truncated / unreadable file, unknown extension, no x, y, z.
    """
    path = os.fspath(path)
    fmt = point_file_format(path)
    if fmt is None:
        raise _error(
            path,
            f"unknown extension; supported: {', '.join(sorted(POINT_FILE_EXTENSIONS))}",
        )
    if not os.path.isfile(path):
        raise _error(path, "the file does not exist")
    xyz, intensity = _READERS[fmt](
        path, point_dim=int(point_dim), columns=columns, las_intensity_scale=las_intensity_scale
    )
    if offset is None:
        offset = _recenter_offset(xyz) if fmt == "las" else np.zeros(3)
    offset = np.asarray(offset, dtype=np.float64).reshape(3)
    n = xyz.shape[0]
    points = np.empty((n, 4), dtype=np.float32)
    if offset.any():
        points[:, :3] = np.asarray(xyz, dtype=np.float64) - offset
    else:
        points[:, :3] = xyz
    if intensity is None:
        points[:, 3] = 0.0
    else:
        points[:, 3] = np.asarray(intensity, dtype=np.float32) * np.float32(intensity_scale)
    finite = np.isfinite(points).all(axis=1)
    dropped = int(n - finite.sum())
    if dropped:
        points = points[finite]
    return PointFile(points, offset, intensity is not None, dropped, fmt)
