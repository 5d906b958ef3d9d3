"""Data: info files and catalog (``datasets``), point loading, 3D augmentations, the mapper and
the loader builders.

Importing this package registers the default dataset names (see ``datasets/register.py``) under
the root given by the environment variable ``D2_PILLARS_DATASETS`` (default ``./datasets``).
"""

from .build import build_pillars_test_loader, build_pillars_train_loader
from .datasets import (
    InfoFileError,
    create_infos,
    default_datasets_root,
    load_infos,
    register_all_defaults,
    register_lyft,
    register_nuscenes,
)
from .mapper import PointCloudMapper, SampleRecordError, check_record
from .points import PointFileError, load_lidar_file, load_points
from .transforms import GlobalTransform3D, RandomGlobalTransform3D

__all__ = [
    "PointCloudMapper",
    "SampleRecordError",
    "check_record",
    "build_pillars_train_loader",
    "build_pillars_test_loader",
    "register_nuscenes",
    "register_lyft",
    "create_infos",
    "load_infos",
    "InfoFileError",
    "PointFileError",
    "load_lidar_file",
    "load_points",
    "GlobalTransform3D",
    "RandomGlobalTransform3D",
]

#: Folder holding nuscenes/, lyft/, synthetic_nuscenes/, synthetic_lyft/ (resolved at import).
DATASETS_ROOT = default_datasets_root()
register_all_defaults(DATASETS_ROOT)
