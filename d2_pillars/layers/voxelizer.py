# -*- coding: utf-8 -*-
"""Hard voxelization of point clouds (pillars when the z extent is one voxel).

Semantics (those of mmcv's hard ``Voxelization``, which the PointPillars reference uses):

- a point's cell is ``floor((p - range_min) / voxel_size)`` per axis, in float32; points whose cell
  lies outside ``[0, grid_size)`` on any axis are dropped (so the range is half-open
  ``[min, max)``);
- voxels are created in point order; once ``max_voxels`` voxels exist, points of new cells are
  dropped;
- each voxel keeps its first ``max_points_per_voxel`` points, in point order, and zero padding.

Two implementations give bit-identical output (tested against each other and against a numpy
reference):

- ``"spconv"``: ``spconv.pytorch.utils.PointToVoxel`` on the CPU (a sequential C++ loop that does
  exactly the above);
- ``"torch"``: a vectorised torch version (one stable sort). It is the one used on CUDA, because
  spconv's CUDA kernel assigns voxel slots and point slots through a hash table and atomics: its
  voxel order, the voxels kept at the cap and the points kept per voxel are not the point order
  (and not deterministic).

``backend="auto"`` picks spconv on the CPU and torch on CUDA. On the CPU, spconv's single-threaded
loop and the torch path with one thread take about the same time on a 300k-point nuScenes-sized
cloud (~40-60 ms; ``tools/benchmark.py ops``), but the torch path's many small parallel ops suffer
badly when the cores are oversubscribed, and spconv is the reference, hence the CPU default.
"""
import torch

from detectron2.config import configurable

__all__ = ["Voxelizer", "collate_voxels"]

_BACKENDS = ("auto", "spconv", "torch")


class Voxelizer:
    """Points (N, C) -> voxels (V, M, C), coords (V, 3) int32 (z, y, x), num_points (V,) int32.

    The spconv generator is created lazily, once per device, and is not pickled: a Voxelizer can be
    sent to data-loader workers. A Voxelizer is not thread-safe with the spconv backend (the
    generator reuses its buffers); use one per thread or process.
    """

    @configurable
    def __init__(
        self,
        *,
        voxel_size,
        point_cloud_range,
        max_points_per_voxel,
        max_voxels,
        num_point_features,
        backend="auto",
    ):
        """
        Args:
            voxel_size: [dx, dy, dz] in meters.
            point_cloud_range: [x_min, y_min, z_min, x_max, y_max, z_max] in meters.
            max_points_per_voxel: M, points kept per voxel.
            max_voxels: cap on the number of voxels V.
            num_point_features: C, columns per point (x, y, z first).
            backend: "auto", "spconv" (CPU only) or "torch".
        """
        voxel_size = [float(v) for v in voxel_size]
        point_cloud_range = [float(v) for v in point_cloud_range]
        if len(voxel_size) != 3 or any(v <= 0 for v in voxel_size):
            raise ValueError(f"voxel_size must be 3 positive numbers, got {voxel_size}")
        if len(point_cloud_range) != 6:
            raise ValueError(
                f"point_cloud_range must be [x_min, y_min, z_min, x_max, y_max, z_max], "
                f"got {point_cloud_range}"
            )
        grid = []
        for axis in range(3):
            extent = point_cloud_range[axis + 3] - point_cloud_range[axis]
            cells = extent / voxel_size[axis]
            if extent <= 0 or abs(cells - round(cells)) > 1e-4 * max(1.0, cells):
                raise ValueError(
                    f"point_cloud_range {point_cloud_range} must span a whole, positive number of "
                    f"voxels {voxel_size} on every axis (axis {'xyz'[axis]}: {cells:g} voxels); "
                    "fix INPUT.POINT_CLOUD_RANGE or INPUT.VOXEL_SIZE"
                )
            grid.append(int(round(cells)))
        if int(max_points_per_voxel) < 1 or int(max_voxels) < 1:
            raise ValueError("max_points_per_voxel and max_voxels must be >= 1")
        if int(num_point_features) < 3:
            raise ValueError("num_point_features must be >= 3 (x, y, z come first)")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.voxel_size = voxel_size
        self.point_cloud_range = point_cloud_range
        self.max_points_per_voxel = int(max_points_per_voxel)
        self.max_voxels = int(max_voxels)
        self.num_point_features = int(num_point_features)
        self.backend = backend
        self.grid_size = tuple(grid)  # (nx, ny, nz)
        self._generators = {}
        self._filled_rows = {}  # per device: rows of the generator's buffer the last call wrote

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "voxel_size": cfg.INPUT.VOXEL_SIZE,
            "point_cloud_range": cfg.INPUT.POINT_CLOUD_RANGE,
            "max_points_per_voxel": cfg.INPUT.MAX_POINTS_PER_VOXEL,
            "max_voxels": cfg.INPUT.MAX_VOXELS_TRAIN if is_train else cfg.INPUT.MAX_VOXELS_TEST,
            "num_point_features": len(cfg.INPUT.POINT_FEATURES),
        }

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_generators"] = {}  # spconv generators hold C++ objects and are not picklable
        state["_filled_rows"] = {}
        return state

    def __repr__(self):
        return (
            f"Voxelizer(voxel_size={self.voxel_size}, point_cloud_range={self.point_cloud_range}, "
            f"max_points_per_voxel={self.max_points_per_voxel}, max_voxels={self.max_voxels}, "
            f"num_point_features={self.num_point_features}, backend={self.backend!r})"
        )

    def _empty(self, device):
        m, c = self.max_points_per_voxel, self.num_point_features
        return (
            torch.zeros((0, m, c), dtype=torch.float32, device=device),
            torch.zeros((0, 3), dtype=torch.int32, device=device),
            torch.zeros((0,), dtype=torch.int32, device=device),
        )

    def _pick_backend(self, device):
        if self.backend == "spconv" and device.type != "cpu":
            raise ValueError(
                "Voxelizer(backend='spconv') runs on the CPU only: spconv's CUDA voxelization "
                "does not keep point order; use backend='auto' or 'torch' for CUDA points"
            )
        if self.backend == "auto":
            return "spconv" if device.type == "cpu" else "torch"
        return self.backend

    def __call__(self, points):
        """
        Args:
            points: (N, C) float tensor, columns x, y, z, ... (C = num_point_features).

        Returns:
            voxels: (V, M, C) float32, zero-padded; coords: (V, 3) int32 (z, y, x) cell indices;
            num_points: (V,) int32 points stored per voxel (1..M). Voxels in order of creation.
        """
        if not isinstance(points, torch.Tensor):
            raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
        if points.dim() != 2 or points.shape[1] != self.num_point_features:
            raise ValueError(
                f"points must be (N, {self.num_point_features}) (num_point_features = "
                f"len(INPUT.POINT_FEATURES)), got {tuple(points.shape)}"
            )
        points = points.detach().to(torch.float32).contiguous()
        if points.shape[0] == 0:
            return self._empty(points.device)
        if self._pick_backend(points.device) == "spconv":
            return self._spconv(points)
        return voxelize_torch(
            points,
            self.voxel_size,
            self.point_cloud_range,
            self.grid_size,
            self.max_voxels,
            self.max_points_per_voxel,
        )

    def _spconv(self, points):
        key = str(points.device)
        gen = self._generator(points.device)
        # spconv's clear_voxels zeroes its whole (max_voxels, M, C) buffer, single-threaded, on
        # every call; zeroing only the rows the previous call filled leaves the same zeros
        # (~1.5 ms less per 10-sweep frame)
        gen.voxels[: self._filled_rows.get(key, gen.voxels.shape[0])].zero_()
        voxels, coords, num_points, _ = gen.generate_voxel_with_id(points, clear_voxels=False)
        self._filled_rows[key] = voxels.shape[0]
        return voxels, coords, num_points

    def _generator(self, device):
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            from spconv.pytorch.utils import PointToVoxel

            gen = PointToVoxel(
                vsize_xyz=self.voxel_size,
                coors_range_xyz=self.point_cloud_range,
                num_point_features=self.num_point_features,
                max_num_voxels=self.max_voxels,
                max_num_points_per_voxel=self.max_points_per_voxel,
                device=device,
            )
            if tuple(gen.grid_size[::-1]) != self.grid_size:  # spconv reports (z, y, x)
                raise RuntimeError(
                    f"spconv grid {gen.grid_size} (z, y, x) differs from {self.grid_size} (x, y, z)"
                )
            self._generators[key] = gen
        return gen


def voxelize_torch(points, voxel_size, point_cloud_range, grid_size, max_voxels, max_points):
    """Vectorised hard voxelization with the semantics of the module docstring.

    Args:
        points: (N, C) float32; voxel_size: 3 floats; point_cloud_range: 6 floats;
        grid_size: (nx, ny, nz); max_voxels, max_points: caps.

    Returns:
        ``(voxels (V, M, C) float32, coords (V, 3) int32 (z, y, x), num_points (V,) int32)``.
    """
    device = points.device
    n, c = points.shape
    nx, ny, nz = grid_size
    vsize = torch.tensor(voxel_size, dtype=torch.float32, device=device)
    vmin = torch.tensor(point_cloud_range[:3], dtype=torch.float32, device=device)
    grid = torch.tensor([nx, ny, nz], dtype=torch.float32, device=device)
    # Same float32 operations as spconv: floor((p - min) / size), then the bounds test on floats
    # (no cast of out-of-range values to int).
    cell = torch.floor((points[:, :3] - vmin) / vsize)
    valid = ((cell >= 0) & (cell < grid)).all(dim=1)
    point_idx = valid.nonzero(as_tuple=True)[0]  # kept points, in order
    if point_idx.numel() == 0:
        return (
            points.new_zeros((0, max_points, c)),
            torch.zeros((0, 3), dtype=torch.int32, device=device),
            torch.zeros((0,), dtype=torch.int32, device=device),
        )
    cell = cell[point_idx].long()
    linear = (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]
    # Stable sort: within a cell, points stay in input order.
    sorted_linear, perm = torch.sort(linear, stable=True)
    num = linear.numel()
    is_first = torch.ones(num, dtype=torch.bool, device=device)
    is_first[1:] = sorted_linear[1:] != sorted_linear[:-1]
    group = torch.cumsum(is_first, 0) - 1  # cell number (in sorted order) of each sorted point
    starts = is_first.nonzero(as_tuple=True)[0]  # (U,)
    slot = torch.arange(num, device=device) - starts[group]  # rank of the point in its cell
    # Voxels are numbered by the first point of their cell (creation order).
    voxel_order = torch.argsort(perm[starts])
    num_cells = starts.numel()
    rank = torch.empty(num_cells, dtype=torch.long, device=device)
    rank[voxel_order] = torch.arange(num_cells, device=device)
    voxel_of_point = rank[group]
    keep = (voxel_of_point < max_voxels) & (slot < max_points)
    num_voxels = min(num_cells, max_voxels)
    voxels = points.new_zeros((num_voxels, max_points, c))
    voxels[voxel_of_point[keep], slot[keep]] = points[point_idx[perm[keep]]]
    chosen = voxel_order[:num_voxels]
    lin = sorted_linear[starts[chosen]]
    coords = torch.stack([lin // (nx * ny), (lin // nx) % ny, lin % nx], dim=1).int()
    ends = torch.cat([starts[1:], starts.new_tensor([num])])
    num_points = (ends - starts)[chosen].clamp(max=max_points).int()
    return voxels, coords, num_points


def collate_voxels(batch):
    """Concatenate several clouds' voxels, prefixing each voxel's coords with its sample index.

    Args:
        batch: list of ``(voxels (V_i, M, C), coords (V_i, 3) (z, y, x), num_points (V_i,))``.

    Returns:
        ``(voxels (sum V_i, M, C), coords (sum V_i, 4) int32 (b, z, y, x), num_points (sum V_i,))``.
    """
    if len(batch) == 0:
        raise ValueError("collate_voxels needs at least one sample")
    voxels, coords, num_points = zip(*batch)
    shapes = {tuple(v.shape[1:]) for v in voxels}
    if len(shapes) != 1:
        raise ValueError(f"all samples must share (M, C) to be collated, got {sorted(shapes)}")
    batched = [torch.cat([torch.full_like(c[:, :1], b), c], dim=1) for b, c in enumerate(coords)]
    return torch.cat(voxels), torch.cat(batched).to(torch.int32), torch.cat(num_points)
