"""Own LiDAR data: the folder layout, its validation, info records and catalog registration.

Layout (README, "Your own LiDAR data")::

    ROOT/points/<id>.<bin|npy|pcd|ply|las|laz>   one frame per file, formats may be mixed
    ROOT/labels/<id>.txt                          optional per frame: "x y z dx dy dz yaw class"
    ROOT/splits/{train,val}.txt                   optional: frame ids, one a line
    ROOT/dataset.yaml                             optional: see :class:`CustomDatasetOptions`

A label line is one box: centre (or bottom centre with ``box_origin: bottom``) in the LiDAR frame
in metres, ``dx`` along the heading (the package's ``l``), ``dy`` across (``w``), ``dz`` vertical
(``h``), yaw about +z from +x in radians, and the class name (no spaces). A frame without a label
file is unlabelled (inference only: ``has_labels`` False); an empty label file is a labelled
frame with no object.

:func:`scan_dataset` reads every file once and returns a :class:`CustomScan` holding the frames,
their boxes and statistics, and *every* problem found (``(path, reason)``); nothing is written
until there is none. :func:`build_records` turns a scan into the info records (the nuScenes/Lyft
record layout of ``docs/internals.md`` plus ``token``, ``has_labels`` and ``point_file``, the
reader options of the frame's file), and :func:`register_custom_dataset` registers the splits a
``tools/create_data.py custom`` run wrote (index ``ROOT/d2_pillars/datasets.json``).
"""

import dataclasses
import json
import logging
import math
import numpy as np
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_pillars.class_names import default_iou_thresholds
from d2_pillars.structures import LiDARBoxes
from d2_pillars.utils.file_io import atomic_open

from ..point_files import (
    DEFAULT_LAS_INTENSITY_SCALE,
    POINT_FILE_EXTENSIONS,
    PointFileError,
    default_columns,
    read_point_file,
)
from .infos import InfoFileError, load_infos, save_infos

__all__ = [
    "CUSTOM_DATASET",
    "OUTPUT_SUBDIR",
    "INDEX_NAME",
    "CustomDatasetOptions",
    "CustomFrame",
    "CustomScan",
    "load_options",
    "parse_label_file",
    "scan_dataset",
    "dataset_name",
    "info_file",
    "split_frames",
    "build_records",
    "write_custom_infos",
    "register_custom_dataset",
    "class_iou_thresholds",
]

logger = logging.getLogger(__name__)

#: The ``dataset`` of the records and info files, and the ``evaluator_type``.
CUSTOM_DATASET = "custom"
#: Where ``create_data.py custom`` writes (relative to ROOT): infos, index, config.
OUTPUT_SUBDIR = "d2_pillars"
INDEX_NAME = "datasets.json"
_NAME_RE = re.compile(r"[^A-Za-z0-9_]+")


@dataclasses.dataclass
class CustomDatasetOptions:
    """``ROOT/dataset.yaml``: what the files cannot say. Every key is optional.

    Attributes:
        name: dataset name; splits register as ``<name>_train``, ``<name>_val``,
            ``<name>_unlabelled`` (default: ``custom_<folder name>``).
        point_dim: float32 values per point of the ``.bin`` files.
        point_features: names of the ``.bin`` / ``.npy`` columns in order (x, y, z and
            ``intensity`` found by name; default ``x y z intensity col4 ...``).
        intensity_scale: multiplies every file's intensity.
        las_intensity_scale: multiplies the LAS uint16 intensity (default 255 / 65535).
        box_origin: ``center`` (OpenPCDet's line) or ``bottom`` (mmdetection3d's).
        point_cloud_range: fixed ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (m) instead of
            the one derived from the labels (still snapped to the grid).
        classes: label order; boxes of other classes get label -1 (default: every class of the
            labels, sorted by name).
        class_iou_thresholds: ``{class: [strict, loose]}`` for the evaluator.
        val_fraction, split_seed: the seeded split without ``ROOT/splits``.
        min_boxes_per_class: fewer boxes of a class is a warning.
    """

    name: str = ""
    point_dim: int = 4
    point_features: Optional[List[str]] = None
    intensity_scale: float = 1.0
    las_intensity_scale: float = DEFAULT_LAS_INTENSITY_SCALE
    box_origin: str = "center"
    point_cloud_range: Optional[List[float]] = None
    classes: Optional[List[str]] = None
    class_iou_thresholds: Dict[str, List[float]] = dataclasses.field(default_factory=dict)
    val_fraction: float = 0.2
    split_seed: int = 0
    min_boxes_per_class: int = 10

    def reader_options(self) -> dict:
        """Keywords of ``point_files.read_point_file`` (stored in each record)."""
        columns = list(self.point_features or default_columns(self.point_dim))
        return {
            "point_dim": int(self.point_dim),
            "columns": columns,
            "intensity_scale": float(self.intensity_scale),
            "las_intensity_scale": float(self.las_intensity_scale),
        }


def _check_options(o: CustomDatasetOptions) -> List[str]:
    problems = []
    if o.box_origin not in ("center", "bottom"):
        problems.append(f"box_origin must be 'center' or 'bottom', got {o.box_origin!r}")
    if not isinstance(o.point_dim, int) or o.point_dim < 3:
        problems.append(f"point_dim must be an integer >= 3, got {o.point_dim!r}")
    elif o.point_features is not None and len(o.point_features) != o.point_dim:
        problems.append(
            f"point_features names {len(o.point_features)} columns but point_dim is {o.point_dim}"
        )
    if o.point_features is not None and not {"x", "y", "z"} <= set(o.point_features):
        problems.append(f"point_features must name x, y and z, got {o.point_features}")
    r = o.point_cloud_range
    if r is not None and (len(r) != 6 or not all(r[i + 3] > r[i] for i in range(3))):
        problems.append(
            f"point_cloud_range must be [x_min, y_min, z_min, x_max, y_max, z_max]: {r}"
        )
    for cls, thr in (o.class_iou_thresholds or {}).items():
        if len(thr) != 2 or not all(0 < float(t) <= 1 for t in thr):
            problems.append(f"class_iou_thresholds[{cls}] must be [strict, loose] in (0, 1]: {thr}")
    if not 0 < o.val_fraction < 1:
        problems.append(f"val_fraction must be in (0, 1), got {o.val_fraction}")
    return problems


def load_options(root: str, point_dim: Optional[int] = None) -> Tuple[CustomDatasetOptions, list]:
    """``(options, problems)`` from ``ROOT/dataset.yaml`` (defaults without it); ``point_dim``
    (the CLI's ``--point-dim``) overrides the file's."""
    import yaml

    path = os.path.join(root, "dataset.yaml")
    values, problems = {}, []
    if os.path.isfile(path):
        try:
            with open(path) as f:
                values = yaml.safe_load(f) or {}
            if not isinstance(values, dict):
                raise ValueError("the top level must be a mapping of keys")
        except Exception as e:
            return CustomDatasetOptions(), [(path, f"cannot be read as YAML ({e})")]
    known = {f.name for f in dataclasses.fields(CustomDatasetOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        problems.append((path, f"unknown keys {unknown}; the keys are {sorted(known)}"))
        values = {k: v for k, v in values.items() if k in known}
    if point_dim is not None:
        values["point_dim"] = int(point_dim)
    try:
        options = CustomDatasetOptions(**values)
    except TypeError as e:
        return CustomDatasetOptions(), problems + [(path, str(e))]
    problems += [(path, p) for p in _check_options(options)]
    return options, problems


# ------------------------------------------------------------------------------------------- #
# Labels
# ------------------------------------------------------------------------------------------- #
def parse_label_file(path: str) -> Tuple[np.ndarray, List[str], List[str]]:
    """``(boxes (K, 7) float64 as written, class names, problems)`` of a label file.

    Each problem names the line: not 8 fields, a value that is not a finite number, a size
    ``dx, dy, dz`` <= 0. Blank lines and lines starting with ``#`` are skipped.
    """
    boxes, names, problems = [], [], []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return np.zeros((0, 7)), [], [f"cannot be read ({type(e).__name__}: {e})"]
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) != 8:
            problems.append(
                f"line {number}: {len(fields)} fields, expected 8 (x y z dx dy dz yaw class)"
            )
            continue
        try:
            values = [float(v) for v in fields[:7]]
        except ValueError:
            problems.append(f"line {number}: {fields[:7]} are not all numbers")
            continue
        if not all(math.isfinite(v) for v in values):
            problems.append(f"line {number}: NaN or inf in {fields[:7]}")
            continue
        if min(values[3:6]) <= 0:
            problems.append(f"line {number}: size dx dy dz {values[3:6]} must be > 0")
            continue
        boxes.append(values)
        names.append(fields[7])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 7), names, problems


def _to_package_boxes(rows: np.ndarray, box_origin: str, offset: np.ndarray) -> np.ndarray:
    """Label rows -> (K, 7) float32 in the package convention (centre z, yaw wrapped), with
    the frame's point offset subtracted (recentred LAS files)."""
    rows = np.asarray(rows, dtype=np.float64).copy()
    rows[:, :3] -= offset
    tensor = torch.from_numpy(rows.astype(np.float32))
    if box_origin == "bottom":
        boxes = LiDARBoxes.from_bottom_center(tensor)
    else:
        boxes = LiDARBoxes(tensor)
    return boxes.wrap_yaw().tensor.numpy().copy()


# ------------------------------------------------------------------------------------------- #
# Scan
# ------------------------------------------------------------------------------------------- #
@dataclasses.dataclass
class CustomFrame:
    """One frame as scanned (boxes in the package convention, offset subtracted)."""

    token: str
    points_path: str  # relative to ROOT
    has_labels: bool
    boxes: np.ndarray  # (K, 7) float32
    names: List[str]
    num_points: int
    num_box_points: np.ndarray  # (K,) int64 points inside each box
    offset: np.ndarray  # (3,) float64
    has_intensity: bool
    num_dropped: int
    format: str
    xyz_sample: np.ndarray  # (<= 4096, 3) float32, for range-dependent statistics


@dataclasses.dataclass
class CustomScan:
    """Everything :func:`scan_dataset` found: frames by token, problems, warnings, options."""

    root: str
    options: CustomDatasetOptions
    frames: Dict[str, CustomFrame]
    problems: List[Tuple[str, str]]
    warnings: List[str]
    splits_given: Dict[str, List[str]]  # from ROOT/splits/*.txt (may be empty)

    @property
    def labelled(self) -> List[CustomFrame]:
        return [f for f in self.frames.values() if f.has_labels]

    def class_counts(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for f in self.labelled:
            for n in f.names:
                counts[n] = counts.get(n, 0) + 1
        return counts

    def classes(self) -> List[str]:
        """Label order: ``dataset.yaml`` classes, else every class of the labels by name."""
        if self.options.classes:
            return list(self.options.classes)
        return sorted(self.class_counts())


def _list_dir(path: str) -> List[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def _read_split_file(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def scan_dataset(
    root: str, *, point_dim: Optional[int] = None, progress: bool = True
) -> CustomScan:
    """Read and check every file of an own-data folder.

    Problems (each ``(path, reason)``; all of them are collected): a broken ``dataset.yaml``, no
    ``points/`` folder or no frames, a points file with an unknown extension, two points files of
    one id, a points file that cannot be read (truncated ``.bin``, unreadable PCD/PLY/LAS, no x,
    y, z), a label line that does not have 8 fields or has a non-number or a size <= 0, a label
    file without a points file, a split file naming an unknown id. Warnings: NaN/inf points
    dropped, files without intensity, ids of ``splits/`` that are unlabelled.
    """
    from tqdm import tqdm

    root = os.path.abspath(os.path.expanduser(root))
    options, problems = load_options(root, point_dim)
    problems = list(problems)
    warnings: List[str] = []
    points_dir, labels_dir = os.path.join(root, "points"), os.path.join(root, "labels")
    if not os.path.isdir(points_dir):
        problems.append((points_dir, "missing: put one point file per frame in ROOT/points/"))
    by_id: Dict[str, str] = {}
    for name in _list_dir(points_dir):
        path = os.path.join(points_dir, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        stem, ext = os.path.splitext(name)
        if ext.lower() not in POINT_FILE_EXTENSIONS:
            problems.append(
                (path, f"unknown extension; supported: {', '.join(sorted(POINT_FILE_EXTENSIONS))}")
            )
            continue
        if stem in by_id:
            problems.append((path, f"a second points file of frame {stem!r} ({by_id[stem]})"))
            continue
        by_id[stem] = path
    label_files = {}
    for name in _list_dir(labels_dir):
        path = os.path.join(labels_dir, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        stem, ext = os.path.splitext(name)
        if ext != ".txt":
            problems.append((path, "label files are ROOT/labels/<id>.txt"))
            continue
        label_files[stem] = path
        if stem not in by_id:
            problems.append((path, f"label file without a points file ROOT/points/{stem}.<ext>"))
    if os.path.isdir(points_dir) and not by_id:
        problems.append((points_dir, "holds no point files"))

    reader = options.reader_options()
    frames: Dict[str, CustomFrame] = {}
    no_intensity = []
    sample_rng = np.random.default_rng(0)
    for token in tqdm(sorted(by_id), desc="own data", unit="frame", disable=not progress):
        path = by_id[token]
        try:
            pf = read_point_file(path, **reader)
        except PointFileError as e:
            problems.append((path, e.reason))
            continue
        except Exception as e:  # noqa: BLE001 - any library failure is a broken file
            problems.append((path, f"cannot be read ({type(e).__name__}: {e})"))
            continue
        if pf.num_dropped:
            warnings.append(f"{path}: dropped {pf.num_dropped} points with NaN/inf values")
        if not pf.has_intensity:
            no_intensity.append(path)
        rows, names, has_labels = np.zeros((0, 7)), [], token in label_files
        if has_labels:
            rows, names, label_problems = parse_label_file(label_files[token])
            problems += [(label_files[token], p) for p in label_problems]
        boxes = _to_package_boxes(rows, options.box_origin, pf.offset)
        inside = LiDARBoxes(torch.from_numpy(boxes)).points_in_boxes(pf.points[:, :3])
        n = pf.points.shape[0]
        pick = sample_rng.choice(n, min(n, 4096), replace=False) if n else np.zeros(0, int)
        frames[token] = CustomFrame(
            token=token,
            points_path=os.path.relpath(path, root),
            has_labels=has_labels,
            boxes=boxes,
            names=names,
            num_points=n,
            num_box_points=inside.sum(0).numpy().astype(np.int64),
            offset=pf.offset,
            has_intensity=pf.has_intensity,
            num_dropped=pf.num_dropped,
            format=pf.format,
            xyz_sample=pf.points[np.sort(pick), :3].copy(),
        )
    if no_intensity:
        warnings.append(
            f"{len(no_intensity)} point files have no intensity field (intensity 0), e.g. "
            f"{no_intensity[0]}"
        )

    splits_given: Dict[str, List[str]] = {}
    for split in ("train", "val"):
        path = os.path.join(root, "splits", f"{split}.txt")
        if not os.path.isfile(path):
            continue
        ids = _read_split_file(path)
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            problems.append((path, f"{len(unknown)} ids without a points file, e.g. {unknown[:3]}"))
        splits_given[split] = [i for i in ids if i in by_id]
    if frames and not any(f.has_labels for f in frames.values()):
        problems.append((labels_dir, "no frame has a label file: nothing to train on"))
    return CustomScan(root, options, frames, problems, warnings, splits_given)


def split_frames(scan: CustomScan) -> Tuple[Dict[str, List[str]], str]:
    """``({"train": ids, "val": ids, "unlabelled": ids}, how)``: ``ROOT/splits`` when given (with
    only ``val.txt``, the other labelled frames train), else a seeded split of the labelled
    frames; unlabelled frames not in a split file are the ``unlabelled`` split; unlabelled ids
    in ``train`` move to it (with a warning), those in ``val`` stay there (``has_labels``
    False: the evaluator skips them)."""
    labelled = sorted(f.token for f in scan.labelled)
    unlabelled = sorted(t for t, f in scan.frames.items() if not f.has_labels)
    if scan.splits_given:
        val = list(scan.splits_given.get("val", []))
        if "train" in scan.splits_given:
            train = list(scan.splits_given["train"])
        else:  # only val.txt: every other labelled frame trains
            train = [t for t in labelled if t not in set(val)]
        if not val:
            scan.warnings.append("no val frames (splits/val.txt missing or empty): no evaluation")
        dropped = [t for t in train if not scan.frames[t].has_labels]
        if dropped:
            scan.warnings.append(
                f"{len(dropped)} ids of splits/train.txt have no label file: not trained on, "
                f"they join the unlabelled split, e.g. {dropped[:3]}"
            )
        train = [t for t in train if scan.frames[t].has_labels]
        listed = set(train) | set(val)
        how = "ROOT/splits/*.txt"
    else:
        rng = np.random.default_rng(scan.options.split_seed)
        order = [labelled[i] for i in rng.permutation(len(labelled))]
        n_val = int(round(scan.options.val_fraction * len(order)))
        if len(order) > 1:
            n_val = min(max(n_val, 1), len(order) - 1)
        val, train = sorted(order[:n_val]), sorted(order[n_val:])
        listed = set(labelled)
        how = (
            f"seeded split (no ROOT/splits): val_fraction {scan.options.val_fraction}, "
            f"split_seed {scan.options.split_seed}"
        )
    rest = [t for t in unlabelled if t not in listed]
    return {"train": train, "val": val, "unlabelled": rest}, how


# ------------------------------------------------------------------------------------------- #
# Records, info files, registration
# ------------------------------------------------------------------------------------------- #
def class_iou_thresholds(classes: Sequence[str], overrides: Optional[dict] = None) -> dict:
    """``{class: [strict, loose]}``: ``overrides`` (dataset.yaml), else the defaults
    (``class_names.default_iou_thresholds``: Car/Vehicle/Truck/Bus 0.7 / 0.5, others 0.5 /
    0.25)."""
    overrides = overrides or {}
    out = {}
    for c in classes:
        if c in overrides:
            out[c] = [float(v) for v in overrides[c]]
        else:
            out[c] = list(default_iou_thresholds(c))
    return out


def build_records(scan: CustomScan, tokens: Sequence[str], classes: Sequence[str]) -> List[dict]:
    """Info records of ``tokens`` (paths relative to ROOT); format in ``docs/internals.md``."""
    reader = scan.options.reader_options()
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for token in tokens:
        f = scan.frames[token]
        labels = np.array([index.get(n, -1) for n in f.names], dtype=np.int64)
        k = len(f.names)
        records.append(
            {
                "dataset": CUSTOM_DATASET,
                "sample_token": token,
                "token": token,
                "scene_token": "",
                "timestamp": 0.0,
                "lidar_path": f.points_path,
                "lidar2ego": np.eye(4),
                "ego2global": np.eye(4),
                "sweeps": [],
                "point_file": dict(reader, offset=[float(v) for v in f.offset]),
                "has_labels": bool(f.has_labels),
                "gt_boxes": np.ascontiguousarray(f.boxes, dtype=np.float32).reshape(k, 7),
                "gt_names": list(f.names),
                "gt_labels": labels,
                "gt_categories": list(f.names),
                "num_lidar_pts": f.num_box_points.astype(np.int64),
                "num_radar_pts": np.zeros(k, dtype=np.int64),
                "valid_flag": f.num_box_points > 0,
            }
        )
    return records


def dataset_name(scan: CustomScan) -> str:
    if scan.options.name:
        return _NAME_RE.sub("_", scan.options.name)
    return "custom_" + _NAME_RE.sub("_", os.path.basename(scan.root.rstrip(os.sep)) or "data")


def info_file(root: str, split: str) -> str:
    """``ROOT/d2_pillars/custom_infos_<split>.pkl``."""
    return os.path.join(root, OUTPUT_SUBDIR, f"{CUSTOM_DATASET}_infos_{split}.pkl")


def write_custom_infos(
    scan: CustomScan, splits: Dict[str, List[str]], split_rule: str
) -> Dict[str, str]:
    """Write one info file per non-empty split and the index; returns ``{dataset name: path}``.

    Call only with a scan without problems.
    """
    if scan.problems:
        raise ValueError("refusing to write infos of a dataset with problems")
    classes = scan.classes()
    name = dataset_name(scan)
    os.makedirs(os.path.join(scan.root, OUTPUT_SUBDIR), exist_ok=True)
    written, index = {}, {}
    for split, tokens in splits.items():
        if not tokens:
            continue
        path = info_file(scan.root, split)
        meta = {
            "dataset": CUSTOM_DATASET,
            "version": CUSTOM_DATASET,
            "split": split,
            "classes": list(classes),
            "split_rule": split_rule,
            "box_origin_in_labels": scan.options.box_origin,
        }
        save_infos(path, build_records(scan, tokens, classes), meta)
        written[f"{name}_{split}"] = path
        index[f"{name}_{split}"] = {"split": split, "info_file": os.path.relpath(path, scan.root)}
    content = {
        "dataset": CUSTOM_DATASET,
        "name": name,
        "classes": list(classes),
        "class_iou_thresholds": class_iou_thresholds(classes, scan.options.class_iou_thresholds),
        "splits": index,
    }
    with atomic_open(os.path.join(scan.root, OUTPUT_SUBDIR, INDEX_NAME), "w") as f:
        json.dump(content, f, indent=1)
    return written


def _load_custom_dicts(info_path: str, root: str, classes: Sequence[str], split: str):
    cmd = f"python tools/create_data.py custom --root {root}"
    try:
        infos, meta = load_infos(info_path)
    except InfoFileError as e:
        raise InfoFileError(f"{e}\nFor this dataset the command is:\n  {cmd}") from None
    if meta.get("dataset") != CUSTOM_DATASET or meta.get("split") != split:
        raise InfoFileError(
            f"{info_path} holds {meta.get('dataset')!r} split {meta.get('split')!r}, expected "
            f"the own-data split {split!r}; rebuild it with:\n  {cmd}"
        )
    if list(meta.get("classes", [])) != list(classes):
        raise InfoFileError(
            f"{info_path} has classes {meta.get('classes')}, but {INDEX_NAME} says "
            f"{list(classes)}; rebuild it with:\n  {cmd}"
        )
    for rec in infos:
        if not os.path.isabs(rec["lidar_path"]):
            rec["lidar_path"] = os.path.normpath(os.path.join(root, rec["lidar_path"]))
    return infos


def register_custom_dataset(root: str) -> List[str]:
    """Register every split that ``create_data.py custom`` wrote for ``root`` (lazy: the info
    file is read on ``DatasetCatalog.get``); returns the names. Registering the same root again
    does nothing; another root under a registered name is an error.

    Metadata: ``evaluator_type="custom"``, ``thing_classes``, ``class_iou_thresholds``
    (``{class: [strict, loose]}``), ``root`` and ``dataset_root``, ``info_path``, ``eval_split``.
    """
    root = os.path.abspath(os.path.expanduser(root))
    path = os.path.join(root, OUTPUT_SUBDIR, INDEX_NAME)
    if not os.path.isfile(path):
        raise InfoFileError(
            f"{path} does not exist: DATASETS.CUSTOM_ROOT names {root}, whose infos are not built. "
            f"Run:\n  python tools/create_data.py custom --root {root}"
        )
    with open(path) as f:
        index = json.load(f)
    names = []
    for name, entry in index["splits"].items():
        info_path = os.path.join(root, entry["info_file"])
        if name in DatasetCatalog.list():
            known = MetadataCatalog.get(name).get("info_path", None)
            if known != info_path:
                raise ValueError(
                    f"Dataset name {name!r} is already registered (info file {known}); give "
                    f"the dataset at {root} another name in its dataset.yaml (name: ...)"
                )
            names.append(name)
            continue
        classes, split = list(index["classes"]), entry["split"]
        DatasetCatalog.register(
            name,
            lambda p=info_path, c=classes, s=split: _load_custom_dicts(p, root, c, s),
        )
        MetadataCatalog.get(name).set(
            thing_classes=classes,
            class_iou_thresholds=index["class_iou_thresholds"],
            evaluator_type=CUSTOM_DATASET,
            root=root,
            dataset_root=root,
            info_path=info_path,
            eval_split=split,
            version=CUSTOM_DATASET,
        )
        names.append(name)
    return names
