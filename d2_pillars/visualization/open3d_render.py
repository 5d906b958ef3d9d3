"""Headless PNGs of an Open3D :class:`~.open3d_scene.Scene`, on machines with or without a screen.

Rendering tries, in order (``backend="auto"``):

1. ``"filament"``: ``open3d.visualization.rendering.OffscreenRenderer`` (Filament, EGL off-screen);
2. ``"legacy"``: the legacy ``Visualizer`` in a hidden window -- on the current display, or with
   no display through Open3D's EGL off-screen context (Open3D >= 0.20);
3. ``"xvfb"``: the legacy ``Visualizer`` under a virtual X server (``Xvfb``) started for the
   process and stopped at exit.

Each candidate is first probed in a child process (a broken OpenGL/EGL stack can crash the
process that tries it) and the first one that renders a test scene is used for the rest of the
process. ``D2_PILLARS_O3D_BACKEND`` forces a backend.
"""

import atexit
import logging
import numpy as np
import os
import select
import shutil
import subprocess
import sys
import time
from typing import Optional

from .bev import draw_legend, save_png
from .open3d_scene import CameraSpec, Scene, default_camera, import_open3d, set_legacy_camera
from .style import BACKGROUND

__all__ = [
    "BACKENDS",
    "XvfbServer",
    "available_backend",
    "probe_backend",
    "render_scene",
    "save_scene_png",
]

logger = logging.getLogger(__name__)

BACKENDS = ("filament", "legacy", "xvfb")
_ENV_BACKEND = "D2_PILLARS_O3D_BACKEND"


# ---------------------------------------------------------------------------------------------- #
# Xvfb and backend selection
# ---------------------------------------------------------------------------------------------- #
def _die_with_parent():
    """In the child: ask Linux to send SIGTERM when the parent dies (even by SIGKILL), so that no
    Xvfb outlives the process that started it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:  # not Linux / no glibc: atexit and stop() still clean up
        pass


class XvfbServer:
    """A virtual X server (``Xvfb``) on a free display number, for GL windows without a screen.

    ``Xvfb -displayfd`` picks the display number itself (no race with other servers). Use as a
    context manager or call :meth:`start` / :meth:`stop`; ``display`` is e.g. ``":99"``.
    """

    def __init__(self, width: int = 1920, height: int = 1080, timeout: float = 20.0):
        self.width, self.height, self.timeout = int(width), int(height), float(timeout)
        self.proc = None
        self.display = None

    @staticmethod
    def executable() -> Optional[str]:
        return shutil.which("Xvfb")

    def start(self) -> "XvfbServer":
        exe = self.executable()
        if exe is None:
            raise RuntimeError(
                "Xvfb is not installed (Debian/Ubuntu: apt-get install xvfb; see "
                "tools/install_system_deps.sh)"
            )
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [exe, "-displayfd", str(write_fd), "-screen", "0",
                 f"{self.width}x{self.height}x24", "-nolisten", "tcp", "-noreset"],
                pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        finally:
            os.close(write_fd)
        data = b""
        deadline = time.monotonic() + self.timeout
        try:
            while not data.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    break
                ready, _, _ = select.select([read_fd], [], [], remaining)
                if not ready:
                    break
                chunk = os.read(read_fd, 64)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(read_fd)
        if not data.strip().isdigit():
            err = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read()[-500:]
            self.stop()
            raise RuntimeError(f"Xvfb did not start within {self.timeout:.0f} s: {err!r}")
        self.display = f":{int(data.strip())}"
        logger.info("Started Xvfb on display %s (pid %d)", self.display, self.proc.pid)
        return self

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stderr is not None:
                self.proc.stderr.close()
        self.proc = None
        self.display = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


_state = {"backend": None, "xvfb": None, "tried": {}}

# Child-process probe: render a red square with only open3d + numpy imported (fast, and a crash in
# the GL/EGL stack ends the child only). Prints "PROBE OK" when red pixels come back.
_PROBE_CODE = r"""
import sys
import numpy as np
import open3d as o3d
backend = sys.argv[1]
ls = o3d.geometry.LineSet()
ls.points = o3d.utility.Vector3dVector(np.array([[1, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0.]]))
ls.lines = o3d.utility.Vector2iVector(np.array([[0, 1], [1, 2], [2, 3], [3, 0]]))
ls.colors = o3d.utility.Vector3dVector(np.tile([[1.0, 0.0, 0.0]], (4, 1)))
if backend == "filament":
    r = o3d.visualization.rendering.OffscreenRenderer(64, 64)
    m = o3d.visualization.rendering.MaterialRecord()
    m.shader = "unlitLine"
    m.line_width = 3.0
    r.scene.set_background([0.0, 0.0, 0.0, 1.0])
    r.scene.add_geometry("probe", ls, m)
    r.setup_camera(60.0, [0, 0, 0], [0, 0, 4], [1, 0, 0])
    img = np.asarray(r.render_to_image())[..., :3].astype(np.float64) / 255
else:
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(width=64, height=64, visible=False):
        sys.exit("PROBE FAILED: create_window returned False")
    vis.get_render_option().background_color = np.zeros(3)
    vis.add_geometry(ls)
    vis.poll_events()
    vis.update_renderer()
    img = np.asarray(vis.capture_screen_float_buffer(do_render=True))
    vis.destroy_window()
red = (img[..., 0] > 0.6) & (img[..., 1] < 0.4) & (img[..., 2] < 0.4)
print("PROBE OK" if red.any() else "PROBE FAILED: no red pixel in the test render")
"""


def probe_backend(backend: str, env: Optional[dict] = None, timeout: float = 120.0):
    """Try ``backend`` ("filament" or "legacy") in a child process: render a small test scene.

    Returns ``(ok, message)``, cached per backend and ``DISPLAY``. A crash (e.g. a segfault in
    EGL initialisation) only ends the child.
    """
    if backend not in ("filament", "legacy"):
        raise ValueError(f"probe_backend takes 'filament' or 'legacy', got {backend!r}")
    key = (backend, (env if env is not None else os.environ).get("DISPLAY"))
    if key not in _probe_cache:
        _probe_cache[key] = _run_probe(backend, env, timeout)
    return _probe_cache[key]


_probe_cache = {}


def _run_probe(backend: str, env: Optional[dict], timeout: float):
    cmd = [sys.executable, "-c", _PROBE_CODE, backend]
    try:
        res = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"{backend}: probe timed out after {timeout:.0f} s"
    if res.returncode == 0 and "PROBE OK" in res.stdout:
        return True, f"{backend}: ok"
    lines = [ln for ln in (res.stdout + res.stderr).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return False, f"{backend}: failed (exit {res.returncode}): {last[-300:]}"


def available_backend(backend: str = "auto") -> str:
    """Pick (once per process) a headless 3D rendering backend; see the module docstring.

    Raises RuntimeError naming each failure when none works.
    """
    backend = os.environ.get(_ENV_BACKEND, backend) if backend == "auto" else backend
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    if _state["backend"] is not None and backend in ("auto", _state["backend"]):
        return _state["backend"]
    candidates = BACKENDS if backend == "auto" else (backend,)
    failures = []
    for name in candidates:
        if name in _state["tried"]:
            ok, msg = _state["tried"][name]
        elif name == "xvfb":
            ok, msg = _try_xvfb()
        else:
            ok, msg = probe_backend(name)
        _state["tried"][name] = (ok, msg)
        logger.info("Open3D headless backend %s", msg)
        if ok:
            _state["backend"] = name
            return name
        failures.append(msg)
    raise RuntimeError(
        "No Open3D rendering backend works here:\n  " + "\n  ".join(failures) + "\nInstall the "
        "GL/EGL libraries and Xvfb (tools/install_system_deps.sh), or use --mode bev."
    )


def _try_xvfb():
    if XvfbServer.executable() is None:
        return False, "xvfb: Xvfb is not installed (apt-get install xvfb)"
    server = _state["xvfb"]
    if server is None:
        try:
            server = XvfbServer().start()
        except RuntimeError as e:
            return False, f"xvfb: {e}"
    env = dict(os.environ, DISPLAY=server.display)
    env.pop("WAYLAND_DISPLAY", None)
    ok, msg = probe_backend("legacy", env=env)
    if not ok:
        server.stop()
        return False, "xvfb: " + msg
    # the legacy visualizer of this process now opens its windows on the virtual display
    os.environ["DISPLAY"] = server.display
    os.environ.pop("WAYLAND_DISPLAY", None)
    if _state["xvfb"] is None:
        _state["xvfb"] = server
        atexit.register(server.stop)
    return True, f"xvfb: ok (display {server.display})"


# ---------------------------------------------------------------------------------------------- #
# Rendering
# ---------------------------------------------------------------------------------------------- #
def _render_filament(geoms, width, height, cam: CameraSpec, point_size=2.0, line_width=2.0):
    o3d = import_open3d()
    rendering = o3d.visualization.rendering
    renderer = rendering.OffscreenRenderer(int(width), int(height))
    try:
        renderer.scene.set_background(list(np.asarray(BACKGROUND) / 255.0) + [1.0])
        for name, geom in geoms:
            mat = rendering.MaterialRecord()
            if isinstance(geom, o3d.geometry.LineSet):
                mat.shader, mat.line_width = "unlitLine", float(line_width)
            else:
                mat.shader, mat.point_size = "defaultUnlit", float(point_size)
            renderer.scene.add_geometry(name, geom, mat)
        renderer.setup_camera(float(cam.fov_deg), list(cam.lookat), list(cam.eye), list(cam.up))
        image = np.asarray(renderer.render_to_image())
    finally:
        del renderer
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _render_legacy(geoms, width, height, cam: CameraSpec, point_size=2.0, line_width=2.0):
    o3d = import_open3d()
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(window_name="d2_pillars", width=int(width), height=int(height),
                             visible=False):  # fmt: skip
        raise RuntimeError("Open3D could not create a (hidden) window")
    try:
        opt = vis.get_render_option()
        opt.background_color = np.asarray(BACKGROUND, np.float64) / 255.0
        opt.point_size = float(point_size)
        opt.line_width = float(line_width)
        for _, geom in geoms:
            vis.add_geometry(geom)
        set_legacy_camera(vis, width, height, cam)
        vis.poll_events()
        vis.update_renderer()
        buf = np.asarray(vis.capture_screen_float_buffer(do_render=True))
    finally:
        vis.destroy_window()
    if buf.shape[:2] != (int(height), int(width)):
        raise RuntimeError(f"Open3D rendered {buf.shape[:2]} instead of {(height, width)}")
    return np.clip(np.round(buf * 255), 0, 255).astype(np.uint8)


def render_scene(
    scene: Scene,
    size: int = 1024,
    camera: Optional[CameraSpec] = None,
    backend: str = "auto",
    legend: bool = True,
    point_size: Optional[float] = None,
) -> np.ndarray:
    """Render a :class:`Scene` headless to a ``(size, size, 3)`` uint8 RGB image (+ legend)."""
    name = available_backend(backend)
    camera = camera or default_camera()
    point_size = point_size or max(1.0, 2.0 * size / 1024)
    render = _render_filament if name == "filament" else _render_legacy
    image = render(scene.geometries, size, size, camera, point_size=point_size)
    image = np.ascontiguousarray(image)
    if legend:
        draw_legend(
            image, class_names=scene.class_names, labels=scene.labels_shown,
            styles=scene.styles, point_scale=scene.point_scale, title=scene.title,
        )  # fmt: skip
    return image


def save_scene_png(path: str, scene: Scene, size: int = 1024, **kwargs) -> str:
    """Render a scene headless (:func:`render_scene`) and write it as a PNG atomically."""
    return save_png(path, render_scene(scene, size=size, **kwargs))
