# -*- coding: utf-8 -*-
"""Read an ImageNet RegNet checkpoint -- a pycls ``.pyth`` or a torchvision ``regnet_*`` state
dict -- into one state dict in pycls naming (``s1.b1.proj.weight``, ``s1.b1.f.a_bn.running_var``).

Files are read with ``torch.load(weights_only=True)``; the format is detected from the keys (or
given); torchvision names (``trunk_output.block{i}.block{i}-{j}.f.a.0.weight``) are renamed; a key
that is not a RegNet (AnyNet bottleneck block) parameter is an error that names it.
"""
import os
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple
import torch

__all__ = [
    "SOURCE_FORMATS",
    "PYCLS_BLOCK_RE",
    "RegNetCheckpointError",
    "load_weights_file",
    "detect_source_format",
    "source_state_dict",
    "read_source_state_dict",
    "torchvision_to_pycls_names",
]

SOURCE_FORMATS = ("pycls", "torchvision")
#: pycls names of block parameters: ``s{stage}.b{block}.{parameter}`` (groups 1, 2, 3).
PYCLS_BLOCK_RE = re.compile(r"^s(\d+)\.b(\d+)\.(.+)$")
_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_PYCLS_BLOCK_PARAM_RE = re.compile(
    r"^(proj|bn|f\.[abc]|f\.[abc]_bn|f\.se\.f_ex\.[02])\." + _PARAM + "$"
)
_PYCLS_OTHER_RE = re.compile(r"^(stem\.conv|stem\.bn|head\.fc)\." + _PARAM + "$")
_TV_BLOCK_RE = re.compile(r"^trunk_output\.block(\d+)\.block(\d+)-(\d+)\.(.+)$")
_TV_SUFFIX = [
    (re.compile(r"^proj\.0\.(.+)$"), r"proj.\1"),
    (re.compile(r"^proj\.1\.(.+)$"), r"bn.\1"),
    (re.compile(r"^f\.([abc])\.0\.(.+)$"), r"f.\1.\2"),
    (re.compile(r"^f\.([abc])\.1\.(.+)$"), r"f.\1_bn.\2"),
    (re.compile(r"^f\.se\.fc1\.(.+)$"), r"f.se.f_ex.0.\1"),
    (re.compile(r"^f\.se\.fc2\.(.+)$"), r"f.se.f_ex.2.\1"),
]
_TV_OTHER = [
    (re.compile(r"^stem\.0\.(.+)$"), r"stem.conv.\1"),
    (re.compile(r"^stem\.1\.(.+)$"), r"stem.bn.\1"),
    (re.compile(r"^fc\.(.+)$"), r"head.fc.\1"),
]


class RegNetCheckpointError(ValueError):
    """A RegNet checkpoint that cannot be read, or that does not fit the model."""


def load_weights_file(path: str):
    """``torch.load`` a checkpoint with ``weights_only=True`` on the CPU, with a clear error."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (not a torch file), ...
        raise RegNetCheckpointError(
            f"Cannot read {path} with torch.load(weights_only=True): {e}\n"
            "Checkpoints must hold only tensors and plain Python types. If you trust the file, "
            "re-save just its weights, e.g. for a pycls file: "
            "torch.save(torch.load(SRC, weights_only=False)['model_state'], DST)."
        ) from e


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix of a DataParallel/DistributedDataParallel state dict."""
    if state and all(k.startswith("module.") for k in state):
        return OrderedDict((k[len("module.") :], v) for k, v in state.items())
    return OrderedDict(state)


def _looks_like(state: Mapping, fmt: str) -> bool:
    if not isinstance(state, Mapping) or not state:
        return False
    keys = [k for k in state if isinstance(k, str)]
    if fmt == "pycls":
        return any(PYCLS_BLOCK_RE.match(k) for k in keys) and not any(
            k.startswith("trunk_output.") for k in keys
        )
    return any(k.startswith("trunk_output.block") for k in keys)


def detect_source_format(obj) -> Optional[str]:
    """Return ``"pycls"`` or ``"torchvision"`` if ``obj`` (a loaded file) is a RegNet of that
    format, else None (e.g. a detectron2 checkpoint of a whole model).

    pycls files are ``{"model_state": state_dict, ...}`` with names ``s{i}.b{j}.*`` at the root;
    torchvision files are plain state dicts with names ``trunk_output.block{i}.block{i}-{j}.*``.
    """
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("model_state"), Mapping):
        return "pycls"
    state = _strip_module_prefix(obj) if all(isinstance(k, str) for k in obj) else obj
    if _looks_like(state, "torchvision"):
        return "torchvision"
    if _looks_like(state, "pycls") and all(isinstance(v, torch.Tensor) for v in state.values()):
        return "pycls"
    return None


def source_state_dict(obj, fmt: str = "auto", path: str = "SRC") -> Tuple[Dict, str]:
    """Return ``(state_dict in pycls naming, format)`` of a loaded pycls/torchvision file.

    Args:
        obj: what :func:`load_weights_file` returned.
        fmt (str): "pycls", "torchvision" or "auto".
        path (str): the file name, for error messages.
    """
    if fmt not in ("auto",) + SOURCE_FORMATS:
        raise ValueError(f"Unknown source format {fmt!r}; use one of auto, pycls, torchvision.")
    detected = detect_source_format(obj)
    if fmt == "auto":
        if detected is None:
            raise RegNetCheckpointError(
                f"{path} is neither a pycls RegNet checkpoint ({{'model_state': ...}} with "
                "keys 's1.b1.*') nor a torchvision RegNet state dict (keys 'trunk_output.*')."
            )
        fmt = detected
    elif detected != fmt:
        raise RegNetCheckpointError(
            f"{path} was given as format {fmt!r} but its keys look like "
            f"{detected or 'neither pycls nor torchvision'}; pass --format {detected or 'auto'}."
        )
    state = obj["model_state"] if (fmt == "pycls" and "model_state" in obj) else obj
    state = _strip_module_prefix(state)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise RegNetCheckpointError(f"{path}: entries that are not tensors: {bad[:5]}")
    if fmt == "torchvision":
        state = torchvision_to_pycls_names(state, path=path)
    else:
        _check_pycls_names(state, path)
    return state, fmt


def read_source_state_dict(path: str, fmt: str = "auto") -> Tuple[Dict, str]:
    """Read a pycls ``.pyth`` or a torchvision RegNet file: ``(state in pycls naming, format)``."""
    return source_state_dict(load_weights_file(path), fmt, path=os.fspath(path))


def _check_pycls_names(state: Mapping[str, torch.Tensor], path: str):
    unknown = []
    for k in state:
        m = PYCLS_BLOCK_RE.match(k)
        ok = _PYCLS_BLOCK_PARAM_RE.match(m.group(3)) if m else _PYCLS_OTHER_RE.match(k)
        if not ok:
            unknown.append(k)
    if unknown:
        raise RegNetCheckpointError(
            f"{path} has keys that are not RegNet (AnyNet bottleneck block) parameters, e.g. "
            f"{unknown[:5]}; only RegNetX/RegNetY checkpoints can be converted."
        )


def torchvision_to_pycls_names(
    state: Mapping[str, torch.Tensor], path: str = "SRC"
) -> Dict[str, torch.Tensor]:
    """Rename a torchvision ``regnet_x_*``/``regnet_y_*`` state dict to pycls names.

    ``stem.0/1`` -> ``stem.conv/bn``; ``trunk_output.block{i}.block{i}-{j}.proj.0/1`` ->
    ``s{i}.b{j+1}.proj/bn``; ``.f.{a,b,c}.0/1`` -> ``.f.{a,b,c}/{a,b,c}_bn``;
    ``.f.se.fc1/fc2`` -> ``.f.se.f_ex.0/2``; ``fc`` -> ``head.fc``.
    """
    out = OrderedDict()
    unknown = []
    for key, value in state.items():
        new = None
        m = _TV_BLOCK_RE.match(key)
        if m and m.group(1) == m.group(2):
            stage, block, rest = int(m.group(1)), int(m.group(3)), m.group(4)
            for pattern, repl in _TV_SUFFIX:
                if pattern.match(rest):
                    new = f"s{stage}.b{block + 1}." + pattern.sub(repl, rest)
                    break
        elif not m:
            for pattern, repl in _TV_OTHER:
                if pattern.match(key):
                    new = pattern.sub(repl, key)
                    break
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise RegNetCheckpointError(
            f"{path} has keys that are not torchvision RegNet parameters, e.g. {unknown[:5]}."
        )
    _check_pycls_names(out, path)
    return out
