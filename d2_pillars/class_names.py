"""The detection classes of each supported dataset, in label order.

A module without imports, so that the config defaults (``d2_pillars.config``) and the dataset
specs (``d2_pillars.data.datasets``) can share the one list without the config module importing
the data package.
"""

__all__ = ["NUSCENES_CLASSES", "LYFT_CLASSES"]

#: nuScenes detection challenge classes (the devkit's detection names).
NUSCENES_CLASSES = (
    "car",
    "truck",
    "trailer",
    "bus",
    "construction_vehicle",
    "bicycle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "barrier",
)

#: Lyft Level 5 classes (its category names).
LYFT_CLASSES = (
    "car",
    "truck",
    "bus",
    "emergency_vehicle",
    "other_vehicle",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "animal",
)
