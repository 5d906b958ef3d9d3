"""What ``tools/train_net.py`` runs: config setup, argument parser, and ``main``."""

import logging
import os

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_pillars_config
from ..data.datasets.custom import register_custom_dataset
from .device import check_training_device
from .trainer import PillarsTrainer, load_model_weights

__all__ = ["argument_parser", "setup", "main", "load_config", "check_device"]

logger = logging.getLogger(__name__)


def argument_parser():
    """detectron2's ``default_argument_parser`` plus ``--results FILE`` (score a results file)."""
    parser = default_argument_parser(
        epilog="Examples:\n"
        "  Train:     python tools/train_net.py --config-file configs/nuscenes/"
        "pointpillars_regnetx_400mf_fpn.yaml --num-gpus 8\n"
        "  Evaluate:  python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS W.pth\n"
        "  Score:     python tools/train_net.py --config-file CFG --eval-only --results R.json\n"
    )
    parser.add_argument(
        "--results",
        default="",
        metavar="FILE",
        help="with --eval-only: score an existing results file (nuScenes JSON, Lyft CSV/JSON) "
        "on DATASETS.TEST[0] without running a model",
    )
    return parser


def load_config(config_file="", opts=()):
    """A frozen-free config: detectron2 defaults + d2_pillars keys + file + overrides.

    With ``DATASETS.CUSTOM_ROOT`` set, the own-data splits of that root are registered.

    Unknown keys in the file or the overrides raise a ``KeyError`` that names the file.
    """
    cfg = get_cfg()
    add_pillars_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Config file not found: {config_file}")
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            raise KeyError(
                f"{config_file}: {e.args[0] if e.args else e}. Check the key's spelling against "
                "d2_pillars/config.py and detectron2's defaults."
            ) from None
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd list: {opts}")
    for key in opts[0::2]:
        # yacs reports an unknown override key with an assert (stripped by python -O).
        if not (cfg.key_is_deprecated(key) or cfg.key_is_renamed(key) or _has_key(cfg, key)):
            raise KeyError(
                f"command-line override: Non-existent config key: {key}. Check the key's "
                "spelling against d2_pillars/config.py and detectron2's defaults."
            )
    try:
        cfg.merge_from_list(opts)
    except KeyError as e:
        raise KeyError(
            f"command-line override: {e.args[0] if e.args else e}. Check the key's spelling "
            "against d2_pillars/config.py and detectron2's defaults."
        ) from None
    if cfg.DATASETS.CUSTOM_ROOT:
        # Own data: its splits are named in the config, registered from the root's index.
        register_custom_dataset(cfg.DATASETS.CUSTOM_ROOT)
    return cfg


def _has_key(cfg, full_key: str) -> bool:
    node = cfg
    for part in str(full_key).split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def setup(args):
    """Config from ``args`` (frozen), output dir, logging and seeding via detectron2."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2_pillars")
    return cfg


def check_device(args):
    """Before launching processes: a training run whose ``MODEL.DEVICE`` needs a CUDA device this
    machine lacks raises :class:`~d2_pillars.engine.device.DeviceUnavailableError` (inference
    falls back to the CPU later, with a warning)."""
    if args.eval_only:
        return
    check_training_device(load_config(args.config_file, args.opts), args.config_file)


def main(args):
    """Train, evaluate a checkpoint (``--eval-only``) or score a results file (``--results``)."""
    cfg = setup(args)
    if args.results:
        if not args.eval_only:
            raise ValueError("--results is an evaluation: pass --eval-only too")
        from ..evaluation import evaluate_results_file

        return evaluate_results_file(cfg, args.results)
    if args.eval_only:
        model = PillarsTrainer.build_model(cfg)
        load_model_weights(cfg, model, resume=args.resume, save_dir=cfg.OUTPUT_DIR)
        res = PillarsTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    check_training_device(cfg, args.config_file)
    trainer = PillarsTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
