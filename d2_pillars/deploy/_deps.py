"""The optional deployment dependencies (onnx, onnxscript, onnxruntime), imported on first use."""

import importlib

__all__ = ["DeployDependencyError", "require"]

_INSTALL = "pip install -r requirements-deploy.txt (`make test` / `make demo` install it)"


class DeployDependencyError(ImportError):
    """A package that ONNX export or onnxruntime inference needs is not installed."""


def require(name: str, purpose: str):
    """Import and return module ``name``; :class:`DeployDependencyError` naming ``purpose`` and
    the install command when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise DeployDependencyError(
            f"{purpose} needs the Python package '{name.split('.')[0]}', which cannot be "
            f"imported ({e}). Install it with: {_INSTALL}"
        ) from e
