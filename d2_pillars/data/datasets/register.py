"""Dataset catalog: nuScenes / Lyft splits in ``DatasetCatalog`` and ``MetadataCatalog``.

Registration is lazy: the info file is read on ``DatasetCatalog.get(name)``, which returns one
dict per keyframe with absolute paths (format in ``docs/internals.md``). A missing info file is
an error naming the ``tools/create_data.py`` command that builds it.

Default names (root from the environment variable ``D2_PILLARS_DATASETS``, default
``./datasets``), registered when ``d2_pillars.data`` is imported:

============================  ==============================  =============  ============
name                          dataset root                    version        eval split
============================  ==============================  =============  ============
nuscenes_{train,val}          $D2_PILLARS_DATASETS/nuscenes   v1.0-trainval  train, val
nuscenes_test                 .../nuscenes                    v1.0-test      test
nuscenes_mini_{train,val}     .../nuscenes                    v1.0-mini      mini_*
lyft_{train,val}              .../lyft                        v1.01-train    train, val
lyft_test                     .../lyft                        v1.01-test     test
synthetic_nus_mini_{train,val} .../synthetic_nuscenes         v1.0-mini      mini_*
synthetic_lyft_{train,val}    .../synthetic_lyft              v1.01-train    train, val
============================  ==============================  =============  ============
"""

import logging
import os
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .builder import DatasetSpec, info_path
from .infos import InfoFileError, load_infos
from .lyft import LYFT_SPEC
from .nuscenes import NUSCENES_SPEC

__all__ = [
    "register_nuscenes",
    "register_lyft",
    "register_pillars_dataset",
    "register_all_defaults",
    "default_datasets_root",
    "load_dataset_dicts",
    "DEFAULT_DATASETS",
]

logger = logging.getLogger(__name__)

_SPECS = {"nuscenes": NUSCENES_SPEC, "lyft": LYFT_SPEC}

# name -> (dataset, sub-directory of $D2_PILLARS_DATASETS, version, split, Lyft scene split).
DEFAULT_DATASETS = {
    "nuscenes_train": ("nuscenes", "nuscenes", "v1.0-trainval", "train", "official"),
    "nuscenes_val": ("nuscenes", "nuscenes", "v1.0-trainval", "val", "official"),
    "nuscenes_test": ("nuscenes", "nuscenes", "v1.0-test", "test", "official"),
    "nuscenes_mini_train": ("nuscenes", "nuscenes", "v1.0-mini", "mini_train", "official"),
    "nuscenes_mini_val": ("nuscenes", "nuscenes", "v1.0-mini", "mini_val", "official"),
    "lyft_train": ("lyft", "lyft", "v1.01-train", "train", "official"),
    "lyft_val": ("lyft", "lyft", "v1.01-train", "val", "official"),
    "lyft_test": ("lyft", "lyft", "v1.01-test", "test", "official"),
    "synthetic_nus_mini_train": (
        "nuscenes",
        "synthetic_nuscenes",
        "v1.0-mini",
        "mini_train",
        "official",
    ),
    "synthetic_nus_mini_val": (
        "nuscenes",
        "synthetic_nuscenes",
        "v1.0-mini",
        "mini_val",
        "official",
    ),
    "synthetic_lyft_train": ("lyft", "synthetic_lyft", "v1.01-train", "train", "last20"),
    "synthetic_lyft_val": ("lyft", "synthetic_lyft", "v1.01-train", "val", "last20"),
}


def _create_data_command(dataset, root, version, scene_split):
    cmd = f"python tools/create_data.py {dataset} --root {root} --version {version}"
    if scene_split != "official":
        cmd += f" --scene-split {scene_split}"
    return cmd


def _absolute(root: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))


def load_dataset_dicts(
    info_file: str,
    root: str,
    *,
    dataset: str,
    version: Optional[str] = None,
    split: Optional[str] = None,
    scene_split: str = "official",
) -> List[dict]:
    """Records of an info file with absolute paths, after checking that the file is the one
    expected (dataset, version, split, classes).

    Raises:
        InfoFileError: the file is missing, unreadable, or of another dataset/split/convention.
    """
    root = os.path.abspath(os.path.expanduser(root))
    spec = _SPECS[dataset]
    cmd = _create_data_command(dataset, root, version or "VERSION", scene_split)
    out_dir = os.path.dirname(os.path.abspath(info_file))
    if out_dir != root:
        cmd += f" --out {out_dir}"
    if not os.path.isfile(info_file):
        what = f"Info file {info_file} of the {dataset} split '{split}' does not exist"
        if os.path.isdir(root):
            raise InfoFileError(f"{what}. Build it with:\n  {cmd}")
        raise InfoFileError(
            f"{what}, nor does the dataset root {root}. Put the dataset there (or point "
            f"D2_PILLARS_DATASETS at the folder that holds it), then run:\n  {cmd}"
        )
    try:
        infos, meta = load_infos(info_file)
    except InfoFileError as e:
        raise InfoFileError(f"{e}\nFor this dataset the command is:\n  {cmd}") from None
    expected = {"dataset": dataset, "version": version, "split": split}
    for key, value in expected.items():
        if value is not None and meta.get(key) != value:
            raise InfoFileError(
                f"{info_file} holds {key} {meta.get(key)!r}, expected {value!r}; rebuild it "
                f"with:\n  {cmd}"
            )
    if list(meta.get("classes", [])) != list(spec.classes):
        raise InfoFileError(
            f"{info_file} was built for classes {meta.get('classes')}, expected "
            f"{list(spec.classes)}; rebuild it with:\n  {cmd}"
        )
    for rec in infos:
        rec["lidar_path"] = _absolute(root, rec["lidar_path"])
        for sweep in rec["sweeps"]:
            sweep["lidar_path"] = _absolute(root, sweep["lidar_path"])
    return infos


def register_pillars_dataset(
    name: str,
    info_file: str,
    root: str,
    *,
    spec: DatasetSpec,
    version: str,
    eval_split: str,
    scene_split: str = "official",
):
    """Register one split of a nuScenes/Lyft dataset (lazy) and set its metadata."""
    DatasetCatalog.register(
        name,
        lambda: load_dataset_dicts(
            info_file,
            root,
            dataset=spec.name,
            version=version,
            split=eval_split,
            scene_split=scene_split,
        ),
    )
    MetadataCatalog.get(name).set(
        thing_classes=list(spec.classes),
        dataset_root=root,
        version=version,
        eval_split=eval_split,
        evaluator_type=spec.name,
        info_path=info_file,
        point_load_dim=spec.point_load_dim,
    )


def _infer(spec: DatasetSpec, info_file: str, version: Optional[str], eval_split: Optional[str]):
    if eval_split is None:
        base = os.path.basename(info_file)
        prefix = f"{spec.name}_infos_"
        if not (base.startswith(prefix) and base.endswith(".pkl")):
            raise ValueError(
                f"Cannot infer the split from {info_file!r} (expected {prefix}<split>.pkl); "
                "pass eval_split="
            )
        eval_split = base[len(prefix) : -len(".pkl")]
    if version is None:
        if spec.name == "nuscenes":
            version = {"mini_train": "v1.0-mini", "mini_val": "v1.0-mini", "test": "v1.0-test"}
            version = version.get(eval_split, "v1.0-trainval")
        else:
            version = "v1.01-test" if eval_split == "test" else "v1.01-train"
    return version, eval_split


def register_nuscenes(
    name: str,
    info_path: str,
    root: str,
    *,
    version: Optional[str] = None,
    eval_split: Optional[str] = None,
):
    """Register a nuScenes split built by ``tools/create_data.py nuscenes``.

    Args:
        name: dataset name, e.g. "nuscenes_val".
        info_path: the info file (``{root}/nuscenes_infos_{split}.pkl``), read on ``get``.
        root: the nuScenes root (devkit ``dataroot``).
        version, eval_split: default: inferred from the file name (``..._infos_mini_val.pkl`` ->
            "v1.0-mini", "mini_val").
    """
    version, eval_split = _infer(NUSCENES_SPEC, info_path, version, eval_split)
    register_pillars_dataset(
        name, info_path, root, spec=NUSCENES_SPEC, version=version, eval_split=eval_split
    )


def register_lyft(
    name: str,
    info_path: str,
    root: str,
    *,
    version: Optional[str] = None,
    eval_split: Optional[str] = None,
    scene_split: str = "official",
):
    """Register a Lyft split built by ``tools/create_data.py lyft`` (arguments as
    :func:`register_nuscenes`; ``scene_split`` only shapes the rebuild command in errors)."""
    version, eval_split = _infer(LYFT_SPEC, info_path, version, eval_split)
    register_pillars_dataset(
        name,
        info_path,
        root,
        spec=LYFT_SPEC,
        version=version,
        eval_split=eval_split,
        scene_split=scene_split,
    )


def default_datasets_root() -> str:
    """``$D2_PILLARS_DATASETS`` (``~`` expanded), default ``datasets`` (relative to the cwd)."""
    return os.path.expanduser(os.getenv("D2_PILLARS_DATASETS", "datasets"))


def register_all_defaults(datasets_root: str):
    """Register every name of :data:`DEFAULT_DATASETS` under ``datasets_root``."""
    for name, (dataset, subdir, version, split, scene_split) in DEFAULT_DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        root = os.path.join(datasets_root, subdir)
        register_pillars_dataset(
            name,
            info_path(root, dataset, split),
            root,
            spec=_SPECS[dataset],
            version=version,
            eval_split=split,
            scene_split=scene_split,
        )
