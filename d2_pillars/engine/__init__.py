"""Training / evaluation entry points (what tools/train_net.py calls)."""

from .amp import AutocastTrainer, build_step_trainer
from .defaults import argument_parser, check_device, load_config, main, setup
from .device import DeviceUnavailableError, check_training_device, inference_device_config
from .launch import launch
from .predictor import PillarsPredictor
from .trainer import PillarsTrainer, build_pillars_evaluator, build_pillars_model

__all__ = [
    "AutocastTrainer",
    "build_step_trainer",
    "argument_parser",
    "check_device",
    "DeviceUnavailableError",
    "check_training_device",
    "inference_device_config",
    "load_config",
    "main",
    "setup",
    "launch",
    "PillarsPredictor",
    "PillarsTrainer",
    "build_pillars_evaluator",
    "build_pillars_model",
]
