"""Open3D scenes of a LiDAR sample: geometry building, an interactive viewer, headless PNGs.

Geometry: the point cloud coloured by height or time lag (same colours as the BEV images) and
one ``LineSet`` per box set -- the 12 edges of each box from ``LiDARBoxes.corners()`` plus a
heading mark (a line from the box centre to the centre of its front face and a cross on the front
face); ground truth solid, predictions dashed; colour per class (:func:`bev.class_color`).

Headless rendering tries, in order (``backend="auto"``):

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
import math
import numpy as np
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple
import torch

from .bev import (
    BACKGROUND,
    _as_numpy,
    _box_labels,
    _box_scores,
    _dash_segments,
    _to_boxes,
    class_color,
    colorize_points,
    draw_legend,
    save_png,
)

__all__ = [
    "BACKENDS",
    "CameraSpec",
    "Scene",
    "SceneBrowser",
    "XvfbServer",
    "available_backend",
    "build_box_lineset",
    "build_point_cloud",
    "build_scene",
    "default_camera",
    "has_display",
    "probe_backend",
    "render_scene",
    "save_scene_png",
    "show_interactive",
]

logger = logging.getLogger(__name__)

BACKENDS = ("filament", "legacy", "xvfb")
_ENV_BACKEND = "D2_PILLARS_O3D_BACKEND"


def _o3d():
    try:
        import open3d as o3d
    except Exception as e:  # ImportError, or OSError for a missing system library
        raise RuntimeError(
            f"open3d cannot be imported ({e}); install it (pip install open3d) and the system "
            "libraries of tools/install_system_deps.sh, or use the BEV images (--mode bev)"
        ) from e
    return o3d


# ---------------------------------------------------------------------------------------------- #
# Geometry
# ---------------------------------------------------------------------------------------------- #
def build_point_cloud(
    points,
    color_by: str = "height",
    point_features: Optional[Sequence[str]] = None,
    value_range: Optional[Tuple[float, float]] = None,
):
    """``open3d.geometry.PointCloud`` of (N, C) points (x, y, z first), coloured as in BEV."""
    o3d = _o3d()
    points = _as_numpy(points)
    pcd = o3d.geometry.PointCloud()
    if points.size == 0:
        return pcd
    colors, _, _ = colorize_points(points, color_by, point_features, value_range)
    pcd.points = o3d.utility.Vector3dVector(points[:, :3].astype(np.float64))
    pcd.colors = o3d.utility.Vector3dVector(colors.astype(np.float64) / 255.0)
    return pcd


#: The 12 box edges as corner index pairs (bottom face, top face, verticals).
BOX_EDGES = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)


def box_line_segments(boxes, dashed: bool = False, dash: float = 0.35, gap: float = 0.25):
    """(S, 2, 3) line segments drawing each box and its heading, and (S,) the box of each.

    Heading mark: centre -> centre of the front face (corners 0, 3, 4, 7, at +l/2) and the two
    diagonals of the front face. With ``dashed`` every segment is split into ``dash`` meter
    dashes separated by ``gap`` meters (except the heading line, kept solid).
    """
    boxes = _to_boxes(boxes)
    corners = _as_numpy(boxes.corners()).astype(np.float64)  # (N, 8, 3)
    n = corners.shape[0]
    if n == 0:
        return np.zeros((0, 2, 3)), np.zeros((0,), np.int64)
    edges = corners[:, BOX_EDGES]  # (N, 12, 2, 3)
    front = corners[:, [0, 3, 7, 4]]  # front face, (N, 4, 3)
    front_centre = front.mean(axis=1)
    centre = _as_numpy(boxes.center).astype(np.float64)
    cross = np.stack([front[:, [0, 2]], front[:, [1, 3]]], axis=1)  # (N, 2, 2, 3)
    outline = np.concatenate([edges, cross], axis=1)  # (N, 14, 2, 3)
    owner = np.repeat(np.arange(n), outline.shape[1])
    segs = outline.reshape(-1, 2, 3)
    if dashed:
        d = _dash_segments(segs[:, 0], segs[:, 1], dash, gap)
        lengths = np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1)
        counts = np.maximum(np.ceil(lengths / (dash + gap)).astype(np.int64), 1)
        owner = np.repeat(owner, counts)
        segs = d
    heading = np.stack([centre, front_centre], axis=1)  # (N, 2, 3)
    return (
        np.concatenate([segs, heading], axis=0),
        np.concatenate([owner, np.arange(n)], axis=0),
    )


def build_box_lineset(boxes, labels=None, scores=None, score_thresh: float = 0.0, dashed=None):
    """``open3d.geometry.LineSet`` of boxes coloured by class label, with heading marks.

    ``scores`` given: boxes below ``score_thresh`` are dropped and lines are dashed (predictions)
    unless ``dashed`` says otherwise.
    """
    o3d = _o3d()
    boxes = _to_boxes(boxes)
    n = len(boxes)
    labels = _box_labels(labels, n)
    keep = np.ones(n, dtype=bool)
    if scores is not None:
        keep = _box_scores(scores, n) >= score_thresh
    dashed = scores is not None if dashed is None else dashed
    idx = np.nonzero(keep)[0]
    segs, owner = box_line_segments(boxes[torch.as_tensor(idx, dtype=torch.long)], dashed=dashed)
    palette = np.array([class_color(lab) for lab in labels[idx]], np.float64).reshape(-1, 3)
    lines = o3d.geometry.LineSet()
    if len(segs):
        lines.points = o3d.utility.Vector3dVector(segs.reshape(-1, 3))
        lines.lines = o3d.utility.Vector2iVector(np.arange(2 * len(segs)).reshape(-1, 2))
        lines.colors = o3d.utility.Vector3dVector(palette[owner] / 255.0)
    return lines


@dataclass
class Scene:
    """Everything one 3D view shows: named geometries plus what the legend lists."""

    geometries: List[Tuple[str, object]]
    class_names: Sequence[str] = ()
    labels_shown: Tuple[int, ...] = ()
    styles: Optional[dict] = None
    point_scale: Optional[Tuple[str, float, float]] = None
    title: Optional[str] = None


def build_scene(
    points=None,
    gt_boxes=None,
    gt_labels=None,
    pred_boxes=None,
    pred_labels=None,
    pred_scores=None,
    *,
    class_names: Sequence[str] = (),
    score_thresh: float = 0.3,
    color_by: str = "height",
    point_features: Optional[Sequence[str]] = None,
    value_range: Optional[Tuple[float, float]] = None,
    title: Optional[str] = None,
) -> Scene:
    """Build the Open3D geometries of one sample (arguments as :func:`bev.render_bev`)."""
    geoms, labels_shown, styles, point_scale = [], set(), {}, None
    if points is not None and len(points):
        geoms.append(("points", build_point_cloud(points, color_by, point_features, value_range)))
        _, _, (lo, hi) = colorize_points(points[:1], color_by, point_features, value_range)
        if value_range is None and color_by == "time_lag":
            _, _, (lo, hi) = colorize_points(points, color_by, point_features)
        point_scale = (color_by, lo, hi)
    if gt_boxes is not None:
        gt = _to_boxes(gt_boxes)
        gl = _box_labels(gt_labels, len(gt))
        geoms.append(("gt_boxes", build_box_lineset(gt, gl)))
        labels_shown.update(int(v) for v in np.unique(gl))
        styles["gt"] = "ground truth"
    if pred_boxes is not None:
        pb = _to_boxes(pred_boxes)
        pl, ps = _box_labels(pred_labels, len(pb)), _box_scores(pred_scores, len(pb))
        geoms.append(("pred_boxes", build_box_lineset(pb, pl, ps, score_thresh)))
        labels_shown.update(int(v) for v in np.unique(pl[ps >= score_thresh]))
        styles["pred"] = f"predictions (score >= {score_thresh:.2f})"
    return Scene(geoms, list(class_names), tuple(sorted(labels_shown)), styles, point_scale, title)


# ---------------------------------------------------------------------------------------------- #
# Camera
# ---------------------------------------------------------------------------------------------- #
@dataclass
class CameraSpec:
    """A pinhole camera: ``eye`` looking at ``lookat`` with ``up``; vertical field of view."""

    eye: Tuple[float, float, float] = (-32.0, -22.0, 30.0)
    lookat: Tuple[float, float, float] = (10.0, 0.0, -2.0)
    up: Tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 55.0

    def extrinsic(self) -> np.ndarray:
        """4x4 world -> camera (OpenCV axes: x right, y down, z forward)."""
        eye, lookat, up = (np.asarray(v, np.float64) for v in (self.eye, self.lookat, self.up))
        fwd = lookat - eye
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, up)
        if np.linalg.norm(right) < 1e-9:
            raise ValueError("camera 'up' is parallel to the viewing direction")
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        rot = np.stack([right, down, fwd])  # rows: camera axes in world coordinates
        ext = np.eye(4)
        ext[:3, :3] = rot
        ext[:3, 3] = -rot @ eye
        return ext

    def focal(self, height: int) -> float:
        return (height / 2.0) / math.tan(math.radians(self.fov_deg) / 2)


def default_camera(
    bev_range: Sequence[float] = (-50.0, -50.0, 50.0, 50.0), ego_yaw: float = 0.0
) -> CameraSpec:
    """A chase view from behind-right and above the sensor, scaled to the BEV range, looking
    along the vehicle heading ``ego_yaw`` (radians in the LiDAR frame)."""
    x_min, y_min, x_max, y_max = (float(v) for v in bev_range)
    extent = max(x_max - x_min, y_max - y_min)
    c, s = math.cos(ego_yaw), math.sin(ego_yaw)

    def rot(x, y, z):
        return (c * x - s * y, s * x + c * y, z)

    return CameraSpec(
        eye=rot(-0.32 * extent, -0.22 * extent, 0.30 * extent),
        lookat=rot(0.10 * extent, 0.0, -2.0),
        up=(0.0, 0.0, 1.0),
        fov_deg=55.0,
    )


# ---------------------------------------------------------------------------------------------- #
# Display / Xvfb / backend selection
# ---------------------------------------------------------------------------------------------- #
def has_display() -> bool:
    """Whether an X11 or Wayland display is configured for this process."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


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
    o3d = _o3d()
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


def _set_legacy_camera(vis, width, height, cam: CameraSpec):
    o3d = _o3d()
    ctr = vis.get_view_control()
    params = ctr.convert_to_pinhole_camera_parameters()
    f = cam.focal(height)
    params.intrinsic.set_intrinsics(
        int(width), int(height), f, f, width / 2 - 0.5, height / 2 - 0.5
    )
    params.extrinsic = cam.extrinsic()
    if not ctr.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True):
        logger.warning("Open3D refused the camera parameters; using its default view")
    ctr.set_constant_z_far(1e4)
    ctr.set_constant_z_near(0.1)
    del o3d


def _render_legacy(geoms, width, height, cam: CameraSpec, point_size=2.0, line_width=2.0):
    o3d = _o3d()
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
        _set_legacy_camera(vis, width, height, cam)
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


# ---------------------------------------------------------------------------------------------- #
# Interactive viewer
# ---------------------------------------------------------------------------------------------- #
#: GLFW key codes used by the viewer (letters are their upper-case ASCII codes).
KEY_NEXT = (ord("N"), 262)  # N, right arrow
KEY_PREV = (ord("P"), 263)  # P, left arrow


class SceneBrowser:
    """Steps a legacy Open3D visualizer through samples: ``step(+1)`` / ``step(-1)`` replace the
    geometries by those of the next / previous sample, keeping the view (the first sample sets
    the camera). ``register_keys`` binds N / right arrow and P / left arrow."""

    def __init__(
        self,
        vis,
        get_scene: Callable[[int], Scene],
        num_samples: int,
        start: int = 0,
        size: int = 1024,
        camera: Optional[CameraSpec] = None,
    ):
        if num_samples <= 0:
            raise ValueError("nothing to show: num_samples is 0")
        self.vis, self.get_scene, self.num_samples = vis, get_scene, int(num_samples)
        self.index = int(start) % self.num_samples
        self.size, self.camera = int(size), camera or default_camera()
        self._first = True

    def show(self, index: int) -> Scene:
        scene = self.get_scene(index)
        self.index = index
        self.vis.clear_geometries()
        for _, geom in scene.geometries:
            self.vis.add_geometry(geom, reset_bounding_box=self._first)
        if self._first:
            _set_legacy_camera(self.vis, self.size, self.size, self.camera)
            self._first = False
        logger.info("[%d/%d] %s", index + 1, self.num_samples, scene.title or "")
        return scene

    def step(self, delta: int) -> Scene:
        return self.show((self.index + delta) % self.num_samples)

    def register_keys(self):
        def callback(delta):
            def on_key(_vis):
                self.step(delta)
                return True  # redraw

            return on_key

        for key in KEY_NEXT:
            self.vis.register_key_callback(key, callback(+1))
        for key in KEY_PREV:
            self.vis.register_key_callback(key, callback(-1))


def show_interactive(
    get_scene: Callable[[int], Scene],
    num_samples: int,
    start: int = 0,
    size: int = 1024,
    camera: Optional[CameraSpec] = None,
    point_size: float = 2.0,
):
    """Open an Open3D window showing ``get_scene(i)``; N / right arrow: next sample,
    P / left arrow: previous, Q / Esc: quit. The view is kept when changing samples.
    """
    if not has_display():
        raise RuntimeError(
            "no display for an interactive window (DISPLAY is not set); pass --save DIR to "
            "render PNGs headless, or run under X forwarding / a desktop session"
        )
    if num_samples <= 0:
        raise ValueError("nothing to show: num_samples is 0")
    o3d = _o3d()
    vis = o3d.visualization.VisualizerWithKeyCallback()
    if not vis.create_window(window_name="d2_pillars  [N] next  [P] previous  [Q] quit",
                             width=int(size), height=int(size)):  # fmt: skip
        raise RuntimeError(f"Open3D could not open a window on display {os.environ.get('DISPLAY')}")
    opt = vis.get_render_option()
    opt.background_color = np.asarray(BACKGROUND, np.float64) / 255.0
    opt.point_size = float(point_size)
    browser = SceneBrowser(vis, get_scene, num_samples, start, size, camera)
    browser.register_keys()
    browser.show(browser.index)
    vis.run()
    vis.destroy_window()
