"""Tiny hand-made LiDAR scenes and a tiny PointPillars config for the modeling tests.

Each scene has a flat ground and a few boxes whose side faces and top carry points (as a LiDAR
sees them, without occlusion); everything is generated with a seeded numpy Generator.
"""

import numpy as np
import torch

from detectron2.config import get_cfg

from d2_pillars.config import add_pillars_config
from d2_pillars.layers import Voxelizer
from d2_pillars.structures import LiDARBoxes

#: (name, mean (l, w, h)) of the classes of the tiny scenes.
CLASSES = [("car", (4.2, 1.8, 1.6)), ("cyclist", (1.8, 0.7, 1.6))]
GROUND_Z = -1.8
POINT_CLOUD_RANGE = [0.0, -10.24, -3.0, 20.48, 10.24, 1.0]
VOXEL_SIZE = [0.32, 0.32, 4.0]


def tiny_cfg():
    """A small PointPillars config: 64 x 64 grid, SECOND [1, 1, 1] + FPN (p1-p3), 2 classes."""
    cfg = get_cfg()
    add_pillars_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "PointPillars"
    cfg.DATASETS.CLASS_NAMES = [c[0] for c in CLASSES]
    cfg.INPUT.POINT_FEATURES = ["x", "y", "z", "intensity"]
    cfg.INPUT.POINT_CLOUD_RANGE = POINT_CLOUD_RANGE
    cfg.INPUT.VOXEL_SIZE = VOXEL_SIZE
    cfg.INPUT.MAX_POINTS_PER_VOXEL = 16
    cfg.INPUT.MAX_VOXELS_TRAIN = 4096
    cfg.INPUT.MAX_VOXELS_TEST = 4096
    cfg.MODEL.PILLAR_FEATURE_NET.FEAT_CHANNELS = [32]
    cfg.MODEL.BACKBONE.NAME = "build_second_fpn_backbone"
    cfg.MODEL.SECOND.LAYER_NUMS = [1, 1, 1]
    cfg.MODEL.SECOND.OUT_CHANNELS = [32, 64, 64]
    cfg.MODEL.FPN.IN_FEATURES = ["s1", "s2", "s3"]
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    head = cfg.MODEL.ANCHOR3D_HEAD
    head.NUM_CLASSES = len(CLASSES)
    head.BOX_CODE_SIZE = 7
    head.CODE_WEIGHTS = [1.0] * 7
    r = POINT_CLOUD_RANGE
    head.ANCHOR_RANGES = [[r[0], r[1], GROUND_Z, r[3], r[4], GROUND_Z]]
    return cfg


def _surface_points(boxes, density, rng):
    """Points on the 4 side faces and the top of each box, ``density`` per m^2: (P, 3)."""
    out = []
    for x, y, z, l, w, h, yaw in boxes:
        n = int(density * (2 * (l + w) * h + l * w))
        u = rng.uniform(-0.5, 0.5, size=(n, 3))
        face = rng.integers(0, 5, size=n)  # 0/1: +-x side, 2/3: +-y side, 4: top
        u[face == 0, 0], u[face == 1, 0] = 0.5, -0.5
        u[face == 2, 1], u[face == 3, 1] = 0.5, -0.5
        u[face == 4, 2] = 0.5
        local = u * np.array([l, w, h])
        c, s = np.cos(yaw), np.sin(yaw)
        pts = np.stack(
            [
                c * local[:, 0] - s * local[:, 1] + x,
                s * local[:, 0] + c * local[:, 1] + y,
                local[:, 2] + z,
            ],
            axis=1,
        )
        out.append(pts)
    return np.concatenate(out) if out else np.zeros((0, 3))


def make_scene(seed, num_boxes=4, density=40.0):
    """
    Returns:
        points (ndarray): (N, 4) float32 x, y, z, intensity.
        boxes (ndarray): (K, 7) float32 package-convention boxes (centre z).
        classes (ndarray): (K,) int64.
    """
    rng = np.random.default_rng(seed)
    r = POINT_CLOUD_RANGE
    boxes, classes = [], []
    tries = 0
    while len(boxes) < num_boxes and tries < 1000:
        tries += 1
        cls = int(rng.integers(0, len(CLASSES)))
        l, w, h = np.array(CLASSES[cls][1]) * rng.uniform(0.9, 1.1, size=3)
        x = rng.uniform(r[0] + 3, r[3] - 3)
        y = rng.uniform(r[1] + 3, r[4] - 3)
        if any(np.hypot(x - b[0], y - b[1]) < (l + b[3]) / 2 + 1.0 for b in boxes):
            continue
        boxes.append([x, y, GROUND_Z + h / 2, l, w, h, rng.uniform(-np.pi, np.pi)])
        classes.append(cls)
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 7)
    obj = _surface_points(boxes.astype(np.float64), density, rng)
    ground = np.stack(
        [
            rng.uniform(r[0], r[3], 1500),
            rng.uniform(r[1], r[4], 1500),
            GROUND_Z + rng.normal(0, 0.02, 1500),
        ],
        axis=1,
    )
    xyz = np.concatenate([obj, ground])
    intensity = rng.uniform(0, 1, size=(xyz.shape[0], 1))
    points = np.concatenate([xyz, intensity], axis=1).astype(np.float32)
    return points, boxes, np.array(classes, dtype=np.int64)


def make_inputs(cfg, seeds, num_boxes=4, train=True):
    """Model inputs (mapper-format dicts) for the scenes of ``seeds``."""
    voxelizer = Voxelizer(
        voxel_size=cfg.INPUT.VOXEL_SIZE,
        point_cloud_range=cfg.INPUT.POINT_CLOUD_RANGE,
        max_points_per_voxel=cfg.INPUT.MAX_POINTS_PER_VOXEL,
        max_voxels=cfg.INPUT.MAX_VOXELS_TRAIN if train else cfg.INPUT.MAX_VOXELS_TEST,
        num_point_features=len(cfg.INPUT.POINT_FEATURES),
    )
    inputs = []
    for seed in seeds:
        points, boxes, classes = make_scene(seed, num_boxes=num_boxes)
        voxels, coords, num_points = voxelizer(torch.from_numpy(points))
        inputs.append(
            {
                "sample_token": f"scene{seed}",
                "voxels": voxels,
                "voxel_coords": coords,
                "voxel_num_points": num_points,
                "gt_boxes3d": LiDARBoxes(torch.from_numpy(boxes)),
                "gt_classes": torch.from_numpy(classes),
            }
        )
    return inputs
