"""``tools/create_data.py custom``: check an own-data folder, write its infos and a ready config.

The config (``ROOT/d2_pillars/config.yaml``) is the ``--base-config`` architecture and solver
with what the data decides:

* ``DATASETS``: the registered splits, ``CLASS_NAMES`` and ``CUSTOM_ROOT`` (which makes
  ``load_config`` register the splits), ``MODEL.ANCHOR3D_HEAD.NUM_CLASSES``;
* ``INPUT.POINT_FEATURES`` ``x y z intensity`` (``x y z`` when no file has intensity),
  ``LOAD_DIM`` 4, no sweeps;
* ``INPUT.POINT_CLOUD_RANGE``: x, y cover the labelled box centres (0.5 - 99.5 percentiles, plus
  a margin), widened symmetrically until the BEV grid (range / ``VOXEL_SIZE``) is a multiple of
  the backbone's ``size_divisibility`` (the product of its strides); z spans the box bottoms to
  the box tops (with margins), and the pillar height ``VOXEL_SIZE[2]`` is that span;
* one anchor per class: the median ``l, w, h`` of its boxes, its z the median box bottom
  (``ANCHOR_RANGES`` hold the bottom), on the range's x, y; box code 7 (no velocity).

The solver is the base config's, unchanged: the config does not depend on the machine that
wrote it (``SOLVER.AMP`` on a CPU without native bfloat16 trains in float32 at run time,
:func:`d2_pillars.engine.amp.build_step_trainer`).
"""

import dataclasses
import logging
import math
import numpy as np
import os
from typing import Callable, Dict, List, Optional, Sequence

from ..data.datasets.custom import (
    OUTPUT_SUBDIR,
    CustomScan,
    class_iou_thresholds,
    dataset_name,
    scan_dataset,
    split_frames,
    write_custom_infos,
)
from ..utils.file_io import atomic_open
from .defaults import load_config

__all__ = [
    "DEFAULT_BASE_CONFIG",
    "DerivedGeometry",
    "snap_range",
    "derive_geometry",
    "derive_config",
    "summary_tables",
    "create_custom_data",
]

logger = logging.getLogger(__name__)

#: ``--base-config`` default (relative to the repository).
DEFAULT_BASE_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "configs",
    "nuscenes",
    "pointpillars_regnetx_400mf_fpn.yaml",
)
# Margins around the labelled boxes (m): x/y around the centres, z below bottoms / above tops.
_XY_MARGIN = 2.0
_Z_MARGIN = 0.5


@dataclasses.dataclass
class DerivedGeometry:
    """What the labels decide: the range and one anchor per class.

    Attributes:
        point_cloud_range: [x_min, y_min, z_min, x_max, y_max, z_max] (m), snapped.
        voxel_size: [dx, dy, dz] (dz = the z span).
        grid: (nx, ny) BEV cells, multiples of ``divisibility``.
        divisibility: the backbone's ``size_divisibility``.
        anchor_sizes: {class: [l, w, h]} medians.
        anchor_bottoms: {class: z} median box bottom (m).
        notes: what the derived config changes beyond the data (printed with the summary).
    """

    point_cloud_range: List[float]
    voxel_size: List[float]
    grid: tuple
    divisibility: int
    anchor_sizes: Dict[str, List[float]]
    anchor_bottoms: Dict[str, float]
    notes: List[str] = dataclasses.field(default_factory=list)


def snap_range(lo: float, hi: float, cell: float, divisibility: int) -> tuple:
    """``(lo', hi')`` containing ``[lo, hi]``, on multiples of ``cell``, with a width that is a
    multiple of ``cell * divisibility`` (grown about the centre)."""
    step = cell * divisibility
    width = max(math.ceil((hi - lo) / step - 1e-9), 1) * step
    centre = (lo + hi) / 2.0
    start = math.floor((centre - width / 2.0) / cell + 0.5) * cell
    if start > lo + 1e-9:  # rounding moved the window past lo: one more step
        start -= cell
        width += step
    start = round(start, 6)
    return start, round(start + width, 6)


def _size_divisibility(cfg) -> int:
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone

    channels = cfg.MODEL.PILLAR_FEATURE_NET.FEAT_CHANNELS[-1]
    backbone = build_backbone(cfg, ShapeSpec(channels=channels, stride=1))
    return int(getattr(backbone, "size_divisibility", 1) or 1)


def derive_geometry(scan: CustomScan, classes: Sequence[str], base_cfg) -> DerivedGeometry:
    """Range and anchors from the labelled boxes of ``classes`` (see the module docstring)."""
    boxes = [f.boxes[[n in classes for n in f.names]] for f in scan.labelled]
    names = [n for f in scan.labelled for n in f.names if n in classes]
    boxes = np.concatenate(boxes, axis=0) if boxes else np.zeros((0, 7), np.float32)
    if len(boxes) == 0:
        raise ValueError(f"no labelled box of the classes {list(classes)}: nothing to train on")
    vx, vy = float(base_cfg.INPUT.VOXEL_SIZE[0]), float(base_cfg.INPUT.VOXEL_SIZE[1])
    div = _size_divisibility(base_cfg)
    fixed = scan.options.point_cloud_range
    if fixed is not None:
        x0, y0, z0, x1, y1, z1 = [float(v) for v in fixed]
    else:
        lo = np.percentile(boxes[:, :2], 0.5, axis=0) - _XY_MARGIN
        hi = np.percentile(boxes[:, :2], 99.5, axis=0) + _XY_MARGIN
        x0, x1, y0, y1 = lo[0], hi[0], lo[1], hi[1]
        bottoms, tops = boxes[:, 2] - boxes[:, 5] / 2, boxes[:, 2] + boxes[:, 5] / 2
        z0 = math.floor((np.percentile(bottoms, 0.5) - _Z_MARGIN) * 10) / 10
        z1 = math.ceil((np.percentile(tops, 99.5) + _Z_MARGIN) * 10) / 10
    x0, x1 = snap_range(x0, x1, vx, div)
    y0, y1 = snap_range(y0, y1, vy, div)
    names = np.asarray(names)
    sizes, bottoms = {}, {}
    for c in classes:
        sel = boxes[names == c]
        if len(sel) == 0:  # a class of dataset.yaml without boxes: the typical car
            sizes[c], bottoms[c] = [4.0, 1.8, 1.6], float(z0 + _Z_MARGIN)
            continue
        sizes[c] = [round(float(v), 3) for v in np.median(sel[:, 3:6], axis=0)]
        bottoms[c] = round(float(np.median(sel[:, 2] - sel[:, 5] / 2)), 3)
    grid = (int(round((x1 - x0) / vx)), int(round((y1 - y0) / vy)))
    return DerivedGeometry(
        [x0, y0, float(z0), x1, y1, float(z1)],
        [vx, vy, round(float(z1 - z0), 6)],
        grid,
        div,
        sizes,
        bottoms,
    )


def derive_config(scan: CustomScan, base_config: str, names: Dict[str, str]):
    """The training config of a scanned dataset: ``base_config`` plus what the data decides.

    Args:
        names: ``{"train": name, "val": name}`` of the registered splits.

    Returns:
        (CfgNode, DerivedGeometry)
    """
    cfg = load_config(base_config)
    classes = scan.classes()
    geo = derive_geometry(scan, classes, cfg)
    if "train" not in names:
        raise ValueError(f"{scan.root}: no labelled frame to train on in the train split")
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = (names["val"],) if names.get("val") else ()
    cfg.DATASETS.CLASS_NAMES = list(classes)
    cfg.DATASETS.CUSTOM_ROOT = scan.root
    with_intensity = any(f.has_intensity for f in scan.frames.values())
    cfg.INPUT.LOAD_DIM = 4
    cfg.INPUT.POINT_FEATURES = ["x", "y", "z"] + (["intensity"] if with_intensity else [])
    cfg.INPUT.NUM_SWEEPS = 0
    cfg.INPUT.POINT_CLOUD_RANGE = list(geo.point_cloud_range)
    cfg.INPUT.VOXEL_SIZE = list(geo.voxel_size)
    head = cfg.MODEL.ANCHOR3D_HEAD
    head.NUM_CLASSES = len(classes)
    head.ANCHOR_SIZES = [geo.anchor_sizes[c] for c in classes]
    x0, y0, _, x1, y1, _ = geo.point_cloud_range
    head.ANCHOR_RANGES = [
        [x0, y0, geo.anchor_bottoms[c], x1, y1, geo.anchor_bottoms[c]] for c in classes
    ]
    head.BOX_CODE_SIZE = 7
    head.CODE_WEIGHTS = list(head.CODE_WEIGHTS)[:7]
    cfg.OUTPUT_DIR = os.path.join(scan.root, OUTPUT_SUBDIR, "output")
    return cfg, geo


def _points_in_range(scan: CustomScan, r: Sequence[float]) -> Dict[str, int]:
    """Per frame, points of its 4096-point sample inside the range (0 = no point in range)."""
    out = {}
    for token, f in scan.frames.items():
        p = f.xyz_sample
        inside = (p[:, 0] > r[0]) & (p[:, 0] < r[3]) & (p[:, 1] > r[1]) & (p[:, 1] < r[4])
        inside &= (p[:, 2] > r[2]) & (p[:, 2] < r[5])
        out[token] = int(inside.sum())
    return out


def summary_tables(
    scan: CustomScan,
    splits: Dict[str, List[str]],
    split_rule: str,
    geo: Optional[DerivedGeometry] = None,
) -> str:
    """The tables ``create_data.py custom`` prints: frames, points per frame, and per class the
    boxes, boxes without points, boxes outside the range, the anchor and the IoU thresholds;
    then the warnings."""
    from tabulate import tabulate

    frames = list(scan.frames.values())
    points = np.array([f.num_points for f in frames]) if frames else np.zeros(1)
    formats: Dict[str, int] = {}
    for f in frames:
        formats[f.format] = formats.get(f.format, 0) + 1
    rows = [
        ["frames", len(frames)],
        ["  labelled / unlabelled", f"{len(scan.labelled)} / {len(frames) - len(scan.labelled)}"],
        ["  train / val / unlabelled split", " / ".join(str(len(splits[k])) for k in splits)],
        ["  split", split_rule],
        ["  formats", ", ".join(f"{k} {v}" for k, v in sorted(formats.items()))],
        [
            "points per frame min / median / max",
            f"{points.min():.0f} / {np.median(points):.0f} / {points.max():.0f}",
        ],
    ]
    if geo is not None:
        rows += [
            ["point cloud range (m)", geo.point_cloud_range],
            ["voxel size (m)", geo.voxel_size],
            [
                "BEV grid nx x ny",
                f"{geo.grid[0]} x {geo.grid[1]} (multiples of {geo.divisibility})",
            ],
        ]
    text = [tabulate(rows, tablefmt="github", headers=["dataset", ""])]

    classes = scan.classes()
    thresholds = class_iou_thresholds(classes, scan.options.class_iou_thresholds)
    counts = scan.class_counts()
    per_class = []
    warnings = list(scan.warnings)
    for c in sorted(set(classes) | set(counts), key=lambda c: (c not in classes, c)):
        n = counts.get(c, 0)
        empty = sum(
            int((f.num_box_points[[x == c for x in f.names]] == 0).sum()) for f in scan.labelled
        )
        outside = "-"
        if geo is not None:
            r = geo.point_cloud_range
            outside = 0
            for f in scan.labelled:
                sel = f.boxes[[x == c for x in f.names]]
                inside = (
                    (sel[:, 0] > r[0])
                    & (sel[:, 0] < r[3])
                    & (sel[:, 1] > r[1])
                    & (sel[:, 1] < r[4])
                )
                outside += int((~inside).sum())
        anchor = "-" if geo is None or c not in classes else geo.anchor_sizes[c]
        z = "-" if geo is None or c not in classes else geo.anchor_bottoms[c]
        label = classes.index(c) if c in classes else "-1 (ignored)"
        per_class.append([c, label, n, empty, outside, anchor, z, thresholds.get(c, "-")])
        if c in classes and n < scan.options.min_boxes_per_class:
            warnings.append(
                f"class {c!r} has {n} boxes (< min_boxes_per_class "
                f"{scan.options.min_boxes_per_class}): too few to learn from"
            )
    text.append(
        tabulate(
            per_class,
            tablefmt="github",
            headers=[
                "class", "label", "boxes", "no points", "outside range",
                "anchor l w h", "anchor bottom z", "IoU strict/loose",
            ],
        )  # fmt: skip
    )
    total_empty = sum(r[3] for r in per_class)
    if total_empty:
        warnings.append(f"{total_empty} boxes hold no point (they are not trained on)")
    if geo is not None:
        in_range = _points_in_range(scan, geo.point_cloud_range)
        none = sorted(t for t, n in in_range.items() if n == 0)
        if none:
            warnings.append(
                f"{len(none)} frames have no point inside the range (checked on a 4096-point "
                f"sample per frame), e.g. {none[:3]}"
            )
    if geo is not None and geo.notes:
        text.append("Config notes:\n" + "\n".join(f"  - {n}" for n in geo.notes))
    if warnings:
        text.append("Warnings:\n" + "\n".join(f"  - {w}" for w in warnings))
    return "\n\n".join(text)


def _problem_report(scan: CustomScan) -> str:
    lines = [f"{path}: {reason}" for path, reason in scan.problems]
    lines.append(
        f"{len(scan.problems)} problems in {scan.root}; nothing was written. Fix the files above "
        "(or move them out of ROOT/points and ROOT/labels) and run again."
    )
    return "\n".join(lines)


def _write_config(cfg, path: str, base_config: str) -> None:
    header = (
        "# Written by `python tools/create_data.py custom` from the architecture and solver of\n"
        f"# {base_config}; the data set DATASETS, the classes, INPUT.POINT_FEATURES, the point\n"
        "# cloud range (snapped to the backbone's strides) and the anchors (README, 'Your own\n"
        "# LiDAR data'). Rerun create_data.py after changing the data.\n"
    )
    with atomic_open(path, "w") as f:
        f.write(header + cfg.dump())


def create_custom_data(
    root: str,
    *,
    base_config: Optional[str] = None,
    check: bool = False,
    point_dim: Optional[int] = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> int:
    """What ``tools/create_data.py custom`` does; returns the exit status.

    Scans every file; with any problem prints them all and returns 1 before writing anything.
    With ``check`` only prints the summary. Otherwise writes the info files, the index and
    ``ROOT/d2_pillars/config.yaml``, and prints the summary tables.
    """
    base_config = base_config or DEFAULT_BASE_CONFIG
    scan = scan_dataset(root, point_dim=point_dim, progress=progress)
    if scan.problems:
        echo(_problem_report(scan))
        return 1
    splits, rule = split_frames(scan)
    name = dataset_name(scan)
    names = {s: f"{name}_{s}" for s, ids in splits.items() if ids}
    cfg, geo = derive_config(scan, base_config, names)
    echo(summary_tables(scan, splits, rule, geo))
    if check:
        echo(f"--check: {len(scan.frames)} frames read, no problem; nothing written.")
        return 0
    written = write_custom_infos(scan, splits, rule)
    config_path = os.path.join(scan.root, OUTPUT_SUBDIR, "config.yaml")
    _write_config(cfg, config_path, base_config)
    for dataset, path in written.items():
        echo(f"{dataset}: {path}")
    echo(f"config: {config_path}\nTrain: python tools/train_net.py --config-file {config_path}")
    return 0
