# -*- coding: utf-8 -*-
"""``PillarsCheckpointer``: detectron2's ``DetectionCheckpointer`` plus what d2_pillars needs.

- ``MODEL.WEIGHTS`` may name a pycls ``.pyth`` or a torchvision RegNet file: it is converted onto
  the model's RegNet on load (:mod:`.regnet_converter`), with a table of what was mapped.
- ``MODEL.WEIGHTS`` may name an mmdetection3d PointPillars checkpoint: it is converted on load
  (:mod:`.mmdet3d_converter`, convention from its ``mmdet3d_version``), as
  ``tools/convert_mmdet3d.py`` would.
- Checkpoints record the box convention (``d2_pillars.structures.BOX_CONVENTION_VERSION``) under
  ``"box_convention_version"``; loading one of another version is an error naming the file.
- Saves are atomic (temporary file + rename), so an interrupted save never leaves a truncated
  ``model_*.pth`` or ``last_checkpoint`` behind.
- Loads use ``torch.load(..., weights_only=True)`` (no arbitrary unpickling); detectron2's
  ``.pkl`` model-zoo format (numpy arrays) is read with a restricted unpickler that builds only
  builtin containers and numpy arrays.
"""
import logging
import os
from typing import Any
import torch

from detectron2.checkpoint import DetectionCheckpointer

from d2_pillars.structures import BOX_CONVENTION_VERSION
from d2_pillars.utils.file_io import RestrictedUnpickler, atomic_open

from .mmdet3d_converter import (
    convert_mmdet3d_to_model,
    format_mmdet3d_report,
    is_mmdet3d_state_dict,
    load_with_placeholders,
    make_mmdet3d_checkpoint,
)
from .regnet_converter import (
    CONVERTER_AUTHOR,
    convert_to_model,
    format_report,
    make_converted_checkpoint,
)
from .regnet_source import (
    RegNetCheckpointError,
    detect_source_format,
    load_weights_file,
    source_state_dict,
)

__all__ = [
    "PillarsCheckpointer",
    "BOX_CONVENTION_KEY",
    "BoxConventionMismatchError",
    "CheckpointDownloadError",
]

logger = logging.getLogger(__name__)

BOX_CONVENTION_KEY = "box_convention_version"


class CheckpointDownloadError(RuntimeError):
    """``MODEL.WEIGHTS`` names a URL that cannot be fetched."""


class BoxConventionMismatchError(RuntimeError):
    """A checkpoint trained with another box convention than this package's."""


def check_box_convention(checkpoint: dict, filename: str, model_keys=()) -> None:
    """Raise if ``checkpoint`` records a box convention other than the package's.

    A checkpoint with no record (ImageNet backbones, other detectron2 checkpoints) is accepted;
    if it nevertheless holds weights outside the backbone that the model has, a warning says so.
    """
    version = checkpoint.get(BOX_CONVENTION_KEY)
    if version is None:
        model_keys = set(model_keys)
        foreign = [
            k
            for k in checkpoint.get("model", {})
            if k in model_keys and not k.startswith("backbone.")
        ]
        if foreign:
            logger.warning(
                f"Checkpoint {filename} records no box convention version but holds "
                f"{len(foreign)} weights outside the backbone (e.g. {foreign[0]}); if it was "
                "trained with another box convention its predictions will be wrong."
            )
        return
    if version != BOX_CONVENTION_VERSION:
        raise BoxConventionMismatchError(
            f"Checkpoint {filename} was saved with box convention version {version!r}, but this "
            f"d2_pillars uses version {BOX_CONVENTION_VERSION}: its regression outputs would be "
            "decoded into wrong boxes. Use a checkpoint trained with this version (retrain, or "
            f"evaluate it with the d2_pillars release of version {version!r})."
        )


def _is_mmdet3d_checkpoint(obj) -> bool:
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    return is_mmdet3d_state_dict(state)


def load_mmdet3d_or_weights_file(filename: str):
    """``torch.load`` with ``weights_only=True``; a file refused by it is read again only if it is
    an mmdetection3d checkpoint (whose training state may pickle other objects, left inert)."""
    try:
        return load_weights_file(filename)
    except RegNetCheckpointError:
        obj = load_with_placeholders(filename)  # weights_only=True already refused it as is
        if not _is_mmdet3d_checkpoint(obj):
            raise
        return obj


class PillarsCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` that converts RegNet checkpoints and checks the box convention.

    Same constructor and API as ``DetectionCheckpointer``: ``PillarsCheckpointer(model,
    save_dir, **checkpointables)``, ``.resume_or_load(path, resume=...)``, ``.load(path)``,
    ``.save(name, **extra)``.
    """

    def load(self, path: str, *args, **kwargs):
        """detectron2's ``load``; a URL is fetched into detectron2's path-manager cache first, and
        a failed download (e.g. offline) is an error naming the URL and the way out."""
        if path and "://" in path and not os.path.isfile(path):
            try:
                path = self.path_manager.get_local_path(path)
            except Exception as e:  # URLError, HTTPError, timeouts ...
                raise CheckpointDownloadError(
                    f"Cannot download MODEL.WEIGHTS {path}: {e}\nDownload it on a machine "
                    "online and pass the local file (MODEL.WEIGHTS /path/to/file), or train "
                    'from scratch with MODEL.WEIGHTS "".'
                ) from e
        return super().load(path, *args, **kwargs)

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` atomically, with the box convention version."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        data[BOX_CONVENTION_KEY] = BOX_CONVENTION_VERSION
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``{save_dir}/last_checkpoint`` atomically."""
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def _load_pkl(self, filename: str) -> dict:
        """detectron2 / Detectron model-zoo pickles, read as detectron2 reads them but with a
        restricted unpickler (numpy arrays and builtin containers only)."""
        with open(filename, "rb") as f:
            data = RestrictedUnpickler(
                f,
                path=filename,
                encoding="latin1",
                hint="A .pkl checkpoint must hold only numpy arrays (detectron2's model-zoo "
                "format); save other checkpoints with PillarsCheckpointer (.pth).",
            ).load()
        if not isinstance(data, dict):
            raise RegNetCheckpointError(f"{filename} holds a {type(data).__name__}, not a dict.")
        if "model" in data and "__author__" in data:  # detectron2 model-zoo format
            self.logger.info(f"Reading a file from '{data['__author__']}'")
            return data
        if "blobs" in data:  # Caffe2 / Detectron1 detection models
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _load_file(self, filename: str) -> dict:
        if filename.endswith(".pkl"):
            data = self._load_pkl(filename)
        else:
            obj = load_mmdet3d_or_weights_file(filename)
            fmt = detect_source_format(obj)
            if _is_mmdet3d_checkpoint(obj):
                data = self._convert_mmdet3d(obj, filename)
            elif fmt is not None:
                data = self._convert_regnet(obj, fmt, filename)
            elif filename.endswith(".pyth"):
                raise RegNetCheckpointError(
                    f"{filename}: a .pyth file must be a pycls checkpoint with a 'model_state' "
                    "RegNet state dict."
                )
            elif isinstance(obj, dict) and "model" in obj:
                data = obj
            elif isinstance(obj, dict):
                data = {"model": obj}
            else:
                raise RegNetCheckpointError(
                    f"{filename} holds a {type(obj).__name__}, not a checkpoint dict."
                )
        check_box_convention(data, filename, self.model.state_dict().keys())
        return data

    def _convert_mmdet3d(self, obj, filename: str) -> dict:
        state, report = convert_mmdet3d_to_model(obj, self.model, path=filename)
        self.logger.info(
            f"Converted mmdetection3d checkpoint {filename}:\n" + format_mmdet3d_report(report)
        )
        data = make_mmdet3d_checkpoint(state, report, filename)
        data["__author__"] = data["__author__"] + " (on load)"
        return data

    def _convert_regnet(self, obj, fmt: str, filename: str) -> dict:
        source, fmt = source_state_dict(obj, fmt, path=filename)
        state, report = convert_to_model(
            source, self.model.state_dict(), source_format=fmt, src_name=filename
        )
        self.logger.info(f"Converted {fmt} RegNet checkpoint {filename}:\n" + format_report(report))
        data = make_converted_checkpoint(state, report)
        data["__author__"] = CONVERTER_AUTHOR + " (on load)"
        return data
