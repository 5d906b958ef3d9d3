"""tools/train_net.py's main(): training, --eval-only, --results, --resume and 2-process gloo runs.

All runs use a tiny version of the demo config (RegNetX-400MF + FPN on a 32 x 32 grid) on a tiny
synthetic nuScenes set, registered under the default names through ``D2_PILLARS_DATASETS`` so
that spawned processes see them too.
"""

import json
import os
import signal
import subprocess
import sys
import time
import pytest
import torch

from d2_pillars.data.datasets import NUSCENES_SPEC, create_infos
from d2_pillars.synthetic import make_synthetic_nuscenes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml")
TINY = [
    "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
    "INPUT.VOXEL_SIZE", "[1.0, 1.0, 8.0]",
    "INPUT.NUM_SWEEPS", "1",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "(2,)",
    "DATALOADER.NUM_WORKERS", "0",
    "SEED", "7",
    "SOLVER.LOG_PERIOD", "1",
    # An (almost) untrained model scores ~0.01 (focal prior): keep its boxes for the devkit.
    "MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST", "0.0",
    "MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE", "50",
]  # fmt: skip


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """A tiny synthetic nuScenes set (all 10 mini scenes, 2 keyframes each) with its infos."""
    datasets = tmp_path_factory.mktemp("datasets")
    root = make_synthetic_nuscenes(
        str(datasets / "synthetic_nuscenes"),
        num_scenes=10,
        keyframes_per_scene=2,
        num_beams=8,
        azimuth_steps=128,
    )
    create_infos(NUSCENES_SPEC, root, "v1.0-mini", max_sweeps=2, progress=False)
    return str(datasets)


def _args(config_opts, *, output_dir, eval_only=False, resume=False, results="", num_gpus=1):
    from d2_pillars.engine import argument_parser

    argv = ["--config-file", CONFIG, "--num-gpus", str(num_gpus)]
    argv += ["--eval-only"] if eval_only else []
    argv += ["--resume"] if resume else []
    argv += ["--results", results] if results else []
    return argument_parser().parse_args(argv + TINY + ["OUTPUT_DIR", output_dir] + config_opts)


def _env(datasets_root):
    return dict(os.environ, D2_PILLARS_DATASETS=datasets_root, PYTHONUNBUFFERED="1")


def _run_train_net(args, datasets_root, timeout=600):
    """tools/train_net.py in a fresh process (so D2_PILLARS_DATASETS takes effect)."""
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py")] + args
    proc = subprocess.run(
        cmd, env=_env(datasets_root), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _eval_json(output_dir, name):
    """A JSON file the evaluation of the synthetic val split wrote under ``output_dir``."""
    with open(os.path.join(output_dir, "inference", "synthetic_nus_mini_val", name)) as f:
        return json.load(f)


def _argv(output_dir, *extra):
    return ["--config-file", CONFIG] + list(extra) + TINY + ["OUTPUT_DIR", output_dir]


def test_train_then_eval_only_reproduces(datasets_root, tmp_path):
    out = str(tmp_path / "run")
    _run_train_net(_argv(out, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "3"), datasets_root)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    records = _metrics(out)
    assert [r["iteration"] for r in records if "total_loss" in r][-1] == 2
    trained = [r for r in records if "nuscenes/mAP" in r][-1]
    results_file = os.path.join(out, "inference", "synthetic_nus_mini_val", "results_nusc.json")
    results = _eval_json(out, "results_nusc.json")
    assert results["meta"]["use_lidar"] is True
    assert len(results["results"]) == 4  # 2 val scenes x 2 keyframes, every sample present

    # --eval-only on the saved checkpoint gives the numbers of the end-of-training evaluation.
    out2 = str(tmp_path / "eval")
    weights = os.path.join(out, "model_final.pth")
    _run_train_net(_argv(out2, "--eval-only", "MODEL.WEIGHTS", weights), datasets_root)
    summary = _eval_json(out2, "metrics_summary.json")
    assert summary["mean_ap"] == pytest.approx(trained["nuscenes/mAP"], abs=1e-9)
    assert summary["nd_score"] == pytest.approx(trained["nuscenes/NDS"], abs=1e-9)

    # --eval-only --results scores the results file without a model, to the same numbers.
    out3 = str(tmp_path / "score")
    _run_train_net(_argv(out3, "--eval-only", "--results", results_file), datasets_root)
    rescored = _eval_json(out3, "metrics_summary.json")
    assert rescored["nd_score"] == pytest.approx(summary["nd_score"], abs=1e-9)


def test_resume_after_kill_continues_schedule(datasets_root, tmp_path):
    """Kill a run after its first checkpoint; --resume continues at the next iteration with the
    learning rate of an uninterrupted run."""
    common = ["SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0"]
    ref = str(tmp_path / "ref")
    _run_train_net(_argv(ref, *common), datasets_root)
    ref_lr = {r["iteration"]: r["lr"] for r in _metrics(ref) if "lr" in r}

    out = str(tmp_path / "killed")
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py")] + _argv(out, *common)
    proc = subprocess.Popen(
        cmd, env=_env(datasets_root), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    last = os.path.join(out, "last_checkpoint")
    deadline = time.time() + 300
    while not os.path.exists(last) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(last) as f:
        saved = f.read().strip()
    assert saved.startswith("model_") and saved != "model_final.pth", saved
    # Atomic writes: whatever the kill interrupted, every checkpoint file present is complete.
    for name in os.listdir(out):
        if name.endswith(".pth"):
            torch.load(os.path.join(out, name), map_location="cpu", weights_only=False)
    saved_iter = torch.load(os.path.join(out, saved), map_location="cpu", weights_only=False)[
        "iteration"
    ]

    _run_train_net(_argv(out, "--resume", *common), datasets_root)
    resumed = [r for r in _metrics(out) if "lr" in r]
    first_after = min(r["iteration"] for r in resumed if r["iteration"] > saved_iter)
    assert first_after == saved_iter + 1
    for r in resumed:
        assert r["lr"] == pytest.approx(ref_lr[r["iteration"]], rel=1e-9)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    # The optimizer state (AdamW step count) continued too: it counts every iteration once.
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    steps = {int(s["step"]) for s in final["trainer"]["_trainer"]["optimizer"]["state"].values()}
    assert steps == {12}


def _gloo_main(args):
    from d2_pillars.engine import main

    main(args)


def test_two_process_gloo_training_reaches_evaluator(datasets_root, tmp_path, monkeypatch):
    """2 training iterations in 2 CPU processes (gloo) through the same main() the launcher calls;
    the evaluator on rank 0 must see every val sample, half of them predicted by rank 1."""
    from d2_pillars.engine import launch

    monkeypatch.setenv("D2_PILLARS_DATASETS", datasets_root)
    out = str(tmp_path / "ddp")
    opts = ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "TEST.EVAL_PERIOD", "2"]
    args = _args(opts, output_dir=out, num_gpus=2)
    launch(_gloo_main, 2, args=(args,))
    assert len(_eval_json(out, "results_nusc.json")["results"]) == 4
    records = _metrics(out)
    assert any("nuscenes/mAP" in r for r in records)
    assert [r["iteration"] for r in records if "total_loss" in r][-1] == 1
