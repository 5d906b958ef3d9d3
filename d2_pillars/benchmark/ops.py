"""Latency of the layers ops: voxelization, rotated BEV IoU, rotated NMS, multi-class NMS.

Median of ``--repeats`` runs (after warm-up) on synthetic inputs of the sizes seen at inference
with the nuScenes configs:

- voxelization of a 300,000-point cloud (10-sweep nuScenes size; range [-50, -50, -5, 50, 50, 3],
  voxels [0.25, 0.25, 8], 64 points, 40,000 voxels, 4 features), both backends;
- IoU of 1,000 x 1,000 boxes spread over the range like detections (and, for information, the
  worst case where every pair overlaps);
- NMS of 1,000 detection-like boxes (clusters of jittered boxes around objects);
- the full-load multi-class NMS: 3,000 boxes x 10 classes all above the score threshold, NMS 0.2,
  500 kept.

The last output line is one JSON object with the figures (milliseconds).
"""

import math
import numpy as np
import statistics
import time
import torch

from d2_pillars.layers import (
    Voxelizer,
    multiclass_nms_rotated_bev,
    nms_rotated_bev,
    pairwise_iou_rotated_bev,
)

from .common import median_time, print_json, print_table

__all__ = ["add_arguments", "main"]

# Targets in milliseconds (issue "Foundation").
TARGETS_MS = {
    "voxelize": 80.0,
    "iou_1000x1000": 150.0,
    "nms_1000": 50.0,
    "multiclass_3000x10": 500.0,
}

NUSCENES_VOXEL = {
    "voxel_size": [0.25, 0.25, 8.0],
    "point_cloud_range": [-50.0, -50.0, -5.0, 50.0, 50.0, 3.0],
    "max_points_per_voxel": 64,
    "max_voxels": 40000,
    "num_point_features": 4,
}


def add_arguments(parser):
    parser.add_argument("--device", default="cpu", help="torch device of the inputs (cpu, cuda)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per op (median)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)


def synthetic_cloud(num_points, seed=0):
    """(N, 4) x, y, z, time_lag: a LiDAR-like cloud, dense near the sensor, ~5% out of range."""
    gen = np.random.default_rng(seed)
    r = np.abs(gen.standard_t(3, num_points)) * 12.0 + 1.0
    theta = gen.uniform(-np.pi, np.pi, num_points)
    z = gen.normal(-1.0, 0.8, num_points)
    lag = gen.uniform(0.0, 0.5, num_points)
    pts = np.stack([r * np.cos(theta), r * np.sin(theta), z, lag], axis=1)
    return torch.from_numpy(pts.astype(np.float32))


def scene_boxes(n, gen, span=100.0):
    """BEV boxes spread over the range with nuScenes-like sizes."""
    lw = torch.stack(
        [torch.rand(n, generator=gen) * 11.0 + 0.4, torch.rand(n, generator=gen) * 2.5 + 0.4], 1
    )
    xy = (torch.rand(n, 2, generator=gen) - 0.5) * span
    yaw = (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi
    return torch.cat([xy, lw, yaw], 1)


def detection_boxes(n, objects, gen, span=100.0):
    """Detection-like BEV boxes: jittered copies of ``objects`` boxes."""
    base = scene_boxes(objects, gen, span)
    owner = torch.randint(0, objects, (n,), generator=gen)
    boxes = base[owner].clone()
    boxes[:, 0:2] += torch.randn(n, 2, generator=gen) * 0.5
    boxes[:, 2:4] *= (1 + 0.1 * torch.randn(n, 2, generator=gen)).clamp(min=0.5)
    boxes[:, 4] += 0.2 * torch.randn(n, generator=gen)
    return boxes


def main(args):
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)

    cpu_ms = {}

    def timed(fn, key):
        """Median wall ms; also stores the median CPU ms of this process (all its threads) under
        ``key`` in ``cpu_ms``: on a shared machine it tells contention from the op's own cost."""
        cpu = []

        def run():
            t0 = time.process_time()
            fn()
            cpu.append(time.process_time() - t0)

        wall = 1000.0 * median_time(run, repeats=args.repeats, warmup=2, device=device)
        cpu_ms[key] = 1000.0 * statistics.median(cpu[2:])
        return wall

    figures = {"device": str(device), "threads": torch.get_num_threads()}
    rows = []

    points = synthetic_cloud(300_000, args.seed).to(device)
    auto = Voxelizer(**NUSCENES_VOXEL)
    figures["voxelize_ms"] = timed(lambda: auto(points), "voxelize_ms")
    num_voxels = auto(points)[0].shape[0]
    rows.append(["voxelize 300k pts (auto)", "voxelize_ms", TARGETS_MS["voxelize"]])
    backends = ["torch"] if device.type != "cpu" else ["spconv", "torch"]
    for backend in backends:
        vox = Voxelizer(**NUSCENES_VOXEL, backend=backend)
        key = f"voxelize_{backend}_ms"
        figures[key] = timed(lambda vox=vox: vox(points), key)
        rows.append([f"voxelize 300k pts ({backend})", key, None])

    a, b = scene_boxes(1000, gen).to(device), scene_boxes(1000, gen).to(device)
    figures["iou_1000x1000_ms"] = timed(lambda: pairwise_iou_rotated_bev(a, b), "iou_1000x1000_ms")
    rows.append(["IoU 1000x1000 (scene)", "iou_1000x1000_ms", TARGETS_MS["iou_1000x1000"]])
    dense_a, dense_b = scene_boxes(1000, gen, span=1.0), scene_boxes(1000, gen, span=1.0)
    dense_a, dense_b = dense_a.to(device), dense_b.to(device)
    figures["iou_dense_1000x1000_ms"] = timed(
        lambda: pairwise_iou_rotated_bev(dense_a, dense_b), "iou_dense_1000x1000_ms"
    )
    rows.append(["IoU 1000x1000 (all pairs overlap)", "iou_dense_1000x1000_ms", None])

    boxes = detection_boxes(1000, 60, gen).to(device)
    scores = torch.rand(1000, generator=gen).to(device)
    figures["nms_1000_ms"] = timed(lambda: nms_rotated_bev(boxes, scores, 0.2), "nms_1000_ms")
    figures["nms_1000_kept"] = int(nms_rotated_bev(boxes, scores, 0.2).numel())
    rows.append(["NMS 1000 boxes @0.2", "nms_1000_ms", TARGETS_MS["nms_1000"]])

    boxes = detection_boxes(3000, 150, gen).to(device)
    scores = (0.06 + 0.94 * torch.rand(3000, 10, generator=gen)).to(device)

    def multiclass():
        return multiclass_nms_rotated_bev(boxes, scores, 0.05, 0.2, 500)

    figures["multiclass_3000x10_ms"] = timed(multiclass, "multiclass_3000x10_ms")
    figures["multiclass_3000x10_kept"] = int(multiclass()[0].numel())
    rows.append(
        [
            "multiclass NMS 3000x10 @0.2, 500 kept",
            "multiclass_3000x10_ms",
            TARGETS_MS["multiclass_3000x10"],
        ]
    )

    table = []
    for name, key, target in rows:
        ms = figures[key]
        met = "" if target is None else ("yes" if ms <= target else "NO")
        table.append([name, ms, cpu_ms[key], "" if target is None else target, met])
    figures["cpu_ms"] = cpu_ms
    print(f"device={device} threads={torch.get_num_threads()} voxels={num_voxels}")
    print_table(table, headers=["op", "median ms", "CPU ms", "target ms", "meets target"])
    print_json(figures)
