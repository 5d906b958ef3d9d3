"""The detectron2 trainer for d2_pillars: point-cloud loaders, 3D evaluators, AdamW, AMP."""

import logging
import os
import weakref
import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.modeling import build_model
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import Registry

from ..checkpoint import PillarsCheckpointer
from ..data import build_pillars_test_loader, build_pillars_train_loader
from ..evaluation import CustomEvaluator, LyftEvaluator, NuScenesEvaluator
from .amp import build_step_trainer
from .device import check_training_device, inference_device_config
from .sync_bn import convert_to_naive_sync_bn

__all__ = [
    "PillarsTrainer",
    "build_pillars_evaluator",
    "build_pillars_model",
    "load_model_weights",
    "wrap_ddp",
    "INFERENCE_BACKEND_REGISTRY",
]

logger = logging.getLogger(__name__)

INFERENCE_BACKEND_REGISTRY = Registry("INFERENCE_BACKEND")
INFERENCE_BACKEND_REGISTRY.__doc__ = """
Inference back-ends other than eager torch, selected by ``MODEL.BACKEND``. Each entry is called as
``obj(cfg)`` and returns an inference-only ``nn.Module`` with the meta-architecture's interface
(``model(list of mapper dicts) -> [{"instances": Instances}]``). ``d2_pillars.deploy`` registers
"onnxruntime" when it is imported (the engine never imports it: it sits above the engine).
"""


def build_pillars_model(cfg):
    """``detectron2.modeling.build_model`` plus naive sync BN when several processes train; with a
    ``MODEL.BACKEND`` other than "torch", the inference module of that back-end
    (:data:`INFERENCE_BACKEND_REGISTRY`).

    On CPU it also makes the process flush denormal floats to zero: x86 arithmetic on denormals is
    10-100x slower, and tiny activations (e.g. in eval mode before BN statistics settle) hit it.
    ``MODEL.DEVICE cuda`` on a machine without CUDA builds the model on the CPU, with a warning
    (:func:`~d2_pillars.engine.device.inference_device_config`; training refuses earlier).
    """
    cfg = inference_device_config(cfg)
    if torch.device(cfg.MODEL.DEVICE).type == "cpu":
        torch.set_flush_denormal(True)
    backend = cfg.MODEL.BACKEND
    if backend != "torch":
        if backend not in INFERENCE_BACKEND_REGISTRY:
            raise KeyError(
                f"MODEL.BACKEND {backend!r} is not registered (known: 'torch', "
                f"{', '.join(repr(k) for k, _ in INFERENCE_BACKEND_REGISTRY) or 'none'}); the "
                "'onnxruntime' back-end is registered by `import d2_pillars.deploy`"
            )
        return INFERENCE_BACKEND_REGISTRY.get(backend)(cfg)
    model = build_model(cfg)
    if comm.get_world_size() > 1 and cfg.MODEL.SYNC_BN_MULTI_PROCESS:
        model = convert_to_naive_sync_bn(model)
        logger.info(
            "Converted BatchNorm layers to naiveSyncBN for %d processes.", comm.get_world_size()
        )
    return model


def load_model_weights(cfg, model, *, resume=False, save_dir=""):
    """Load ``MODEL.WEIGHTS`` into a model of :func:`build_pillars_model` (``resume``: the last
    checkpoint of ``save_dir`` when there is one). A back-end other than "torch" runs an exported
    graph that carries its own weights: nothing is loaded; empty weights on torch are a warning."""
    if cfg.MODEL.BACKEND != "torch":
        return
    if not cfg.MODEL.WEIGHTS and not resume:
        logger.warning("MODEL.WEIGHTS is empty: predictions come from an untrained model")
        return
    PillarsCheckpointer(model, save_dir=save_dir).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)


def wrap_ddp(model):
    """DistributedDataParallel with several processes; CPU processes take no ``device_ids``."""
    if comm.get_world_size() == 1:
        return model
    device_ids = [comm.get_local_rank()] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def build_pillars_evaluator(cfg, dataset_name, output_folder=None):
    """The evaluator for the registered dataset's ``evaluator_type``: "nuscenes", "lyft" or
    "custom" (own data, :class:`~d2_pillars.evaluation.CustomEvaluator`)."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, cfg.TEST.EVAL_OUTPUT_SUBDIR, dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    common = dict(
        output_dir=output_folder,
        vis_num_samples=cfg.TEST.VIS_NUM_SAMPLES,
        vis_score_thresh=cfg.TEST.VIS_SCORE_THRESH,
    )
    if evaluator_type == "nuscenes":
        return NuScenesEvaluator(dataset_name, plot=cfg.TEST.NUSCENES_PLOTS, **common)
    if evaluator_type == "lyft":
        return LyftEvaluator(dataset_name, method=cfg.TEST.LYFT_MAP_METHOD, **common)
    if evaluator_type == "custom":
        return CustomEvaluator(dataset_name, **common)
    raise ValueError(
        f"Dataset '{dataset_name}' has evaluator_type {evaluator_type!r}; d2_pillars evaluates "
        "'nuscenes', 'lyft' and 'custom' datasets (register them with "
        "d2_pillars.data.register_nuscenes / register_lyft, or build an own-data config with "
        "`python tools/create_data.py custom --root ROOT`)."
    )


def add_gradient_clipping(cfg, optimizer_cls):
    """Gradient clipping from ``SOLVER.CLIP_GRADIENTS``.

    Adds ``CLIP_TYPE: "full_model"`` (the reference's: one L2 norm over all parameters, capped at
    ``CLIP_VALUE``), which detectron2 v0.6 lacks; "value" and "norm" (per parameter) are
    detectron2's own.
    """
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
        return maybe_add_gradient_clipping(cfg, optimizer_cls)
    max_norm, norm_type = clip.CLIP_VALUE, clip.NORM_TYPE

    class FullModelGradientClipping(optimizer_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = optimizer_cls.__name__ + "WithFullModelGradientClip"
    return FullModelGradientClipping


class PillarsTrainer(DefaultTrainer):
    """``DefaultTrainer`` for PointPillars.

    Differences from detectron2's: the point-cloud train/test loaders; the nuScenes / Lyft
    evaluators; AdamW (``SOLVER.OPTIMIZER``) with ``SOLVER.CLIP_GRADIENTS``; AMP through
    ``torch.amp`` (CUDA float16 with loss scaling, CPU bfloat16); DDP that also runs on CPU
    processes (gloo); naive sync BN only with several processes; checkpoints written atomically
    and stamped with the box-convention version (:class:`PillarsCheckpointer`).
    """

    def __init__(self, cfg):
        check_training_device(cfg)
        TrainerBase.__init__(self)
        if not logging.getLogger("d2_pillars").isEnabledFor(logging.INFO):
            setup_logger(name="d2_pillars", distributed_rank=comm.get_rank())
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_ddp(model)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = PillarsCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # detectron2 v0.6's DefaultTrainer checkpoints only the iteration and hook states: the
    # optimizer (AdamW moments, current lr) and AMP's grad scaler are lost on --resume. Later
    # detectron2 versions fixed this the same way.
    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" not in state_dict:
            raise KeyError(
                "checkpoint has no optimizer state ('_trainer'): it was not written by "
                "PillarsTrainer, so it cannot be resumed; start a new run with MODEL.WEIGHTS "
                "pointing to it instead of --resume"
            )
        self._trainer.load_state_dict(state_dict["_trainer"])

    def build_hooks(self):
        ret = super().build_hooks()
        for hook in ret:
            if isinstance(hook, hooks.PeriodicWriter):
                hook._period = self.cfg.SOLVER.LOG_PERIOD
        return ret

    @classmethod
    def build_model(cls, cfg):
        model = build_pillars_model(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        if cfg.SOLVER.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        if cfg.SOLVER.OPTIMIZER != "AdamW":
            raise ValueError(
                f"SOLVER.OPTIMIZER must be 'AdamW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}"
            )
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        return add_gradient_clipping(cfg, torch.optim.AdamW)(
            params,
            lr=cfg.SOLVER.BASE_LR,
            betas=tuple(cfg.SOLVER.BETAS),
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        return build_pillars_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_pillars_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_pillars_evaluator(cfg, dataset_name, output_folder)
