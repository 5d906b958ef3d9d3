"""Where the visualized samples come from, and ``tools/visualize.py``'s :func:`visualize`.

A :class:`SampleLoader` gives :class:`~d2_pillars.visualization.VisSample` s of a registered
dataset (``DatasetCatalog``): points and ground truth from the records, predictions from one of

* a model (:class:`ModelPredictions`): built from a d2_pillars config, weights loaded by
  ``PillarsCheckpointer``, run on the test-time ``PointCloudMapper`` output with
  ``INPUT.KEEP_POINTS`` (the points shown are the ones the model saw);
* a results file (:class:`ResultsFilePredictions`): nuScenes JSON, Lyft JSON or Lyft Kaggle CSV,
  in the global frame, moved back into each sample's keyframe LiDAR frame with
  ``inv(ego2global @ lidar2ego)`` by ``LiDARBoxes.from_global_records``.

The drawing itself is ``d2_pillars.visualization`` (:func:`save_samples`, :func:`show_samples`).
"""

import logging
import numpy as np
from typing import Dict, List, Optional, Sequence
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data import PointCloudMapper
from ..data.display import ego_yaw_in_lidar, ground_truth_of, load_display_points
from ..evaluation.results_io import ResultsFileError, load_lyft_results, load_nuscenes_results
from ..structures import LiDARBoxes
from ..visualization import VisSample, save_samples, show_samples
from ..visualization.inputs import as_numpy
from ..visualization.open3d_viewer import has_display
from .defaults import load_config
from .trainer import build_pillars_model, load_model_weights

__all__ = [
    "SampleLoader",
    "ModelPredictions",
    "ResultsFilePredictions",
    "build_sample_loader",
    "visualize",
]

logger = logging.getLogger(__name__)


class ResultsFilePredictions:
    """Predictions read from a results file, per sample, in the keyframe LiDAR frame.

    Formats (``d2_pillars.evaluation.results_io``): nuScenes JSON (``detection_name``,
    ``detection_score``, velocity), Lyft JSON (``name``, ``score``) or Lyft Kaggle CSV
    (``Id,PredictionString``). Boxes are global-frame devkit records; each sample's
    ``ego2global @ lidar2ego`` is inverted to bring them back.
    """

    def __init__(self, path: str, class_names: Sequence[str], dataset_type: Optional[str] = None):
        self.path = path
        self.class_names = list(class_names)
        if dataset_type is None:
            dataset_type = "lyft" if path.lower().endswith(".csv") else None
        if dataset_type in (None, "nuscenes"):
            try:
                results, _ = load_nuscenes_results(path)
                dataset_type = "nuscenes"
            except ResultsFileError:
                if dataset_type == "nuscenes":
                    raise
                results = load_lyft_results(path)
                dataset_type = "lyft"
        elif dataset_type == "lyft":
            results = load_lyft_results(path)
        else:
            raise ValueError(f"dataset_type must be 'nuscenes' or 'lyft', got {dataset_type!r}")
        self.dataset_type = dataset_type
        self.results: Dict[str, List[dict]] = results
        name_key = "detection_name" if dataset_type == "nuscenes" else "name"
        names = {b[name_key] for boxes in results.values() for b in boxes}
        unknown = sorted(names - set(self.class_names))
        if unknown:
            raise ValueError(
                f"Results file {path} has classes {unknown} that the dataset does not know "
                f"(its classes: {self.class_names}); is it a results file of another dataset?"
            )
        self._missing_warned = False
        logger.info("Read %s results for %d samples from %s", dataset_type, len(results), path)

    def __call__(self, dataset_dict: dict) -> dict:
        """``{"boxes": LiDARBoxes, "labels": (K,) int64, "scores": (K,) float32}``."""
        token = dataset_dict["sample_token"]
        boxes = self.results.get(token)
        if boxes is None:
            if not self._missing_warned:
                logger.warning(
                    "Results file %s has no entry for sample %s (and maybe others): shown "
                    "without predictions", self.path, token,
                )  # fmt: skip
                self._missing_warned = True
            boxes = []
        nus = self.dataset_type == "nuscenes"
        name_key, score_key = ("detection_name", "detection_score") if nus else ("name", "score")
        lidar2global = np.asarray(dataset_dict["ego2global"], np.float64) @ np.asarray(
            dataset_dict["lidar2ego"], np.float64
        )
        index = {name: i for i, name in enumerate(self.class_names)}
        if boxes:
            pred = LiDARBoxes.from_global_records(
                [b["translation"] for b in boxes],
                [b["size"] for b in boxes],
                [b["rotation"] for b in boxes],
                [b.get("velocity", (0.0, 0.0))[:2] for b in boxes] if nus else None,
                global_to_frame=np.linalg.inv(lidar2global),
            )
        else:
            pred = LiDARBoxes(torch.zeros(0, 9 if nus else 7))
        labels = np.array([index[b[name_key]] for b in boxes], dtype=np.int64)
        scores = np.array([b[score_key] for b in boxes], dtype=np.float32)
        return {"boxes": pred, "labels": labels, "scores": scores}


class ModelPredictions:
    """Run a d2_pillars model on dataset dicts; also returns the points the model saw.

    ``cfg`` is a d2_pillars config (``d2_pillars.engine.load_config``); ``MODEL.WEIGHTS`` is loaded
    with ``PillarsCheckpointer`` (box-convention check). ``INPUT.KEEP_POINTS`` is switched on.
    """

    def __init__(self, cfg):
        cfg = cfg.clone()
        cfg.defrost()
        cfg.INPUT.KEEP_POINTS = True
        cfg.freeze()
        self.cfg = cfg
        self.model = build_pillars_model(cfg)
        self.model.eval()
        load_model_weights(cfg, self.model)
        self.mapper = PointCloudMapper(cfg, is_train=False)
        self.point_features = tuple(cfg.INPUT.POINT_FEATURES)

    @torch.no_grad()
    def __call__(self, dataset_dict: dict) -> dict:
        """``{"boxes", "labels", "scores", "points" (N, C) numpy}`` (CPU)."""
        inputs = self.mapper(dataset_dict)
        (output,) = self.model([inputs])
        inst = output["instances"].to("cpu")
        return {
            "boxes": inst.pred_boxes3d,
            "labels": inst.pred_classes.numpy().astype(np.int64),
            "scores": inst.scores.numpy().astype(np.float32),
            "points": as_numpy(inputs["points"]),
        }


class SampleLoader:
    """Indexable samples of a dataset split: ``loader[i] -> VisSample`` (loaded on access).

    Args:
        dataset_dicts: the split's records (``DatasetCatalog.get(name)``).
        class_names: label -> name (``MetadataCatalog.get(name).thing_classes``).
        predictions: None, :class:`ResultsFilePredictions`, :class:`ModelPredictions` or any
            callable ``dataset_dict -> {"boxes", "labels", "scores"[, "points"]}``.
        load_dim, num_sweeps: how display points are read when ``predictions`` brings none.
        bev_range: crop display points to this BEV range (None: keep all).
    """

    def __init__(
        self,
        dataset_dicts: Sequence[dict],
        class_names: Sequence[str],
        predictions=None,
        *,
        load_dim: int = 5,
        num_sweeps: int = 10,
        bev_range: Optional[Sequence[float]] = None,
    ):
        self.dataset_dicts = list(dataset_dicts)
        self.class_names = list(class_names)
        self.predictions = predictions
        self.load_dim = int(load_dim)
        self.num_sweeps = int(num_sweeps)
        self.bev_range = bev_range

    def __len__(self) -> int:
        return len(self.dataset_dicts)

    def __getitem__(self, index: int) -> VisSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range: the split has {len(self)}")
        index = index % len(self)
        record = self.dataset_dicts[index]
        gt_boxes, gt_labels = ground_truth_of(record)
        sample = VisSample(
            sample_token=str(record.get("sample_token", index)),
            gt_boxes=gt_boxes,
            gt_labels=gt_labels,
            index=index,
            ego_yaw=ego_yaw_in_lidar(record.get("lidar2ego")),
        )
        pred = self.predictions(record) if self.predictions is not None else None
        if pred is not None and pred.get("points") is not None:
            sample.points = pred["points"]
            sample.point_features = tuple(getattr(self.predictions, "point_features", ()))
        else:
            sample.points = load_display_points(
                record, load_dim=self.load_dim, num_sweeps=self.num_sweeps,
                bev_range=self.bev_range,
            )  # fmt: skip
        if pred is not None:
            sample.pred_boxes = pred["boxes"]
            sample.pred_labels = as_numpy(pred["labels"]).astype(np.int64)
            sample.pred_scores = as_numpy(pred["scores"]).astype(np.float32)
        return sample


def build_sample_loader(
    dataset_name: str,
    *,
    config_file: str = "",
    opts: Sequence[str] = (),
    results_file: str = "",
    num_sweeps: Optional[int] = None,
    bev_range: Optional[Sequence[float]] = None,
) -> SampleLoader:
    """A :class:`SampleLoader` for a registered dataset, with predictions from a model
    (``config_file`` + ``opts``, e.g. ``["MODEL.WEIGHTS", "model.pth"]``), a results file, or
    none. ``num_sweeps`` defaults to the config's ``INPUT.NUM_SWEEPS`` (10 without a config)."""
    if config_file and results_file:
        raise ValueError("pass either a model (--config-file) or a results file (--results)")
    # Loading the config first registers the own-data splits it names (DATASETS.CUSTOM_ROOT).
    cfg = load_config(config_file, opts) if (config_file or opts) else None
    if dataset_name not in DatasetCatalog.list():
        known = ", ".join(sorted(n for n in DatasetCatalog.list() if "coco" not in n))
        raise KeyError(f"Dataset '{dataset_name}' is not registered. Registered: {known}")
    meta = MetadataCatalog.get(dataset_name)
    class_names = list(meta.get("thing_classes", []))
    dicts = DatasetCatalog.get(dataset_name)
    predictions = None
    if cfg is not None:
        if list(cfg.DATASETS.CLASS_NAMES) != class_names:
            raise ValueError(
                f"the model's DATASETS.CLASS_NAMES {list(cfg.DATASETS.CLASS_NAMES)} differ from "
                f"the classes of {dataset_name} {class_names}: use a config for this dataset"
            )
        predictions = ModelPredictions(cfg)
        if num_sweeps is None:
            num_sweeps = cfg.INPUT.NUM_SWEEPS
    elif results_file:
        predictions = ResultsFilePredictions(
            results_file, class_names, dataset_type=meta.get("evaluator_type", None)
        )
    return SampleLoader(
        dicts,
        class_names,
        predictions,
        load_dim=int(meta.get("point_load_dim", 5)),
        num_sweeps=10 if num_sweeps is None else num_sweeps,
        bev_range=bev_range,
    )


def visualize(
    dataset_name: str,
    *,
    indices: Optional[Sequence[int]] = None,
    num: Optional[int] = None,
    config_file: str = "",
    opts: Sequence[str] = (),
    results_file: str = "",
    score_thresh: float = 0.3,
    color_by: str = "height",
    save_dir: str = "",
    size: int = 1024,
    mode: str = "both",
    bev_range: Optional[Sequence[float]] = None,
    num_sweeps: Optional[int] = None,
    backend: str = "auto",
) -> List[str]:
    """What ``tools/visualize.py`` does: show samples of a registered dataset interactively
    (a display and no ``save_dir``) or render them to PNGs in ``save_dir``.

    ``indices`` picks samples (negative counts from the end); else the first ``num`` (default 1
    when saving, all when interactive). ``bev_range`` defaults to the config's
    ``INPUT.POINT_CLOUD_RANGE``, else +-50 m (nuScenes) / +-80 m (Lyft). Returns the PNG paths.
    """
    if bev_range is None:
        if config_file:
            r = load_config(config_file, opts).INPUT.POINT_CLOUD_RANGE
            bev_range = (r[0], r[1], r[3], r[4])
        else:
            lyft = MetadataCatalog.get(dataset_name).get("evaluator_type", "") == "lyft"
            half = 80.0 if lyft else 50.0
            bev_range = (-half, -half, half, half)
    loader = build_sample_loader(
        dataset_name, config_file=config_file, opts=opts, results_file=results_file,
        num_sweeps=num_sweeps, bev_range=bev_range,
    )  # fmt: skip
    if len(loader) == 0:
        raise ValueError(f"Dataset '{dataset_name}' has no samples")
    if indices:
        bad = [i for i in indices if not -len(loader) <= i < len(loader)]
        if bad:
            raise IndexError(
                f"sample indices {bad} out of range: '{dataset_name}' has {len(loader)}"
            )
        chosen = [i % len(loader) for i in indices]
    else:
        count = num if num is not None else (1 if save_dir else len(loader))
        chosen = list(range(min(max(count, 1), len(loader))))
    common = dict(size=size, score_thresh=score_thresh, color_by=color_by, bev_range=bev_range)
    if save_dir:
        return save_samples(loader, chosen, save_dir, mode=mode, backend=backend, **common)
    if not has_display():
        raise RuntimeError(
            "No display (DISPLAY is not set): pass --save DIR to render PNGs headless"
        )
    show_samples(loader, chosen, **common)
    return []
