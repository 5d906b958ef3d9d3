"""Point-file readers, each against files written by the format's own library, and the loader's
dispatch by extension."""

import logging
import numpy as np
import os
import pytest

from d2_pillars.data.point_files import (
    DEFAULT_LAS_INTENSITY_SCALE,
    PointFileError,
    point_file_format,
    read_point_file,
)
from d2_pillars.data.points import load_lidar_file, load_points


@pytest.fixture
def cloud():
    """(50, 4) float32 x, y, z, intensity (0..255, whole numbers: exact in every format)."""
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-40, 40, (50, 3)).astype(np.float32)
    intensity = rng.integers(0, 256, (50, 1)).astype(np.float32)
    return np.concatenate([xyz, intensity], 1)


def _write_pcd(path, points, encoding, fields=("x", "y", "z", "intensity")):
    from pypcd4 import Encoding, PointCloud

    pc = PointCloud.from_points(points, list(fields), [np.float32] * len(fields))
    pc.save(str(path), encoding=getattr(Encoding, encoding))


def _write_ply(path, points, text, names=("x", "y", "z", "intensity")):
    from plyfile import PlyData, PlyElement

    vertex = np.empty(len(points), dtype=[(n, "f4") for n in names])
    for i, n in enumerate(names):
        vertex[n] = points[:, i]
    PlyData([PlyElement.describe(vertex, "vertex")], text=text).write(str(path))


def _write_las(path, xyz, intensity, offsets=(0.0, 0.0, 0.0)):
    import laspy

    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.asarray(offsets, dtype=np.float64)
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    las.intensity = intensity.astype(np.uint16)
    las.write(str(path))


def test_bin_and_npy(tmp_path, cloud):
    cloud.tofile(tmp_path / "a.bin")
    np.save(tmp_path / "a.npy", cloud)
    for name in ("a.bin", "a.npy"):
        pf = read_point_file(str(tmp_path / name))
        np.testing.assert_array_equal(pf.points, cloud)
        assert pf.has_intensity and not pf.offset.any()
    # 5 values per point, intensity named in the 4th place of a custom column order
    five = np.concatenate([cloud[:, 3:4], cloud[:, :3], np.ones((50, 1), np.float32)], 1)
    five.tofile(tmp_path / "b.bin")
    pf = read_point_file(str(tmp_path / "b.bin"), point_dim=5, columns=["i", "x", "y", "z", "ring"])
    np.testing.assert_array_equal(pf.points, cloud)


def test_structured_npy_and_xyz_only(tmp_path, cloud):
    arr = np.empty(50, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    for i, n in enumerate("xyz"):
        arr[n] = cloud[:, i]
    np.save(tmp_path / "s.npy", arr)
    pf = read_point_file(str(tmp_path / "s.npy"))
    np.testing.assert_array_equal(pf.points[:, :3], cloud[:, :3])
    assert not pf.has_intensity and (pf.points[:, 3] == 0).all()


@pytest.mark.parametrize("encoding", ["ASCII", "BINARY", "BINARY_COMPRESSED"])
def test_pcd(tmp_path, cloud, encoding):
    path = tmp_path / f"a_{encoding}.pcd"
    _write_pcd(path, cloud, encoding)
    pf = read_point_file(str(path))
    np.testing.assert_allclose(pf.points, cloud, atol=1e-4)
    assert pf.has_intensity and pf.format == "pcd"
    # field "i" is intensity too; a PCD without intensity gives 0
    _write_pcd(tmp_path / "i.pcd", cloud, encoding, ("x", "y", "z", "i"))
    np.testing.assert_allclose(read_point_file(str(tmp_path / "i.pcd")).points, cloud, atol=1e-4)
    _write_pcd(tmp_path / "xyz.pcd", cloud[:, :3], encoding, ("x", "y", "z"))
    pf = read_point_file(str(tmp_path / "xyz.pcd"))
    assert not pf.has_intensity and (pf.points[:, 3] == 0).all()


@pytest.mark.parametrize("text", [True, False])
def test_ply(tmp_path, cloud, text):
    _write_ply(tmp_path / "a.ply", cloud, text)
    pf = read_point_file(str(tmp_path / "a.ply"))
    np.testing.assert_allclose(pf.points, cloud, atol=1e-4)
    _write_ply(tmp_path / "b.ply", cloud, text, ("x", "y", "z", "scalar_intensity"))
    assert read_point_file(str(tmp_path / "b.ply")).has_intensity


@pytest.mark.parametrize("ext", ["las", "laz"])
def test_las_intensity_scaled(tmp_path, cloud, ext):
    path = tmp_path / f"a.{ext}"
    _write_las(path, cloud[:, :3], cloud[:, 3] * 257)
    pf = read_point_file(str(path))
    np.testing.assert_allclose(pf.points[:, :3], cloud[:, :3], atol=1e-3)  # 1 mm LAS scale
    np.testing.assert_allclose(pf.points[:, 3], cloud[:, 3] * 257 * DEFAULT_LAS_INTENSITY_SCALE)
    np.testing.assert_allclose(pf.points[:, 3], cloud[:, 3], atol=1e-3)
    assert not pf.offset.any()
    scaled = read_point_file(str(path), las_intensity_scale=1.0, intensity_scale=0.5)
    np.testing.assert_allclose(scaled.points[:, 3], cloud[:, 3] * 257 * 0.5)


def test_georeferenced_las_recentred(tmp_path, cloud):
    origin = np.array([512345.678, 5412345.123, 250.0])
    xyz = cloud[:, :3].astype(np.float64) + origin
    _write_las(tmp_path / "geo.las", xyz, cloud[:, 3], offsets=origin.round())
    pf = read_point_file(str(tmp_path / "geo.las"))
    assert abs(pf.offset[0]) > 1e5 and abs(pf.offset[1]) > 1e6 and pf.offset[2] == 0
    assert np.abs(pf.points[:, :2]).max() < 100  # recentred: float32 keeps millimetres
    np.testing.assert_allclose(pf.points[:, :3] + pf.offset, xyz, atol=2e-3)
    # an offset given (the one stored in an info record) is used as is
    again = read_point_file(str(tmp_path / "geo.las"), offset=pf.offset)
    np.testing.assert_array_equal(again.points, pf.points)


def test_nan_rows_dropped(tmp_path, cloud):
    cloud[3, 0] = np.nan
    cloud[7, 2] = np.inf
    cloud.tofile(tmp_path / "n.bin")
    pf = read_point_file(str(tmp_path / "n.bin"))
    assert pf.num_dropped == 2 and len(pf.points) == 48 and np.isfinite(pf.points).all()


def test_errors_name_file_and_reason(tmp_path, cloud):
    (tmp_path / "t.bin").write_bytes(cloud.tobytes()[:-6])
    with pytest.raises(PointFileError, match=r"t\.bin.*not a whole number of points"):
        read_point_file(str(tmp_path / "t.bin"))
    for name, lib in (("bad.pcd", "pypcd4"), ("bad.ply", "plyfile"), ("bad.las", "laspy")):
        (tmp_path / name).write_bytes(b"garbage, not a point cloud\n" * 3)
        with pytest.raises(PointFileError, match=rf"{name}.*{lib} cannot read") as e:
            read_point_file(str(tmp_path / name))
        assert e.value.path == str(tmp_path / name) and "cannot read" in e.value.reason
    with pytest.raises(PointFileError, match="unknown extension"):
        read_point_file(str(tmp_path / "a.xyz"))
    with pytest.raises(PointFileError, match="does not exist"):
        read_point_file(str(tmp_path / "missing.pcd"))
    np.save(tmp_path / "flat.npy", np.zeros(10, np.float32))
    with pytest.raises(PointFileError, match=r"flat\.npy.*\(N, D >= 3\)"):
        read_point_file(str(tmp_path / "flat.npy"))
    assert point_file_format("A.LAZ") == "las" and point_file_format("x.pcd.bin") == "bin"


def test_loader_dispatches_by_extension(tmp_path, cloud, capture_logs):
    _write_pcd(tmp_path / "a.pcd", cloud[:, :3], "BINARY", ("x", "y", "z"))
    from d2_pillars.data import points as points_module

    points_module._warned_no_intensity = False
    with capture_logs("d2_pillars.data.points", level=logging.WARNING) as logs:
        pts = load_lidar_file(str(tmp_path / "a.pcd"), load_dim=5)
        load_lidar_file(str(tmp_path / "a.pcd"), load_dim=5)
    assert pts.shape == (50, 5) and (pts[:, 3:] == 0).all()  # intensity and ring: 0
    np.testing.assert_allclose(pts[:, :3], cloud[:, :3], atol=1e-5)
    assert sum("no intensity" in r.getMessage() for r in logs) == 1  # one warning
    # a raw .bin without options keeps the nuScenes reading (load_dim values per point)
    np.concatenate([cloud, np.zeros((50, 1), np.float32)], 1).tofile(tmp_path / "n.bin")
    assert load_lidar_file(str(tmp_path / "n.bin"), load_dim=5).shape == (50, 5)
    # a record's reader options reach the file (own data: .bin of 4 values, load_dim 4)
    cloud.tofile(tmp_path / "c.bin")
    record = {
        "lidar_path": str(tmp_path / "c.bin"),
        "timestamp": 0.0,
        "sweeps": [],
        "point_file": {"point_dim": 4, "columns": ["x", "y", "z", "intensity"]},
    }
    out = load_points(record, point_features=["x", "y", "z", "intensity"], load_dim=4)
    np.testing.assert_array_equal(out, cloud)
    assert os.path.exists(tmp_path / "c.bin")
