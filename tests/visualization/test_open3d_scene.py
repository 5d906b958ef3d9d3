"""Open3D scenes: geometry against the box definition; headless renders checked pixel by pixel
against an independent pinhole projection; the Xvfb path in a child process."""

import math
import numpy as np
import os
import subprocess
import sys
import textwrap
import cv2
import pytest

o3d = pytest.importorskip("open3d", reason="open3d is not importable here")

from d2_pillars.visualization import open3d_scene as o3s  # noqa: E402
from d2_pillars.visualization.bev import BACKGROUND, class_color, colorize_points  # noqa: E402

RANGE = (-40.0, -40.0, 40.0, 40.0)
CLASSES = ["car", "truck", "trailer", "bus"]
GT = np.array([[10.0, 0.0, -1.0, 8.0, 4.0, 3.0, 0.4], [-5.0, 12.0, -1.0, 4.0, 2.0, 1.6, -2.0]])


def _corners(box):
    """(8, 3) corners of (x, y, z, l, w, h, yaw) from the definition (any order)."""
    x, y, z, length, width, height, yaw = box[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    out = []
    for lz in (-1, 1):
        for lx, ly in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
            px, py = lx * length / 2, ly * width / 2
            out.append([x + c * px - s * py, y + s * px + c * py, z + lz * height / 2])
    return np.array(out)


def _on_box_surface_edges(points, box, tol=1e-3):
    """Whether each point lies on one of the 12 edges or front-face diagonals of ``box``."""
    x, y, z, length, width, height, yaw = box[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    d = points - np.array([x, y, z])
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    half = np.array([length, width, height]) / 2
    at_bound = np.abs(np.abs(local) - half) < tol
    inside = np.all(np.abs(local) <= half + tol, axis=1)
    edge = at_bound.sum(axis=1) >= 2
    # front-face diagonals: x = +l/2 and |y|/w == |z|/h
    diag = (
        at_bound[:, 0]
        & (local[:, 0] > 0)
        & (np.abs(np.abs(local[:, 1]) / half[1] - np.abs(local[:, 2]) / half[2]) < tol)
    )
    return inside & (edge | diag)


def test_gt_lineset_edges_heading_colours():
    lines = o3s.build_box_lineset(GT, np.array([0, 3]))
    pts = np.asarray(lines.points)
    segs = pts[np.asarray(lines.lines)]  # (S, 2, 3)
    assert segs.shape[0] == 2 * 15  # 12 edges + 2 front diagonals + heading, per box
    colors = np.asarray(lines.colors)
    for box, label in zip(GT, (0, 3)):
        mine = np.all(np.isclose(colors, np.array(class_color(label)) / 255.0), axis=1)
        assert mine.sum() == 15
        ends = segs[mine].reshape(-1, 3)
        for corner in _corners(box):
            assert np.min(np.linalg.norm(ends - corner, axis=1)) < 1e-4
        # the heading line joins the centre and the front-face centre
        front = box[:3] + box[3] / 2 * np.array([math.cos(box[6]), math.sin(box[6]), 0.0])
        heading = [s for s in segs[mine] if np.allclose(s[0], box[:3], atol=1e-4)]
        assert len(heading) == 1 and np.allclose(heading[0][1], front, atol=1e-4)


def test_pred_lineset_dashed_on_edges_and_thresholded():
    lines = o3s.build_box_lineset(GT, np.array([1, 2]), scores=np.array([0.8, 0.2]),
                                  score_thresh=0.3)  # fmt: skip
    segs = np.asarray(lines.points)[np.asarray(lines.lines)]
    colors = np.asarray(lines.colors)
    assert np.allclose(colors, np.array(class_color(1)) / 255.0)  # box 2 is below threshold
    assert segs.shape[0] > 15  # dashes
    heading = np.all(np.isclose(segs[:, 0], GT[0, :3], atol=1e-4), axis=1)
    assert heading.sum() == 1
    assert _on_box_surface_edges(segs[~heading].reshape(-1, 3), GT[0]).all()
    # dashes leave gaps: total drawn length is below the outline length
    drawn = np.linalg.norm(segs[~heading, 1] - segs[~heading, 0], axis=1).sum()
    full = o3s.box_line_segments(GT[:1])[0]
    assert drawn < 0.8 * np.linalg.norm(full[:-1, 1] - full[:-1, 0], axis=1).sum()


def test_point_cloud_colours_match_bev():
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(-10, 10, (500, 3)), rng.uniform(0, 0.5, (500, 1))], 1)
    pcd = o3s.build_point_cloud(pts, "time_lag", ["x", "y", "z", "time_lag"])
    np.testing.assert_allclose(np.asarray(pcd.points), pts[:, :3])
    expected, _, _ = colorize_points(pts, "time_lag", ["x", "y", "z", "time_lag"])
    np.testing.assert_allclose(np.asarray(pcd.colors), expected / 255.0)


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


@pytest.fixture(scope="module")
def backend():
    try:
        return o3s.available_backend("auto")
    except RuntimeError as e:
        pytest.skip(f"no Open3D headless rendering backend works on this machine: {e}")


def test_render_scene_pixels_and_png(backend, tmp_path):
    size = 384
    cam = o3s.default_camera(RANGE)
    image = o3s.render_scene(_scene(), size=size, camera=cam, legend=False)
    _check_render(image, size, cam, GT[0], 0)
    _check_render(image, size, cam, GT[1], 3)
    path = o3s.save_scene_png(str(tmp_path / "scene.png"), _scene("title"), size=size, camera=cam)
    back = cv2.imread(path)
    assert back.shape == (size, size, 3)
    legend = back[:120, :200, ::-1].reshape(-1, 3).astype(int)  # swatches of both classes
    for label in (0, 3):
        assert (np.abs(legend - class_color(label)).sum(1) == 0).sum() > 20


def test_scene_browser_steps_between_samples(backend):
    if backend == "filament":
        pytest.skip("the browser drives the legacy visualizer; only Filament renders here")
    scenes = [
        o3s.build_scene(None, GT[:1], [0], class_names=CLASSES),
        o3s.build_scene(None, GT[1:], [3], class_names=CLASSES),
    ]
    vis = o3d.visualization.VisualizerWithKeyCallback()
    assert vis.create_window(width=128, height=128, visible=False)
    try:
        browser = o3s.SceneBrowser(vis, lambda i: scenes[i], 2, size=128,
                                   camera=o3s.default_camera(RANGE))  # fmt: skip
        browser.register_keys()

        def shot():
            vis.poll_events()
            vis.update_renderer()
            return (np.asarray(vis.capture_screen_float_buffer(True)) * 255).round()

        def has(img, label):
            return (np.abs(img - class_color(label)).sum(-1) < 40).sum() > 5

        browser.show(0)
        first = shot()
        assert has(first, 0) and not has(first, 3)
        browser.step(+1)
        second = shot()
        assert browser.index == 1 and has(second, 3) and not has(second, 0)
        browser.step(+1)  # wraps around
        assert browser.index == 0 and has(shot(), 0)
        browser.step(-1)
        assert browser.index == 1
    finally:
        vis.destroy_window()


def test_filament_offscreen_renderer():
    ok, msg = o3s.probe_backend("filament")
    if not ok:
        pytest.skip(f"Open3D's Filament OffscreenRenderer cannot render here: {msg}")
    size = 256
    cam = o3s.default_camera(RANGE)
    image = o3s.render_scene(_scene(), size=size, camera=cam, backend="filament", legend=False)
    _check_render(image, size, cam, GT[0], 0)


needs_xvfb = pytest.mark.skipif(
    o3s.XvfbServer.executable() is None, reason="Xvfb is not installed (apt-get install xvfb)"
)


@needs_xvfb
def test_xvfb_server_start_stop():
    server = o3s.XvfbServer(width=320, height=240).start()
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
        from d2_pillars.visualization import open3d_scene as o3s
        assert o3s.available_backend("xvfb") == "xvfb"
        print("DISPLAY", os.environ["DISPLAY"], "PID", o3s._state["xvfb"].proc.pid, flush=True)
        rng = np.random.default_rng(0)
        pts = np.concatenate([rng.uniform(-40, 40, (20000, 2)),
                              rng.uniform(-2, -1.8, (20000, 1))], 1)
        gt = np.array({GT[:1].tolist()})
        scene = o3s.build_scene(pts, gt, [0], class_names=["car"])
        o3s.save_scene_png({str(out)!r}, scene, size=256,
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


def test_interactive_needs_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(RuntimeError, match="--save"):
        o3s.show_interactive(lambda i: _scene(), 1)
