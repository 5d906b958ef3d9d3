#!/usr/bin/env python
"""Install detectron2 v0.6 into the running Python environment, as pure Python when needed.

If a detectron2 whose compiled ops load is already installed, it is used untouched. Otherwise the
PyPI source distribution ``pb1-detectron2==0.6`` (upstream v0.6's Python code without its C++
sources) is built with no extension modules and a ``detectron2/_C.py`` placeholder, which answers
the version queries detectron2 makes at import time and raises a clear error for any compiled op.

Run it with the target environment's interpreter:
``.venv/bin/python tools/install_detectron2.py``.
"""
import argparse
import glob
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
# Byte-identical to upstream detectron2 v0.6 (see README); verified before use.
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

PLACEHOLDER = '''"""Placeholder for detectron2's compiled extension (d2_pillars' installer).

This detectron2 was installed from Python sources only (PyPI ``pb1-detectron2==0.6`` has no C++
sources). Pure-Python parts work; any compiled op raises an error that names it.
"""


def get_compiler_version():
    return "not built (pure-Python install by d2_pillars)"


def get_cuda_version():
    return "not built"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"detectron2 compiled op '{name}' is not available: this detectron2 was installed "
        "without its C++/CUDA extension (d2_pillars pure-Python install). Build detectron2 "
        "from source (see detectron2's INSTALL.md) to get it."
    )
'''


def compiled_detectron2_present():
    """True if detectron2 is importable and its compiled ``_C`` is a real extension module."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None:
        return False
    code = (
        "import detectron2._C as C, sys; "
        "sys.exit(0 if not C.__file__.endswith('.py') and hasattr(C, 'box_iou_rotated') else 1)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def pure_python_detectron2_present():
    code = (
        "import detectron2._C as C, sys; "
        "import detectron2.engine, detectron2.modeling, detectron2.evaluation; "
        "sys.exit(0 if C.__file__.endswith('.py') else 1)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def index_url():
    """The simple index pip is configured with (PIP_INDEX_URL, pip config, or PyPI)."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
        )
        url = out.stdout.strip() if out.returncode == 0 else ""
    return (url or "https://pypi.org/simple").rstrip("/")


def download_sdist(dest):
    """Fetch the sdist through the simple index.

    ``pip download`` cannot be used: the sdist's metadata declares a direct-URL extra
    (panopticapi), which pip refuses for distributions from PyPI.
    """
    page_url = index_url() + "/pb1-detectron2/"
    page = urllib.request.urlopen(page_url, timeout=60).read().decode()
    links = [u for u in re.findall(r'href="([^"]+)"', page) if SDIST_NAME in u]
    if not links:
        sys.exit(f"{SDIST_NAME} not listed at {page_url}")
    url = urllib.parse.urljoin(page_url, links[0].split("#")[0])
    path = os.path.join(dest, SDIST_NAME)
    with urllib.request.urlopen(url, timeout=300) as r, open(path, "wb") as f:
        f.write(r.read())
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != SDIST_SHA256:
        sys.exit(f"{url}: sha256 {digest} differs from the pinned {SDIST_SHA256}")
    return path


def pip(*args):
    subprocess.check_call([sys.executable, "-m", "pip", *args])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall the pure-Python build")
    args = parser.parse_args()

    if compiled_detectron2_present():
        print("detectron2 with compiled ops found: using it untouched.")
        return
    if pure_python_detectron2_present() and not args.force:
        print("detectron2 (pure Python, placeholder _C) already installed.")
        return

    with tempfile.TemporaryDirectory() as tmp:
        archive = download_sdist(tmp)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = [p for p in glob.glob(os.path.join(tmp, "*")) if os.path.isdir(p)]

        setup_py = os.path.join(src, "setup.py")
        with open(setup_py) as f:
            text = f.read()
        text, n = re.subn(r"ext_modules=get_extensions\(\),", "ext_modules=[],", text)
        if n != 1:
            sys.exit(f"{setup_py}: could not disable the C++ extension (layout changed?)")
        with open(setup_py, "w") as f:
            f.write(text)
        with open(os.path.join(src, "detectron2", "_C.py"), "w") as f:
            f.write(PLACEHOLDER)
        # --no-build-isolation: setup.py imports torch. --no-deps: the sdist pins
        # black==21.4b2 and iopath<0.1.10; requirements.txt lists what it needs.
        pip("install", "-q", "--no-deps", "--no-build-isolation", src)

    if not pure_python_detectron2_present():
        sys.exit("detectron2 installed but does not import; see the messages above.")
    print("detectron2 v0.6 installed as pure Python (compiled ops replaced by a placeholder).")


if __name__ == "__main__":
    main()
