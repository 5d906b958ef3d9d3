"""Deployment: ONNX export of the PointPillars network and onnxruntime inference.

Importing this package registers ``MODEL.BACKEND "onnxruntime"`` for ``build_pillars_model``.
onnx, onnxscript and onnxruntime are imported on first use (``requirements-deploy.txt``).
See the README's "Deploy" section.
"""

from ._deps import DeployDependencyError
from .export import (
    OPSET,
    ExportCheckError,
    ExportReport,
    export_onnx,
    format_report,
    model_inputs,
    synthetic_check_sample,
)
from .network import NotExportableError, PillarsNetwork, exportable_copy
from .runtime import OnnxPillarsPredictor, OnnxPointPillars, build_predictor, select_providers

__all__ = [
    "DeployDependencyError",
    "OPSET",
    "ExportCheckError",
    "ExportReport",
    "export_onnx",
    "format_report",
    "model_inputs",
    "synthetic_check_sample",
    "NotExportableError",
    "PillarsNetwork",
    "exportable_copy",
    "OnnxPillarsPredictor",
    "OnnxPointPillars",
    "build_predictor",
    "select_providers",
]
