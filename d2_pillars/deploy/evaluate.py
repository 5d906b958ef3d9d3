"""Export a trained run and evaluate its graph with onnxruntime (``tools/demo.py --backend
onnxruntime``): the same evaluator, the same decode + NMS, the network in onnxruntime."""

import logging
import os

from ..engine import PillarsTrainer, build_pillars_model, load_config
from .export import export_onnx, format_report
from .runtime import OnnxPointPillars  # noqa: F401  (registers MODEL.BACKEND onnxruntime)

__all__ = ["export_and_evaluate"]

logger = logging.getLogger(__name__)


def export_and_evaluate(run_dir: str, weights: str = "model_final.pth", opts=()):
    """
    Export the run in ``run_dir`` (its ``config.yaml`` and ``weights``) to ``run_dir/onnx`` and
    evaluate the exported graph with onnxruntime on the config's ``DATASETS.TEST``.

    Args:
        run_dir: a training output folder (``config.yaml``, the checkpoint).
        weights: the checkpoint, relative to ``run_dir`` or absolute.
        opts: config overrides (``KEY VALUE`` pairs) for the evaluation.

    Returns:
        tuple: (evaluation results as ``PillarsTrainer.test`` returns them, the export report).
    """
    cfg = load_config(os.path.join(run_dir, "config.yaml"), ["MODEL.DEVICE", "cpu", *opts])
    cfg.MODEL.WEIGHTS = os.path.join(run_dir, weights)
    onnx_dir = os.path.join(run_dir, "onnx")
    report = export_onnx(cfg, onnx_dir)
    logger.info("Exported %s:\n%s", report.path, format_report(report))
    onnx_cfg = load_config(os.path.join(onnx_dir, "config.yaml"), ["MODEL.DEVICE", "cpu", *opts])
    onnx_cfg.OUTPUT_DIR = onnx_dir
    results = PillarsTrainer.test(onnx_cfg, build_pillars_model(onnx_cfg))
    return results, report
