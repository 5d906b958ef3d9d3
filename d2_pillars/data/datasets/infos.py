"""Versioned info files: save and load the per-keyframe records built by ``tools/create_data.py``.

An info file is a pickle of ``{"metadata": {...}, "infos": [record, ...]}`` (record format in
``docs/internals.md``; paths relative to the dataset root). It is written atomically and read
back with a restricted unpickler that only builds builtin containers and numpy arrays, so a
tampered or foreign file cannot run code. ``metadata["box_convention_version"]`` must equal
:data:`d2_pillars.structures.BOX_CONVENTION_VERSION`: boxes written under another convention
are refused with a message naming the file and the command that rebuilds it.
"""

import importlib.metadata
import io
import logging
import os
import pickle

from d2_pillars.structures import BOX_CONVENTION_VERSION
from d2_pillars.utils.file_io import NUMPY_PICKLE_GLOBALS, atomic_open

__all__ = [
    "INFO_FORMAT_VERSION",
    "InfoFileError",
    "save_infos",
    "load_infos",
    "load_info_metadata",
    "devkit_version",
    "create_data_command",
]

logger = logging.getLogger(__name__)

# Version of the record layout itself (keys and units); bump when a key changes meaning.
INFO_FORMAT_VERSION = 1

# The only globals an info file may reference: numpy array/dtype/scalar reconstruction and plain
# builtin containers. Everything else is refused.
_SAFE_GLOBALS = NUMPY_PICKLE_GLOBALS

# Protocol 4: arrays reference only ``_reconstruct``/``ndarray``/``dtype`` (no out-of-band buffers).
_PICKLE_PROTOCOL = 4


class InfoFileError(RuntimeError):
    """An info file is missing, unreadable, foreign, or from another box convention."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise InfoFileError(
            f"{self._path}: refusing to unpickle '{module}.{name}'; info files may only hold "
            "builtin containers and numpy arrays. Rebuild the file with tools/create_data.py."
        )


def devkit_version(dataset):
    """Installed version string of the SDK that reads ``dataset`` ("nuscenes" or "lyft")."""
    dist = {"nuscenes": "nuscenes-devkit", "lyft": "lyft-dataset-sdk"}[dataset]
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def create_data_command(dataset, root, version):
    """The command line that (re)builds the info files of ``dataset``/``version`` under ``root``."""
    return f"python tools/create_data.py {dataset} --root {root} --version {version}"


def save_infos(path, infos, metadata):
    """Write ``infos`` (list of records) with ``metadata`` to ``path`` atomically.

    ``metadata`` must hold at least ``dataset``, ``version`` and ``split``; the convention and
    format versions are added here.

    Args:
        path (str): destination ``.pkl``.
        infos (list[dict]): records with builtin/numpy values only.
        metadata (dict): builtin values only.
    """
    for key in ("dataset", "version", "split"):
        if key not in metadata:
            raise ValueError(f"info metadata needs '{key}'")
    metadata = dict(metadata)
    metadata["box_convention_version"] = BOX_CONVENTION_VERSION
    metadata["info_format_version"] = INFO_FORMAT_VERSION
    metadata["num_samples"] = len(infos)
    with atomic_open(path, "wb") as f:
        pickle.dump({"metadata": metadata, "infos": infos}, f, protocol=_PICKLE_PROTOCOL)
    logger.info("Wrote %d records to %s", len(infos), path)


def _read(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InfoFileError(
            f"Info file {path} does not exist. Build it with tools/create_data.py (e.g. "
            "`python tools/create_data.py nuscenes --root DATASET_ROOT --version v1.0-trainval`)."
        )
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(io.BufferedReader(f), path).load()
    except InfoFileError:
        raise
    except Exception as e:  # truncated, not a pickle, ...
        raise InfoFileError(
            f"Cannot read info file {path} ({type(e).__name__}: {e}). It is damaged or not an "
            "info file of d2_pillars; rebuild it with tools/create_data.py."
        ) from e
    if not (
        isinstance(data, dict)
        and isinstance(data.get("metadata"), dict)
        and "infos" in data
        and "box_convention_version" in data["metadata"]
    ):
        raise InfoFileError(
            f"{path} is not a d2_pillars info file (expected 'metadata' with a "
            "'box_convention_version', and 'infos'; files of other tools such as mmdetection3d "
            "use other box conventions). Build the infos with tools/create_data.py."
        )
    meta = data["metadata"]
    found = meta.get("box_convention_version")
    if found != BOX_CONVENTION_VERSION:
        cmd = create_data_command(
            meta.get("dataset", "<nuscenes|lyft>"),
            "<dataset root>",
            meta.get("version", "<version>"),
        )
        raise InfoFileError(
            f"{path} was written with box convention version {found}, but this d2_pillars uses "
            f"version {BOX_CONVENTION_VERSION}. Its boxes would be misread; re-run `{cmd}` to "
            "rebuild it."
        )
    found_format = meta.get("info_format_version")
    if found_format != INFO_FORMAT_VERSION:
        raise InfoFileError(
            f"{path} has info format version {found_format}, expected {INFO_FORMAT_VERSION}; "
            "re-run tools/create_data.py to rebuild it."
        )
    return data


def load_infos(path):
    """Load an info file written by :func:`save_infos`.

    Returns:
        (list[dict], dict): the records (paths relative to the dataset root) and the metadata.

    Raises:
        InfoFileError: missing, damaged or foreign file, or another box convention version.
    """
    data = _read(path)
    return data["infos"], data["metadata"]


def load_info_metadata(path):
    """Only the metadata of an info file (the whole file is still read)."""
    return _read(path)["metadata"]
