"""``make demo``: the whole pipeline on the built-in synthetic nuScenes dataset.

1. generate the synthetic nuScenes-format dataset (``v1.0-mini`` layout, real mini scene names)
   under ``$D2_PILLARS_DATASETS/synthetic_nuscenes`` unless it is already there;
2. build its info files through the nuScenes devkit (``tools/create_data.py`` does the same);
3. train the demo config (RegNetX-400MF + FPN, shrunk to train on a CPU);
4. evaluate it with the official devkit on the synthetic ``mini_val`` split;
5. render a BEV image of predictions vs ground truth;
6. print where everything is and, last, one JSON line with car AP, mAP, NDS and the minutes spent.
"""

import json
import logging
import os
import time

from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..data import DATASETS_ROOT
from ..data.datasets import NUSCENES_SPEC, create_infos, infos_up_to_date
from ..synthetic import MARKER_NAME, make_synthetic_nuscenes
from .defaults import load_config
from .trainer import PillarsTrainer

__all__ = ["run_demo", "DEMO_CONFIG"]

logger = logging.getLogger("d2_pillars.demo")

DEMO_CONFIG = "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml"
VERSION = "v1.0-mini"


def prepare_synthetic_nuscenes(root, *, num_scenes=10, keyframes_per_scene=40, max_sweeps=10):
    """Generate the synthetic dataset and its infos under ``root`` when missing; return ``root``."""
    workers = max(1, min(os.cpu_count() or 1, 4))
    make_synthetic_nuscenes(
        root, num_scenes=num_scenes, keyframes_per_scene=keyframes_per_scene, num_workers=workers
    )
    splits, marker = ("mini_train", "mini_val"), os.path.join(root, MARKER_NAME)
    if not infos_up_to_date(root, "nuscenes", splits, marker):
        create_infos(NUSCENES_SPEC, root, VERSION, max_sweeps=max_sweeps)
    return root


def run_demo(config_file=DEMO_CONFIG, output_dir="output/demo", opts=()):
    """Run the demo; returns the summary dict that is printed as the last line."""
    start = time.time()
    os.makedirs(output_dir, exist_ok=True)
    # once per logger: each setup_logger call adds its own console handler
    setup_logger(output=output_dir, name="d2_pillars")
    setup_logger(name="detectron2")
    root = os.path.join(DATASETS_ROOT, "synthetic_nuscenes")
    logger.info("[1/5] synthetic nuScenes dataset + infos under %s", root)
    prepare_synthetic_nuscenes(root)

    cfg = load_config(config_file, opts)
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())

    # as detectron2's default_setup does for train_net: weights, augmentation and worker seeds
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    logger.info("[2/5] training %s for %d iterations", config_file, cfg.SOLVER.MAX_ITER)
    trainer = PillarsTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()

    logger.info("[3/5] evaluating on %s with the nuScenes devkit", cfg.DATASETS.TEST[0])
    results = getattr(trainer, "_last_eval_results", None) or PillarsTrainer.test(
        cfg, trainer.model
    )
    metrics = results["nuscenes"]
    eval_dir = os.path.join(output_dir, cfg.TEST.EVAL_OUTPUT_SUBDIR, cfg.DATASETS.TEST[0])

    logger.info("[4/5] rendering a BEV image of predictions vs ground truth")
    from .visualize import visualize

    r = cfg.INPUT.POINT_CLOUD_RANGE
    images = visualize(
        cfg.DATASETS.TEST[0],
        indices=[0],
        results_file=os.path.join(eval_dir, "results_nusc.json"),
        save_dir=os.path.join(output_dir, "vis"),
        mode="bev",
        num_sweeps=cfg.INPUT.NUM_SWEEPS,
        bev_range=(r[0], r[1], r[3], r[4]),
    )

    minutes = (time.time() - start) / 60
    logger.info("[5/5] done in %.1f min", minutes)
    print(f"Dataset:        {root}")
    print(f"Checkpoint:     {os.path.join(output_dir, 'model_final.pth')}")
    print(f"Training log:   {os.path.join(output_dir, 'log.txt')} (metrics.json, TensorBoard)")
    print(f"Evaluation:     {eval_dir} (results_nusc.json, metrics_summary.json)")
    print(f"BEV image:      {images[0] if images else '-'}")
    print(f"car AP {metrics['AP-car']:.3f}   mAP {metrics['mAP']:.3f}   NDS {metrics['NDS']:.3f}")
    summary = {
        "car_ap": round(float(metrics["AP-car"]), 4),
        "mAP": round(float(metrics["mAP"]), 4),
        "NDS": round(float(metrics["NDS"]), 4),
        "minutes": round(minutes, 2),
        "output_dir": os.path.abspath(output_dir),
        "bev_image": os.path.abspath(images[0]) if images else None,
    }
    print(json.dumps(summary))
    return summary
