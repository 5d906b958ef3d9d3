"""nuScenes and Lyft info building (through the official devkits) and catalog registration."""

from .builder import (
    DatasetSpec,
    check_dataset_files,
    check_lidar_files,
    create_infos,
    info_path,
    infos_up_to_date,
    lidar_files,
)
from .custom import CUSTOM_DATASET, register_custom_dataset, scan_dataset
from .infos import InfoFileError, load_info_metadata, load_infos, save_infos
from .lyft import LYFT_CLASSES, LYFT_SPEC
from .nuscenes import NUSCENES_CLASSES, NUSCENES_SPEC
from .register import (
    DEFAULT_DATASETS,
    default_datasets_root,
    load_dataset_dicts,
    register_all_defaults,
    register_lyft,
    register_nuscenes,
)

__all__ = [
    "DatasetSpec",
    "DATASET_SPECS",
    "create_infos",
    "check_lidar_files",
    "check_dataset_files",
    "lidar_files",
    "info_path",
    "infos_up_to_date",
    "InfoFileError",
    "load_infos",
    "load_info_metadata",
    "save_infos",
    "NUSCENES_CLASSES",
    "NUSCENES_SPEC",
    "LYFT_CLASSES",
    "LYFT_SPEC",
    "DEFAULT_DATASETS",
    "default_datasets_root",
    "load_dataset_dicts",
    "register_all_defaults",
    "register_nuscenes",
    "register_lyft",
    "CUSTOM_DATASET",
    "register_custom_dataset",
    "scan_dataset",
]

#: dataset name -> spec.
DATASET_SPECS = {"nuscenes": NUSCENES_SPEC, "lyft": LYFT_SPEC}
