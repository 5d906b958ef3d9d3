"""Keyframes per second of the point-cloud mapper for one data-loader worker.

Runs ``PointCloudMapper(cfg, is_train=True)`` (defaults: 10 sweeps, x y z time_lag, training
augmentation, point shuffle, voxelization) on the ``mini_train`` keyframes of the synthetic
nuScenes dataset (about 350,000 points per keyframe with 10 sweeps), in this process with one
torch thread (what a DataLoader worker gets). The dataset is ``--root`` or
``$D2_PILLARS_DATASETS/synthetic_nuscenes``; it is generated there (and its info files built) when
missing. Files are read once before timing, so the page cache holds them: the figure is the CPU
cost per keyframe. It is reported from wall time (this machine as loaded now) and from this
process's CPU time (a free core). A per-stage breakdown repeats the mapper's steps.
"""

import argparse
import logging
import numpy as np
import os
import statistics
import time
import torch

from detectron2.config import get_cfg

from ..config import add_pillars_config
from ..data.datasets import info_path, load_dataset_dicts
from ..data.datasets.register import default_datasets_root
from ..data.mapper import PointCloudMapper
from ..data.points import load_points
from .common import (
    NUSCENES_VERSION,
    has_nuscenes_dataset,
    print_json,
    print_table,
    update_nuscenes_infos,
)

__all__ = ["add_arguments", "main", "prepare_dataset"]

logger = logging.getLogger(__name__)

SPLIT = "mini_train"


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--config-file", default=None, help="config (default: package defaults)")
    parser.add_argument(
        "--root",
        default=None,
        help="synthetic nuScenes root (default: $D2_PILLARS_DATASETS/"
        "synthetic_nuscenes, generated when missing)",
    )
    parser.add_argument("--num-samples", type=int, default=40, help="timed keyframes")
    parser.add_argument("--warmup", type=int, default=3, help="untimed keyframes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (worker: 1)")
    parser.add_argument("--scenes", type=int, default=10, help="scenes when generating")
    parser.add_argument("--keyframes", type=int, default=40, help="keyframes/scene when generating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")


def prepare_dataset(root, *, scenes=10, keyframes=40, max_sweeps=10):
    """Generate the synthetic nuScenes dataset and its infos under ``root`` when missing; return
    the info file of the benchmarked split."""
    from ..synthetic import make_synthetic_nuscenes

    # An existing dataset (synthetic of any size, or a real v1.0-mini) is used as it is.
    if not has_nuscenes_dataset(root):
        logger.info("Generating the synthetic nuScenes dataset in %s", root)
        make_synthetic_nuscenes(
            root, num_scenes=scenes, keyframes_per_scene=keyframes, num_workers=os.cpu_count() or 1
        )
    update_nuscenes_infos(root, (SPLIT,), max_sweeps=max_sweeps)
    return info_path(root, "nuscenes", SPLIT)


def _stage_times(mapper, d, rng):
    """Seconds of each mapper step for one dataset dict (the steps of ``PointCloudMapper``)."""
    times = {}
    t0 = time.perf_counter()
    tfm = mapper.augmentation(rng) if mapper.augmentation is not None else None
    points = load_points(
        d,
        point_features=mapper.point_features,
        load_dim=mapper.load_dim,
        num_sweeps=mapper.num_sweeps,
        sweep_rng=rng if mapper.random_sweeps else None,
        remove_close_radius=mapper.remove_close_radius,
        linear=None if tfm is None else tfm.linear,
        offset=None if tfm is None else tfm.offset,
    )
    t1 = time.perf_counter()
    if "gt_boxes" in d:
        mapper._ground_truth(d, tfm)
    t2 = time.perf_counter()
    filtered = mapper._range_filter_and_shuffle(points, rng)
    t3 = time.perf_counter()
    voxels = mapper.voxelizer(torch.from_numpy(filtered))
    t4 = time.perf_counter()
    times["load + sweeps + augment"] = t1 - t0
    times["ground truth"] = t2 - t1
    times["range filter + shuffle"] = t3 - t2
    times["voxelize"] = t4 - t3
    return times, len(points), len(filtered), voxels[0].shape[0]


def main(args):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = get_cfg()
    add_pillars_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    if args.opts:
        cfg.merge_from_list(args.opts)
    root = os.path.abspath(args.root or os.path.join(default_datasets_root(), "synthetic_nuscenes"))
    path = prepare_dataset(root, scenes=args.scenes, keyframes=args.keyframes)
    dicts = load_dataset_dicts(
        path, root, dataset="nuscenes", version=NUSCENES_VERSION, split=SPLIT
    )
    # Keyframes with the full set of sweeps (the steady state of a scene).
    full = [d for d in dicts if len(d["sweeps"]) >= cfg.INPUT.NUM_SWEEPS] or dicts
    rng = np.random.default_rng(args.seed)
    n = args.warmup + args.num_samples
    picks = [full[i] for i in rng.choice(len(full), n, replace=len(full) < n)]
    for d in picks:  # warm the page cache: time the CPU work, not the disk
        for p in [d["lidar_path"]] + [s["lidar_path"] for s in d["sweeps"]]:
            with open(p, "rb") as f:
                f.read()

    np.random.seed(args.seed)
    mapper = PointCloudMapper(cfg, is_train=True)
    per_sample = []
    for i, d in enumerate(picks):
        t0, c0 = time.perf_counter(), time.process_time()
        out = mapper(d)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i >= args.warmup:
            per_sample.append((dt, dc, out["voxels"].shape[0]))
    stage, points, kept, voxels = {}, [], [], []
    for d in picks[args.warmup :]:
        times, n_pts, n_kept, n_vox = _stage_times(mapper, d, rng)
        for k, v in times.items():
            stage.setdefault(k, []).append(v)
        points.append(n_pts)
        kept.append(n_kept)
        voxels.append(n_vox)

    sec = statistics.mean(t for t, _, _ in per_sample)
    median = statistics.median(t for t, _, _ in per_sample)
    cpu = statistics.mean(c for _, c, _ in per_sample)
    rows = [[k, 1e3 * statistics.mean(v)] for k, v in stage.items()]
    rows.append(["mapper (total, wall)", 1e3 * sec])
    rows.append(["mapper (total, CPU time of this process)", 1e3 * cpu])
    print_table(rows, headers=["stage", "ms / keyframe"])
    figures = {
        # Wall clock: what one worker delivers on this machine as loaded now.
        "loader_fps_per_worker": round(1.0 / sec, 2),
        # From this process's CPU time: what it delivers with a free core.
        "loader_fps_per_worker_cpu_time": round(1.0 / cpu, 2),
        "mean_ms_per_keyframe": round(1e3 * sec, 2),
        "median_ms_per_keyframe": round(1e3 * median, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "points": int(np.mean(points)),
        "points_in_range": int(np.mean(kept)),
        "voxels": int(np.mean(voxels)),
        "num_sweeps": cfg.INPUT.NUM_SWEEPS,
        "point_features": list(cfg.INPUT.POINT_FEATURES),
        "augmentation": bool(cfg.INPUT.AUG.ENABLED),
        "samples": len(per_sample),
        "torch_threads": torch.get_num_threads(),
        "root": root,
    }
    for k, v in stage.items():
        figures["ms_" + k.replace(" + ", "_").replace(" ", "_")] = round(
            1e3 * statistics.mean(v), 2
        )
    print_json(figures)
    return figures
