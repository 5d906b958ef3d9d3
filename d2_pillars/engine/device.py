"""What ``MODEL.DEVICE`` means on a machine that has no CUDA device.

The seed configs keep detectron2's default ``MODEL.DEVICE cuda``: training them is a GPU job.
On a CPU-only machine (a laptop, a CI runner, ``CUDA_VISIBLE_DEVICES=``) the rules are:

- **inference** (the predictor, ``--eval-only``, the visualizer, the export's eager model, the
  onnxruntime back-end) runs on the CPU instead, with one warning that names ``MODEL.DEVICE``:
  the result is the same model, only slower, so refusing would help nobody;
- **training** stops before anything is built with :class:`DeviceUnavailableError`, one
  sentence naming ``MODEL.DEVICE cpu``: silently training a GPU schedule on a CPU would take days.

The ONNX export always traces on the CPU: the device does not enter the graph.
"""

import logging
import torch

__all__ = [
    "DeviceUnavailableError",
    "cuda_requested_but_missing",
    "inference_device_config",
    "check_training_device",
]

logger = logging.getLogger(__name__)
_warned = set()


class DeviceUnavailableError(RuntimeError):
    """``MODEL.DEVICE`` names a device this machine does not have (training refuses to start)."""


def cuda_requested_but_missing(device) -> bool:
    """True when ``device`` (str or ``torch.device``) is a CUDA device and torch sees none."""
    return torch.device(device).type == "cuda" and not torch.cuda.is_available()


def inference_device_config(cfg):
    """``cfg`` itself, or, when its ``MODEL.DEVICE`` asks for CUDA on a machine without it, a
    clone with ``MODEL.DEVICE "cpu"`` (frozen if ``cfg`` was), after one warning per process."""
    if not cuda_requested_but_missing(cfg.MODEL.DEVICE):
        return cfg
    requested = str(cfg.MODEL.DEVICE)
    if requested not in _warned:
        _warned.add(requested)
        logger.warning(
            "MODEL.DEVICE is %r but torch finds no CUDA device: running inference on the CPU "
            "(pass MODEL.DEVICE cpu to make this explicit).",
            requested,
        )
    out = cfg.clone()
    frozen = out.is_frozen()
    out.defrost()
    out.MODEL.DEVICE = "cpu"
    if frozen:
        out.freeze()
    return out


def check_training_device(cfg, config_file: str = ""):
    """Raise :class:`DeviceUnavailableError` when training would need a CUDA device that this
    machine lacks (``config_file`` is named in the message when given)."""
    if not cuda_requested_but_missing(cfg.MODEL.DEVICE):
        return
    where = f" ({config_file})" if config_file else ""
    raise DeviceUnavailableError(
        f"MODEL.DEVICE is {str(cfg.MODEL.DEVICE)!r}{where} but torch finds no CUDA device on this "
        "machine: to train on the CPU pass MODEL.DEVICE cpu (slow: configs/synthetic/*_cpu.yaml "
        "are the CPU-sized configs), or run on a machine with a GPU."
    )
