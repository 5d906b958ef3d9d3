"""tools/demo.py's run_demo() on a tiny synthetic set: the whole pipeline, and a seeded run."""

import json
import os

from d2_pillars.engine import demo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _losses(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    keys = ("iteration", "loss_cls", "loss_box_reg", "loss_dir")
    return [tuple(r[k] for k in keys) for r in rows if "loss_cls" in r]


def test_demo_runs_every_step_and_its_seeded_config_repeats_exactly(
    register_small_synthetic, tiny_demo_opts, tmp_path, monkeypatch, capsys
):
    tiny = tiny_demo_opts("demo_tiny_train", "demo_tiny_val")
    root = register_small_synthetic(
        "nuscenes",
        tmp_path / "synthetic_nuscenes",
        "demo_tiny_val",
        "demo_tiny_train",
        num_scenes=10,
        keyframes_per_scene=2,
        azimuth_steps=128,
    )
    monkeypatch.setattr(demo, "prepare_synthetic_nuscenes", lambda _: root)
    config = os.path.join(REPO, demo.DEMO_CONFIG)

    first = demo.run_demo(config, str(tmp_path / "a"), tiny)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == first
    assert set(first) >= {"car_ap", "mAP", "NDS", "minutes", "output_dir", "bev_image"}
    assert os.path.isfile(first["bev_image"])
    assert os.path.isfile(os.path.join(first["output_dir"], "model_final.pth"))

    # The demo config sets SEED: weights, sampling and augmentation repeat bit for bit.
    second = demo.run_demo(config, str(tmp_path / "b"), tiny)
    assert _losses(first["output_dir"]) == _losses(second["output_dir"])
    assert len(_losses(first["output_dir"])) == 4
    assert (first["car_ap"], first["mAP"], first["NDS"]) == (
        second["car_ap"],
        second["mAP"],
        second["NDS"],
    )
