"""Official nuScenes / Lyft evaluation and the own-data evaluation (KITTI-style R40 AP) as
detectron2 ``DatasetEvaluator``s, results files, and scoring of an existing results file."""

import os

from .common import GlobalFrameEvaluator, merge_predictions
from .custom_evaluation import CUSTOM_METRICS_FILE, CustomEvaluator, custom_ground_truth
from .custom_metrics import (
    DISTANCE_BINS,
    RECALL_POSITIONS,
    average_precision,
    class_iou_thresholds,
    default_iou_thresholds,
    evaluate_detections,
    greedy_match,
)
from .lyft_evaluation import LyftEvaluator, evaluate_lyft_results, lyft_ground_truth
from .lyft_map import LYFT_IOU_THRESHOLDS, lyft_average_precisions, lyft_class_names, lyft_map
from .nuscenes_evaluation import NuScenesEvaluator, evaluate_nuscenes_results
from .results_io import (
    ResultsFileError,
    load_lyft_results,
    load_nuscenes_results,
    write_lyft_csv,
    write_lyft_results,
    write_nuscenes_results,
)

__all__ = [
    "GlobalFrameEvaluator",
    "NuScenesEvaluator",
    "LyftEvaluator",
    "CustomEvaluator",
    "CUSTOM_METRICS_FILE",
    "custom_ground_truth",
    "DISTANCE_BINS",
    "RECALL_POSITIONS",
    "average_precision",
    "class_iou_thresholds",
    "default_iou_thresholds",
    "evaluate_detections",
    "greedy_match",
    "merge_predictions",
    "evaluate_nuscenes_results",
    "evaluate_lyft_results",
    "evaluate_results_file",
    "lyft_ground_truth",
    "LYFT_IOU_THRESHOLDS",
    "lyft_average_precisions",
    "lyft_class_names",
    "lyft_map",
    "ResultsFileError",
    "load_lyft_results",
    "load_nuscenes_results",
    "write_lyft_csv",
    "write_lyft_results",
    "write_nuscenes_results",
]


def evaluate_results_file(cfg, results_file, dataset_name=None, output_dir=None):
    """Score an existing results file on the test dataset of ``cfg`` (``--eval-only --results``).

    Args:
        cfg: the config (``DATASETS.TEST`` names the registered split unless ``dataset_name`` is
            given; ``TEST.LYFT_MAP_METHOD``, ``TEST.NUSCENES_PLOTS`` are honoured).
        results_file (str): nuScenes results JSON, or Lyft results JSON / Kaggle CSV.
        output_dir (str): defaults to ``OUTPUT_DIR/TEST.EVAL_OUTPUT_SUBDIR/<dataset>``.

    Returns:
        dict: ``{"nuscenes": {...}}`` or ``{"lyft": {...}}`` (``{}`` off the main rank).

    Raises:
        ValueError: for an own-data split (``evaluator_type`` "custom"): it has no results-file
            format; :class:`CustomEvaluator` scores a model instead.
    """
    from detectron2.data import MetadataCatalog

    if dataset_name is None:
        if len(cfg.DATASETS.TEST) != 1:
            raise ValueError(
                f"Scoring {results_file} needs one dataset in DATASETS.TEST, got "
                f"{list(cfg.DATASETS.TEST)}"
            )
        dataset_name = cfg.DATASETS.TEST[0]
    if output_dir is None:
        output_dir = os.path.join(cfg.OUTPUT_DIR, cfg.TEST.EVAL_OUTPUT_SUBDIR, dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "nuscenes":
        plot = bool(cfg.TEST.get("NUSCENES_PLOTS", False))
        return evaluate_nuscenes_results(results_file, dataset_name, output_dir, plot=plot)
    if evaluator_type == "lyft":
        method = cfg.TEST.get("LYFT_MAP_METHOD", "auto")
        return evaluate_lyft_results(results_file, dataset_name, output_dir, method=method)
    if evaluator_type == "custom":
        raise ValueError(
            f"Dataset '{dataset_name}' is an own-data split (evaluator_type 'custom'): it has no "
            f"results-file format, so {results_file} cannot be scored. Evaluate the model "
            "instead: `python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS W` "
            "writes custom_metrics.json."
        )
    raise ValueError(
        f"Dataset '{dataset_name}' has evaluator_type {evaluator_type!r}; results files can be "
        "scored on 'nuscenes' and 'lyft' datasets only"
    )
