"""Helpers shared by the benchmarks: timing, output, the config file and the dataset."""

import json
import numpy as np
import os
import statistics
import time
import torch

__all__ = [
    "median_time",
    "print_table",
    "print_json",
    "resolve_config_file",
    "NUSCENES_VERSION",
    "has_nuscenes_dataset",
    "update_nuscenes_infos",
    "PrecomputedBottomUp",
    "load_stage",
]

#: The nuScenes version the benchmarks read: the synthetic dataset's layout, or a real mini.
NUSCENES_VERSION = "v1.0-mini"


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, *, repeats=10, warmup=2, device="cpu"):
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows, headers):
    from tabulate import tabulate

    print(tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".4g"))


def print_json(figures):
    print(json.dumps(figures, sort_keys=True))


def resolve_config_file(path: str) -> str:
    """``path`` when it names a file, else the same path inside this checkout (``configs/...``
    from any directory); FileNotFoundError naming ``--config-file`` when neither exists."""
    if os.path.isfile(path):
        return path
    in_checkout = os.path.join(os.path.dirname(__file__), "..", "..", path)
    if not os.path.isfile(in_checkout):
        raise FileNotFoundError(f"--config-file {path}: no such file")
    return in_checkout


def has_nuscenes_dataset(root: str) -> bool:
    """Whether ``root`` holds a dataset, used as it is: a synthetic one of any size (its marker
    file) or a real ``v1.0-mini``."""
    from ..synthetic import MARKER_NAME

    return os.path.exists(os.path.join(root, MARKER_NAME)) or os.path.isdir(
        os.path.join(root, NUSCENES_VERSION)
    )


def update_nuscenes_infos(root: str, splits, max_sweeps: int = 10):
    """Build the info files of ``root`` when one of ``splits``' is missing or older than the
    synthetic dataset's marker (the dataset was regenerated)."""
    from ..data.datasets import NUSCENES_SPEC, create_infos, infos_up_to_date
    from ..synthetic import MARKER_NAME

    if not infos_up_to_date(root, "nuscenes", splits, os.path.join(root, MARKER_NAME)):
        create_infos(NUSCENES_SPEC, root, NUSCENES_VERSION, max_sweeps=max_sweeps, progress=False)


class PrecomputedBottomUp(torch.nn.Module):
    """Stands in for a neck's bottom-up network and returns features computed beforehand, so that
    timing the neck leaves the backbone out."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, x):
        return self.outputs


def load_stage(mapper, record):
    """The mapper's test-time steps before voxelization (keyframe + sweeps, range filter) as a
    callable returning ``(all points, points in range)``."""
    from ..data.points import load_points

    pc_range = np.asarray(mapper.point_cloud_range, dtype=np.float32).reshape(6)

    def load():
        points = load_points(
            record,
            point_features=mapper.point_features,
            load_dim=mapper.load_dim,
            num_sweeps=mapper.num_sweeps,
            remove_close_radius=mapper.remove_close_radius,
        )
        mask = (points[:, 0] > pc_range[0]) & (points[:, 0] < pc_range[3])
        for axis in (1, 2):
            mask &= (points[:, axis] > pc_range[axis]) & (points[:, axis] < pc_range[axis + 3])
        return points, points[mask]

    return load
