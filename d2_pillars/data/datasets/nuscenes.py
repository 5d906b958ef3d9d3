"""nuScenes: the dataset spec for info building (read through ``nuscenes.NuScenes``).

* 10 detection classes; the category map is the devkit's detection mapping (as the reference).
* Sweeps: the previous LIDAR_TOP sample_data through ``prev``, non-key sweeps included (20 Hz),
  stopping at the scene start.
* Boxes carry velocity from ``NuScenes.box_velocity`` (global frame) rotated into the LiDAR
  frame; unknown (NaN) velocity is stored as 0.
* Splits: ``v1.0-trainval`` -> train/val, ``v1.0-mini`` -> mini_train/mini_val (the devkit's
  ``create_splits_scenes``), ``v1.0-test`` -> test.
"""

from ...class_names import NUSCENES_CLASSES
from .builder import DatasetSpec

__all__ = ["NUSCENES_CLASSES", "NUSCENES_CATEGORY_MAP", "NUSCENES_SPEC", "NUSCENES_SPLITS"]

NUSCENES_CATEGORY_MAP = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}

# version -> splits (devkit split names) built from it.
NUSCENES_SPLITS = {
    "v1.0-trainval": ("train", "val"),
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-test": ("test",),
}


def open_nuscenes(root, version, verbose=True):
    from nuscenes import NuScenes

    return NuScenes(version=version, dataroot=root, verbose=verbose)


def nuscenes_splits(version, scene_names, scene_split="official"):
    """``({split: [scene names]}, rule)`` from the devkit's ``create_splits_scenes``."""
    from nuscenes.utils.splits import create_splits_scenes

    if scene_split != "official":
        raise ValueError(f"nuScenes only has the official scene split, got {scene_split!r}")
    if version not in NUSCENES_SPLITS:
        raise ValueError(f"Unknown nuScenes version {version!r}; known: {sorted(NUSCENES_SPLITS)}")
    devkit = create_splits_scenes()
    present = set(scene_names)
    splits = {s: [n for n in devkit[s] if n in present] for s in NUSCENES_SPLITS[version]}
    return splits, "nuscenes-devkit create_splits_scenes"


NUSCENES_SPEC = DatasetSpec(
    name="nuscenes",
    classes=NUSCENES_CLASSES,
    category_map=NUSCENES_CATEGORY_MAP,
    open_sdk=open_nuscenes,
    splits=nuscenes_splits,
    versions=tuple(NUSCENES_SPLITS),
    sweeps_keyframes_only=False,
    has_velocity=True,
    test_versions=("v1.0-test",),
)
