import numpy as np
import pickle
import pytest
import torch

from detectron2.config import get_cfg

from d2_pillars.config import add_pillars_config
from d2_pillars.layers import Voxelizer, collate_voxels
from d2_pillars.layers.voxelizer import voxelize_torch

BACKENDS = ["spconv", "torch"]


def reference_voxelize(points, voxel_size, pc_range, max_points, max_voxels):
    """Plain numpy/Python hard voxelization: float32 cell = floor((p - min) / size), cells outside
    [0, grid) dropped, voxels in point order, first ``max_voxels`` voxels and first ``max_points``
    points per voxel kept."""
    pts = np.asarray(points, dtype=np.float32)
    size = np.asarray(voxel_size, dtype=np.float32)
    vmin = np.asarray(pc_range[:3], dtype=np.float32)
    extent = np.asarray(pc_range[3:], dtype=np.float64) - np.asarray(pc_range[:3], dtype=np.float64)
    grid = np.round(extent / np.asarray(voxel_size, dtype=np.float64)).astype(np.int64)
    cell = np.floor((pts[:, :3] - vmin) / size)
    voxel_of_cell = {}
    voxels, coords, counts = [], [], []
    for p, c in zip(pts, cell):
        if not np.all((c >= 0) & (c < grid)):
            continue
        key = (int(c[2]), int(c[1]), int(c[0]))
        if key not in voxel_of_cell:
            if len(voxels) >= max_voxels:
                continue
            voxel_of_cell[key] = len(voxels)
            voxels.append(np.zeros((max_points, pts.shape[1]), dtype=np.float32))
            coords.append(key)
            counts.append(0)
        v = voxel_of_cell[key]
        if counts[v] < max_points:
            voxels[v][counts[v]] = p
            counts[v] += 1
    return (
        np.stack(voxels) if voxels else np.zeros((0, max_points, pts.shape[1]), np.float32),
        np.asarray(coords, dtype=np.int32).reshape(-1, 3),
        np.asarray(counts, dtype=np.int32),
    )


def make_cloud(seed, n, pc_range, voxel_size, c=4):
    """Points inside and outside the range, clustered (to fill voxels), and on cell borders."""
    gen = np.random.default_rng(seed)
    lo, hi = np.asarray(pc_range[:3]), np.asarray(pc_range[3:])
    span = hi - lo
    inside = lo + gen.random((n, 3)) * span
    outside = lo - 0.2 * span + gen.random((n // 4, 3)) * 1.4 * span
    hot = lo + span * 0.5 + gen.normal(size=(n // 2, 3)) * np.asarray(voxel_size) * 0.7
    borders = lo + np.round(gen.random((n // 8, 3)) * span / voxel_size) * voxel_size
    edges = np.array([lo, hi, [hi[0], lo[1], lo[2]], [lo[0], hi[1], lo[2]]])
    xyz = np.concatenate([inside, outside, hot, borders, edges])
    gen.shuffle(xyz)
    feats = gen.random((xyz.shape[0], c - 3))
    return np.concatenate([xyz, feats], axis=1).astype(np.float32)


CASES = [
    # (voxel_size, range, max_points, max_voxels)
    ([0.25, 0.25, 8.0], [-5.0, -4.0, -5.0, 5.0, 4.0, 3.0], 8, 100000),  # pillars, no voxel cap
    ([0.25, 0.25, 8.0], [-5.0, -4.0, -5.0, 5.0, 4.0, 3.0], 5, 300),  # both caps hit
    ([0.4, 0.3, 0.5], [-3.0, -3.0, -2.0, 3.0, 3.0, 1.0], 3, 150),  # a real 3D grid
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_numpy_reference(backend, case):
    voxel_size, pc_range, max_points, max_voxels = CASES[case]
    pts = make_cloud(case, 3000, pc_range, voxel_size)
    vox = Voxelizer(
        voxel_size=voxel_size,
        point_cloud_range=pc_range,
        max_points_per_voxel=max_points,
        max_voxels=max_voxels,
        num_point_features=4,
        backend=backend,
    )
    voxels, coords, num = vox(torch.from_numpy(pts))
    ref_voxels, ref_coords, ref_num = reference_voxelize(
        pts, voxel_size, pc_range, max_points, max_voxels
    )
    assert voxels.dtype == torch.float32 and coords.dtype == num.dtype == torch.int32
    assert coords.shape[1] == 3 and voxels.shape[1:] == (max_points, 4)
    np.testing.assert_array_equal(coords.numpy(), ref_coords)
    np.testing.assert_array_equal(num.numpy(), ref_num)
    np.testing.assert_array_equal(voxels.numpy(), ref_voxels)
    if case == 1:  # the caps were hit
        assert len(ref_num) == max_voxels and ref_num.max() == max_points
    # A second call gives the same result (spconv's reused buffers are reset).
    again = vox(torch.from_numpy(pts))
    assert all(torch.equal(a, b) for a, b in zip(again, (voxels, coords, num)))


def nuscenes_voxelizer(backend, max_voxels=40000, voxel_size=(0.25, 0.25, 8.0)):
    """The nuScenes reference voxelizer (+-50 m, 4 point features) on ``backend``."""
    return Voxelizer(
        voxel_size=list(voxel_size),
        point_cloud_range=[-50.0, -50.0, -5.0, 50.0, 50.0, 3.0],
        max_points_per_voxel=64,
        max_voxels=max_voxels,
        num_point_features=4,
        backend=backend,
    )


@pytest.mark.parametrize("max_voxels", [40000, 2000])
def test_torch_path_equals_spconv_on_a_large_cloud(max_voxels):
    gen = torch.Generator().manual_seed(0)
    n = 60000
    xyz = torch.randn(n, 3, generator=gen) * torch.tensor([25.0, 25.0, 2.0])
    xyz[: n // 3] *= 0.03  # dense centre: voxels over 64 points
    pts = torch.cat([xyz, torch.rand(n, 1, generator=gen)], dim=1)
    pts[5] = float("nan")
    a = nuscenes_voxelizer("spconv", max_voxels)(pts)
    b = nuscenes_voxelizer("torch", max_voxels)(pts)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert a[2].max() == 64


def test_spconv_reuse_leaves_no_stale_points():
    """The spconv generator's buffer is reused without spconv's full clear: a large cloud, then
    smaller ones (and an empty one), give the zero padding and values of a fresh voxelizer."""
    gen = torch.Generator().manual_seed(1)

    def cloud(n, spread):
        xyz = torch.randn(n, 3, generator=gen) * torch.tensor([spread, spread, 1.0])
        return torch.cat([xyz, torch.rand(n, 1, generator=gen) + 1.0], dim=1)

    reused = nuscenes_voxelizer("spconv")
    for pts in (cloud(50000, 20.0), cloud(3000, 5.0), torch.zeros(0, 4), cloud(20000, 0.5)):
        got = reused(pts)
        expected = nuscenes_voxelizer("torch")(pts)
        for x, y in zip(got, expected):
            assert torch.equal(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_all_outside(backend):
    vox = nuscenes_voxelizer(backend)
    for pts in (torch.zeros(0, 4), torch.full((10, 4), 100.0)):
        voxels, coords, num = vox(pts)
        assert voxels.shape == (0, 64, 4) and voxels.dtype == torch.float32
        assert coords.shape == (0, 3) and coords.dtype == torch.int32
        assert num.shape == (0,) and num.dtype == torch.int32


def test_float64_points_are_accepted():
    pts = torch.tensor([[0.1, 0.2, 0.0, 1.0], [0.15, 0.2, 0.0, 2.0]], dtype=torch.float64)
    voxels, coords, num = nuscenes_voxelizer("auto")(pts)
    assert coords.tolist() == [[0, 200, 200]] and num.tolist() == [2]
    assert voxels.dtype == torch.float32


def test_picklable_after_use():
    vox = nuscenes_voxelizer("auto")
    pts = torch.tensor([[1.0, 2.0, 0.0, 0.5]])
    first = vox(pts)  # creates and caches the spconv generator
    clone = pickle.loads(pickle.dumps(vox))
    assert clone._generators == {}
    assert all(torch.equal(a, b) for a, b in zip(clone(pts), first))
    assert repr(clone) == repr(vox)


def test_from_config():
    cfg = get_cfg()
    add_pillars_config(cfg)
    train = Voxelizer(cfg, is_train=True)
    test = Voxelizer(cfg, is_train=False)
    assert train.max_voxels == cfg.INPUT.MAX_VOXELS_TRAIN
    assert test.max_voxels == cfg.INPUT.MAX_VOXELS_TEST
    assert train.num_point_features == len(cfg.INPUT.POINT_FEATURES)
    assert train.grid_size == (400, 400, 1)
    assert train.max_points_per_voxel == cfg.INPUT.MAX_POINTS_PER_VOXEL
    assert Voxelizer(cfg, is_train=False, max_voxels=7).max_voxels == 7


def test_bad_inputs():
    with pytest.raises(ValueError, match="whole"):
        nuscenes_voxelizer("auto", max_voxels=10, voxel_size=(0.3, 0.25, 8.0))
    vox = nuscenes_voxelizer("auto")
    with pytest.raises(ValueError, match="POINT_FEATURES"):
        vox(torch.zeros(5, 5))
    with pytest.raises(ValueError, match="backend"):
        nuscenes_voxelizer("cuda", max_voxels=10)


def test_collate_voxels():
    vox = nuscenes_voxelizer("auto")
    gen = torch.Generator().manual_seed(1)
    clouds = [torch.rand(n, 4, generator=gen) * 20 - 10 for n in (50, 0, 80)]
    outs = [vox(c) for c in clouds]
    voxels, coords, num = collate_voxels(outs)
    sizes = [o[0].shape[0] for o in outs]
    assert voxels.shape == (sum(sizes), 64, 4)
    assert coords.shape == (sum(sizes), 4) and coords.dtype == torch.int32
    expected_batch = torch.cat(
        [torch.full((s,), b, dtype=torch.int32) for b, s in enumerate(sizes)]
    )
    assert torch.equal(coords[:, 0], expected_batch)
    assert torch.equal(coords[:, 1:], torch.cat([o[1] for o in outs]))
    assert torch.equal(num, torch.cat([o[2] for o in outs]))
    assert torch.equal(voxels, torch.cat([o[0] for o in outs]))
    with pytest.raises(ValueError):
        collate_voxels([])


def test_voxelize_torch_function_direct():
    # All points in one cell, more than M: the first M are kept in order.
    pts = torch.stack(
        [torch.full((10,), 0.1), torch.full((10,), 0.1), torch.zeros(10), torch.arange(10.0)], 1
    )
    voxels, coords, num = voxelize_torch(
        pts, [0.25, 0.25, 8.0], [-50, -50, -5, 50, 50, 3], (400, 400, 1), 5, 4
    )
    assert num.tolist() == [4] and voxels[0, :, 3].tolist() == [0.0, 1.0, 2.0, 3.0]
