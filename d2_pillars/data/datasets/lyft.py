"""Lyft Level 5: the dataset spec for info building (read through
``lyft_dataset_sdk.lyftdataset.LyftDataset``).

* 9 detection classes; Lyft category names are the detection names.
* Sweeps: every LIDAR_TOP sample_data of the release is a keyframe (5 Hz), so previous sweeps
  are previous keyframes through ``prev``, stopping at the scene start.
* Boxes have no velocity (7 values). ``num_lidar_pts`` is stored as given (-1 in the release).
* Splits: ``v1.01-train`` -> train/val by the reference scene lists (``splits/lyft_*.txt``, scene
  split "official"), or, for datasets with their own scene names (the synthetic Lyft set), scene
  split "last20": the last 20% of the scenes sorted by name are val. ``v1.01-test`` -> test.
"""

import os

from ...class_names import LYFT_CLASSES
from .builder import DatasetSpec, last_fraction_split

__all__ = ["LYFT_CLASSES", "LYFT_SPEC", "LYFT_SCENE_SPLITS", "LYFT_SPLITS", "lyft_scene_list"]

LYFT_SPLITS = {"v1.01-train": ("train", "val"), "v1.01-test": ("test",)}

# Scene-split rules of v1.01-train: name -> (description, val fraction or None for the lists).
LYFT_SCENE_SPLITS = {
    "official": ("reference scene lists splits/lyft_{train,val}.txt", None),
    "last20": ("last 20% of the scenes sorted by name are val", 0.2),
}

_SPLIT_DIR = os.path.join(os.path.dirname(__file__), "splits")


def lyft_scene_list(split):
    """Scene names of the reference Lyft ``split`` ("train", "val" or "test")."""
    with open(os.path.join(_SPLIT_DIR, f"lyft_{split}.txt")) as f:
        return [line.strip() for line in f if line.strip()]


def open_lyft(root, version, verbose=True):
    from lyft_dataset_sdk.lyftdataset import LyftDataset

    data_path = os.path.join(root, version)
    return LyftDataset(
        data_path=data_path, json_path=os.path.join(data_path, version), verbose=verbose
    )


def lyft_splits(version, scene_names, scene_split="official"):
    """``({split: [scene names]}, rule)`` for ``version``."""
    if version not in LYFT_SPLITS:
        raise ValueError(f"Unknown Lyft version {version!r}; known: {sorted(LYFT_SPLITS)}")
    if scene_split not in LYFT_SCENE_SPLITS:
        raise ValueError(
            f"Unknown Lyft scene split {scene_split!r}; known: {sorted(LYFT_SCENE_SPLITS)}"
        )
    rule, val_fraction = LYFT_SCENE_SPLITS[scene_split]
    if version == "v1.01-test":
        return {"test": list(scene_names)}, "every scene of v1.01-test"
    if val_fraction is not None:
        return last_fraction_split(scene_names, val_fraction), rule
    present = set(scene_names)
    splits = {s: [n for n in lyft_scene_list(s) if n in present] for s in ("train", "val")}
    if scene_names and not any(splits.values()):
        raise ValueError(
            f"None of the {len(scene_names)} scenes of {version} is in the reference Lyft scene "
            "lists. For a dataset with its own scene names (e.g. the synthetic Lyft set) use the "
            "scene split 'last20' (tools/create_data.py lyft ... --scene-split last20)."
        )
    return splits, rule


LYFT_SPEC = DatasetSpec(
    name="lyft",
    classes=LYFT_CLASSES,
    category_map={c: c for c in LYFT_CLASSES},
    open_sdk=open_lyft,
    splits=lyft_splits,
    versions=tuple(LYFT_SPLITS),
    sweeps_keyframes_only=True,
    has_velocity=False,
    test_versions=("v1.01-test",),
)
