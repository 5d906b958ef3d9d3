"""``tools/predict.py``: boxes for point-cloud files of any supported format.

For each input file (``.bin``, ``.npy``, ``.pcd``, ``.ply``, ``.las``/``.laz``; see
``data/point_files.py``) the cloud is read into ``x, y, z, intensity``, the columns the model
wants are taken by name (a feature the file lacks, e.g. the sweep ``time_lag`` of the nuScenes
models, is 0), and the predictor runs on it. Outputs in ``OUT``:

* ``<id>.txt``: one box a line, ``x y z dx dy dz yaw class score``: the label line of
  ``ROOT/labels`` plus the score, in the file's own coordinates (a recentred LAS gets its offset
  back), so predictions can be read back as labels;
* ``predictions.json``: per file its id, path, ``offset`` (what was subtracted from x, y, z:
  non-zero for georeferenced LAS) and the boxes in the recentred frame (add ``offset`` to x, y, z
  to map them back), classes and scores;
* ``<id>.png``: the BEV image of the points and boxes (unless ``images=False``).
"""

import json
import logging
import numpy as np
import os
from typing import Callable, Dict, List, Optional, Sequence

from ..data.datasets.custom import load_options
from ..data.point_files import POINT_FILE_EXTENSIONS, point_file_format, read_point_file
from ..utils.file_io import atomic_open

__all__ = ["collect_inputs", "cloud_for_model", "reader_options_for", "predict_files"]

logger = logging.getLogger(__name__)


def collect_inputs(inputs: Sequence[str]) -> List[str]:
    """The point files named by ``inputs``: files as given, folders expanded to their supported
    files (sorted, not recursive).

    Raises:
        FileNotFoundError: an input does not exist; ValueError: nothing to predict on, or a file
            of an unsupported extension.
    """
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, n)
                for n in os.listdir(item)
                if point_file_format(n) and os.path.isfile(os.path.join(item, n))
            )
            if not found:
                raise ValueError(
                    f"{item} holds no point file ({', '.join(sorted(POINT_FILE_EXTENSIONS))})"
                )
            files += found
        elif os.path.isfile(item):
            if point_file_format(item) is None:
                raise ValueError(
                    f"{item}: unsupported extension; supported: "
                    f"{', '.join(sorted(POINT_FILE_EXTENSIONS))}"
                )
            files.append(item)
        else:
            raise FileNotFoundError(f"Input {item} does not exist")
    return files


def cloud_for_model(points: np.ndarray, point_features: Sequence[str]) -> np.ndarray:
    """(N, len(point_features)) float32 from an ``x, y, z, intensity`` cloud (N, 4): columns by
    name, 0 for a feature the file does not have (``time_lag``, ``ring``, ...)."""
    have = {"x": 0, "y": 1, "z": 2, "intensity": 3}
    out = np.zeros((points.shape[0], len(point_features)), dtype=np.float32)
    for j, name in enumerate(point_features):
        if name in have:
            out[:, j] = points[:, have[name]]
    return out


def reader_options_for(cfg, point_dim: Optional[int] = None) -> dict:
    """Reader options of ``point_files.read_point_file``: an own-data config's ``dataset.yaml``
    (point_dim, columns, intensity scales) when ``DATASETS.CUSTOM_ROOT`` is set; ``point_dim``
    (``--point-dim``) overrides."""
    root = cfg.DATASETS.CUSTOM_ROOT
    if root:
        options, _ = load_options(root, point_dim)
        return options.reader_options()
    return {"point_dim": int(point_dim or 4)}


def _unique_ids(files: Sequence[str]) -> List[str]:
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    ids, seen = [], {}
    for f, stem in zip(files, stems):
        fid = stem if stems.count(stem) == 1 else f"{stem}_{os.path.splitext(f)[1][1:].lower()}"
        n = seen.get(fid, 0)
        seen[fid] = n + 1
        ids.append(fid if n == 0 else f"{fid}_{n}")
    return ids


def predict_files(
    cfg,
    inputs: Sequence[str],
    output_dir: str,
    *,
    predictor_factory: Callable,
    score_thresh: Optional[float] = None,
    images: bool = True,
    point_dim: Optional[int] = None,
    progress: bool = True,
) -> Dict[str, dict]:
    """Run a model on point files and write the outputs of the module docstring.

    Args:
        cfg: the model's config (``load_config``); ``DATASETS.CLASS_NAMES`` names the labels.
        inputs: files and folders (:func:`collect_inputs`).
        output_dir: OUT.
        predictor_factory: ``cfg -> predictor`` with ``predict_points(points (N, C))``
            (``d2_pillars.deploy.build_predictor``: torch or onnxruntime by ``MODEL.BACKEND``).
        score_thresh: keep boxes with a score >= this (None: every box the model returns).
        images: write a BEV PNG per file.
        point_dim: float32 values per point of ``.bin`` files (default: the own-data
            ``dataset.yaml``, else 4).

    Returns:
        ``{id: entry of predictions.json}``.
    """
    from tqdm import tqdm

    files = collect_inputs(inputs)
    class_names = list(cfg.DATASETS.CLASS_NAMES)
    if len(class_names) != cfg.MODEL.ANCHOR3D_HEAD.NUM_CLASSES:
        raise ValueError(
            f"DATASETS.CLASS_NAMES has {len(class_names)} names for "
            f"MODEL.ANCHOR3D_HEAD.NUM_CLASSES {cfg.MODEL.ANCHOR3D_HEAD.NUM_CLASSES}"
        )
    reader = reader_options_for(cfg, point_dim)
    predictor = predictor_factory(cfg)
    os.makedirs(output_dir, exist_ok=True)
    features = list(cfg.INPUT.POINT_FEATURES)
    r = cfg.INPUT.POINT_CLOUD_RANGE
    results: Dict[str, dict] = {}
    warned = False
    for path, fid in tqdm(
        list(zip(files, _unique_ids(files))), desc="predict", unit="file", disable=not progress
    ):
        pf = read_point_file(path, **reader)
        if not pf.has_intensity and "intensity" in features and not warned:
            warned = True
            logger.warning("%s has no intensity field: the model sees intensity 0", path)
        if pf.num_dropped:
            logger.warning("Dropped %d NaN/inf points of %s", pf.num_dropped, path)
        inst = predictor.predict_points(cloud_for_model(pf.points, features))["instances"]
        boxes = inst.pred_boxes3d.tensor[:, :7].double().numpy()
        scores = inst.scores.float().numpy()
        labels = inst.pred_classes.numpy().astype(np.int64)
        keep = np.ones(len(scores), bool) if score_thresh is None else scores >= score_thresh
        order = np.argsort(-scores[keep], kind="stable")
        boxes, scores, labels = boxes[keep][order], scores[keep][order], labels[keep][order]
        names = [class_names[i] for i in labels]
        lines = []
        for box, name, score in zip(boxes, names, scores):
            x, y, z = box[:3] + pf.offset
            lines.append(
                f"{x:.4f} {y:.4f} {z:.4f} {box[3]:.4f} {box[4]:.4f} {box[5]:.4f} {box[6]:.4f} "
                f"{name} {score:.4f}\n"
            )
        with atomic_open(os.path.join(output_dir, f"{fid}.txt"), "w") as f:
            f.write("".join(lines))
        entry = {
            "file": os.path.abspath(path),
            "offset": [float(v) for v in pf.offset],
            "num_points": int(pf.points.shape[0]),
            "boxes": [[round(float(v), 5) for v in b] for b in boxes],
            "classes": names,
            "scores": [round(float(s), 5) for s in scores],
        }
        if images:
            from ..visualization.bev import render_bev, save_png

            image = render_bev(
                pf.points,
                pred_boxes=boxes.astype(np.float32),
                pred_labels=labels,
                pred_scores=scores,
                class_names=class_names,
                score_thresh=0.0 if score_thresh is None else score_thresh,
                bev_range=(r[0], r[1], r[3], r[4]),
                title=os.path.basename(path),
            )
            entry["image"] = save_png(os.path.join(output_dir, f"{fid}.png"), image)
        results[fid] = entry
    content = {
        "box_format": "x y z l w h yaw (geometric centre, LiDAR frame, minus offset)",
        "config": {"classes": class_names, "point_features": features},
        "score_thresh": score_thresh,
        "files": results,
    }
    with atomic_open(os.path.join(output_dir, "predictions.json"), "w") as f:
        json.dump(content, f, indent=1)
    return results
