"""Headless Open3D renders checked pixel by pixel against an independent pinhole projection; the
Xvfb path in a child process."""

import math
import numpy as np
import os
import subprocess
import sys
import textwrap
import cv2
import pytest

pytest.importorskip("open3d", reason="open3d is not importable here")

from d2_pillars.visualization import open3d_render as o3r  # noqa: E402
from d2_pillars.visualization import open3d_scene as o3s  # noqa: E402
from d2_pillars.visualization.style import BACKGROUND, class_color  # noqa: E402

RANGE = (-40.0, -40.0, 40.0, 40.0)
CLASSES = ["car", "truck", "trailer", "bus"]
GT = np.array([[10.0, 0.0, -1.0, 8.0, 4.0, 3.0, 0.4], [-5.0, 12.0, -1.0, 4.0, 2.0, 1.6, -2.0]])


def _project(cam, points, size):
    """Pinhole projection written out from the look-at definition (OpenCV pixel convention)."""
    eye = np.asarray(cam.eye, float)
    fwd = np.asarray(cam.lookat, float) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, cam.up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    q = np.asarray(points, float) - eye
    f = (size / 2) / math.tan(math.radians(cam.fov_deg) / 2)
    return np.stack([f * (q @ right) / (q @ fwd), f * (q @ down) / (q @ fwd)], 1) + size / 2 - 0.5


def _check_render(image, size, cam, box, label):
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    x, y, z, length, width, height, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    # midpoints of edges of the box (bottom, top and verticals)
    local = [(1, 1, 0), (1, -1, 0), (-1, 1, 0), (0, 1, 1), (0, -1, 1), (1, 0, 1), (-1, 0, -1)]
    world = [[x + c * lx * length / 2 - s * ly * width / 2,
              y + s * lx * length / 2 + c * ly * width / 2, z + lz * height / 2]
             for lx, ly, lz in local]  # fmt: skip
    color = np.array(class_color(label), float)
    for u, v in _project(cam, world, size):
        ui, vi = int(round(u)), int(round(v))
        patch = image[vi - 2 : vi + 3, ui - 2 : ui + 3].astype(float)
        assert np.linalg.norm(patch - color, axis=-1).min() < 40, (u, v)
    # points make the image far from blank
    not_bg = np.any(np.abs(image.astype(int) - BACKGROUND).sum(-1, keepdims=True) > 30, axis=-1)
    assert not_bg.mean() > 0.02


def _scene(with_legend_title=None):
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-40, 40, (20000, 2)), rng.uniform(-2, -1.8, (20000, 1))], 1)
    return o3s.build_scene(pts, GT[:1], [0], GT[1:], [3], [0.9], class_names=CLASSES,
                           title=with_legend_title)  # fmt: skip


def test_render_scene_pixels_and_png(backend, tmp_path):
    size = 384
    cam = o3s.default_camera(RANGE)
    image = o3r.render_scene(_scene(), size=size, camera=cam, legend=False)
    _check_render(image, size, cam, GT[0], 0)
    _check_render(image, size, cam, GT[1], 3)
    path = o3r.save_scene_png(str(tmp_path / "scene.png"), _scene("title"), size=size, camera=cam)
    back = cv2.imread(path)
    assert back.shape == (size, size, 3)
    legend = back[:120, :200, ::-1].reshape(-1, 3).astype(int)  # swatches of both classes
    for label in (0, 3):
        assert (np.abs(legend - class_color(label)).sum(1) == 0).sum() > 20


def test_filament_offscreen_renderer():
    ok, msg = o3r.probe_backend("filament")
    if not ok:
        pytest.skip(f"Open3D's Filament OffscreenRenderer cannot render here: {msg}")
    size = 256
    cam = o3s.default_camera(RANGE)
    image = o3r.render_scene(_scene(), size=size, camera=cam, backend="filament", legend=False)
    _check_render(image, size, cam, GT[0], 0)


needs_xvfb = pytest.mark.skipif(
    o3r.XvfbServer.executable() is None, reason="Xvfb is not installed (apt-get install xvfb)"
)


@needs_xvfb
def test_xvfb_server_start_stop():
    server = o3r.XvfbServer(width=320, height=240).start()
    try:
        num = int(server.display.lstrip(":"))
        assert server.proc.poll() is None
        assert os.path.exists(f"/tmp/.X11-unix/X{num}")
    finally:
        proc = server.proc
        server.stop()
    assert proc.poll() is not None and server.display is None


@needs_xvfb
def test_render_under_xvfb_in_child_process(tmp_path):
    """The 'xvfb' backend: starts Xvfb, renders through GLX on it, stops it at exit."""
    out = tmp_path / "xvfb.png"
    code = textwrap.dedent(
        f"""
        import numpy as np, os
        from d2_pillars.visualization import open3d_render as o3r
        from d2_pillars.visualization import open3d_scene as o3s
        assert o3r.available_backend("xvfb") == "xvfb"
        print("DISPLAY", os.environ["DISPLAY"], "PID", o3r._state["xvfb"].proc.pid, flush=True)
        rng = np.random.default_rng(0)
        pts = np.concatenate([rng.uniform(-40, 40, (20000, 2)),
                              rng.uniform(-2, -1.8, (20000, 1))], 1)
        gt = np.array({GT[:1].tolist()})
        scene = o3s.build_scene(pts, gt, [0], class_names=["car"])
        o3r.save_scene_png({str(out)!r}, scene, size=256,
                           camera=o3s.default_camera({RANGE!r}), legend=False)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "falling back to EGL" not in log  # rendered on the X server, not through EGL
    pid = int(log.split(" PID ")[1].split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # Xvfb stopped when the process exited
    image = cv2.imread(str(out))[..., ::-1]
    _check_render(image, 256, o3s.default_camera(RANGE), GT[0], 0)
