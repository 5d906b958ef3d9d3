"""The BEV grid of a point-cloud range and the scatter of pillar features onto it.

:class:`PillarScatter` writes the pillar features into a dense ``(B, C, ny, nx)`` canvas (H = y,
W = x), the input of the BEV backbones; :func:`grid_size_from_range` is the grid's size.
"""

import numpy as np
from torch import nn

from detectron2.config import configurable

__all__ = ["PillarScatter", "grid_size_from_range"]


def grid_size_from_range(point_cloud_range, voxel_size):
    """
    Number of cells ``(nx, ny, nz)`` of the voxel grid.

    Args:
        point_cloud_range (list[float]): ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (m).
        voxel_size (list[float]): ``[dx, dy, dz]`` (m).

    Raises:
        ValueError: if the range is not a whole number of voxels along an axis.
    """
    pc_range = np.asarray(point_cloud_range, dtype=np.float64)
    size = np.asarray(voxel_size, dtype=np.float64)
    if pc_range.shape != (6,) or size.shape != (3,) or np.any(size <= 0):
        raise ValueError(
            f"INPUT.POINT_CLOUD_RANGE must have 6 values and INPUT.VOXEL_SIZE 3 positive values, "
            f"got {list(point_cloud_range)} and {list(voxel_size)}"
        )
    cells = (pc_range[3:] - pc_range[:3]) / size
    rounded = np.round(cells)
    if np.any(np.abs(cells - rounded) > 1e-4) or np.any(rounded < 1):
        raise ValueError(
            f"INPUT.POINT_CLOUD_RANGE {list(point_cloud_range)} is not a whole number of "
            f"INPUT.VOXEL_SIZE {list(voxel_size)} cells along every axis; adjust either key"
        )
    return tuple(int(c) for c in rounded)


class PillarScatter(nn.Module):
    """
    Scatter pillar features to a dense BEV canvas ``(B, C, ny, nx)``: ``canvas[b, :, y, x]`` is the
    feature of the pillar at cell (y, x) of sample b, zeros where there is no pillar.
    """

    @configurable
    def __init__(self, *, nx, ny, channels_last=False):
        """
        Args:
            nx, ny (int): grid size along x (canvas width) and y (canvas height).
            channels_last (bool): return the canvas in ``torch.channels_last`` memory format
                (written row by row, no conversion copy); the shape is (B, C, ny, nx) either way.
        """
        super().__init__()
        self.nx = int(nx)
        self.ny = int(ny)
        self.channels_last = bool(channels_last)

    @classmethod
    def from_config(cls, cfg):
        nx, ny, _ = grid_size_from_range(cfg.INPUT.POINT_CLOUD_RANGE, cfg.INPUT.VOXEL_SIZE)
        return {"nx": nx, "ny": ny, "channels_last": cfg.MODEL.CHANNELS_LAST}

    @property
    def grid_size(self):
        """(nx, ny)"""
        return self.nx, self.ny

    def forward(self, features, coords, batch_size):
        """
        Args:
            features (Tensor): (V, C) pillar features.
            coords (Tensor): (V, 4) int (batch, z, y, x); cells must be unique.
            batch_size (int): B.

        Returns:
            Tensor: (B, C, ny, nx).
        """
        coords = coords.long()
        channels = features.shape[1]
        cells = coords[:, 2] * self.nx + coords[:, 3]
        if self.channels_last:
            canvas = features.new_zeros(batch_size, self.ny * self.nx, channels)
            canvas[coords[:, 0], cells] = features
            return canvas.view(batch_size, self.ny, self.nx, channels).permute(0, 3, 1, 2)
        canvas = features.new_zeros(batch_size, channels, self.ny * self.nx)
        # advanced indices around a slice: the indexed view is (V, C), matching ``features``
        canvas[coords[:, 0], :, cells] = features
        return canvas.view(batch_size, channels, self.ny, self.nx)

    def extra_repr(self):
        return f"nx={self.nx}, ny={self.ny}, channels_last={self.channels_last}"
