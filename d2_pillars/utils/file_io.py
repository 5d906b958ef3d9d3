"""File helpers: atomic writes (a crash or a kill never leaves a partial file where a complete one
was) and a restricted unpickler (a pickle may build numpy arrays and builtin containers, never
run code)."""

import contextlib
import os
import pickle
import secrets
import stat

__all__ = ["atomic_open", "atomic_write_bytes", "NUMPY_PICKLE_GLOBALS", "RestrictedUnpickler"]

#: The globals a pickle of builtin containers and numpy arrays references (numpy 1.x and 2.x
#: module paths; ``_codecs.encode`` for Python-2 byte strings). Nothing else can run code.
NUMPY_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("__builtin__", "set"),
        ("__builtin__", "frozenset"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals in ``allowed``.

    A pickle referencing any other global (a class, or a ``__reduce__`` that would call a
    function) raises ``pickle.UnpicklingError`` naming ``path`` and the global, before anything
    is built or run. ``hint`` is appended to that message (how to get a safe file).
    """

    def __init__(self, file, *, path="<pickle>", allowed=NUMPY_PICKLE_GLOBALS, hint="", **kwargs):
        super().__init__(file, **kwargs)
        self._path = path
        self._allowed = allowed
        self._hint = hint

    def find_class(self, module, name):
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{self._path}: refusing to unpickle '{module}.{name}'; only builtin containers and "
            f"numpy arrays are read from this file. {self._hint}".rstrip()
        )


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_TEMP_FLAGS |= getattr(os, "O_BINARY", 0)


def _create_temp(directory: str, basename: str, mode: int):
    """A new ``{basename}.{random}.tmp`` in ``directory``: ``(fd, path)``.

    Created with ``os.open(..., mode)`` so the process umask applies, as for a plain ``open``
    (``tempfile.mkstemp`` would force 0600).
    """
    for _ in range(100):
        tmp = os.path.join(directory, f"{basename}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temporary file for {basename} in {directory}")


def _fsync_directory(directory: str) -> None:
    """Persist a rename in ``directory`` (best effort; not every system can open a directory)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file next to ``path``; on success it replaces ``path`` by a rename.

    On an exception the temporary file is removed and ``path`` is left as it was. Permissions
    are those a plain ``open(path, mode)`` would give: an existing file keeps its mode, a new
    one gets ``0o666`` minus the umask.
    """
    if "r" in mode or "a" in mode:
        raise ValueError(f"atomic_open only writes; got mode {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        keep_mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        keep_mode = None
    fd, tmp = _create_temp(directory, os.path.basename(path), 0o666)
    try:
        if keep_mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, keep_mode)
        f = os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        os.remove(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)
