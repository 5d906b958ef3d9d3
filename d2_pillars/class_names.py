"""The detection classes of each supported dataset, in label order, and the default IoU
thresholds of own-data classes.

A module without imports, so that the config defaults (``d2_pillars.config``), the dataset
specs (``d2_pillars.data.datasets``) and the evaluators (``d2_pillars.evaluation``) can share
them without a lower layer importing a higher one.
"""

__all__ = ["NUSCENES_CLASSES", "LYFT_CLASSES", "VEHICLE_CLASSES", "default_iou_thresholds"]

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

#: Own-data classes (compared case-insensitively) whose default IoU thresholds are KITTI's car
#: ones.
VEHICLE_CLASSES = ("car", "vehicle", "truck", "bus")


def default_iou_thresholds(class_name):
    """``(strict, loose)`` IoU thresholds of an own-data class that ``dataset.yaml`` does not set
    (``class_iou_thresholds``), for the own-data evaluator.

    Car, Vehicle, Truck and Bus (any case): ``(0.7, 0.5)``, KITTI's car thresholds; Pedestrian,
    Cyclist and every other class: ``(0.5, 0.25)``.
    """
    if str(class_name).strip().lower() in VEHICLE_CLASSES:
        return (0.7, 0.5)
    return (0.5, 0.25)
