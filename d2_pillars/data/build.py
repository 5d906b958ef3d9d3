"""Train / test data loaders: detectron2's loader builders with the point-cloud mapper.

Batches are lists of mapper outputs (``trivial_batch_collator``): the model concatenates voxels
itself. No aspect-ratio grouping (there are no images); training uses detectron2's infinite
``TrainingSampler``, testing its ``InferenceSampler`` (batch 1, as detectron2 v0.6). For a CUDA
``MODEL.DEVICE`` the batches come in pinned (page-locked) memory, so that the model's
``non_blocking`` copies overlap the device's work (a padded 10-sweep nuScenes sample is ~16 MB).
"""

import itertools
import logging
import torch

from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.build import trivial_batch_collator
from detectron2.data.samplers import InferenceSampler, TrainingSampler

from .mapper import PointCloudMapper

__all__ = [
    "build_pillars_train_loader",
    "build_pillars_test_loader",
    "get_pillars_dataset_dicts",
    "pin_memory_for",
]

logger = logging.getLogger(__name__)


def get_pillars_dataset_dicts(names):
    """Concatenated dataset dicts of the registered ``names`` (str or list of str)."""
    if isinstance(names, str):
        names = [names]
    if len(names) == 0:
        raise ValueError("No dataset names given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    dicts = [DatasetCatalog.get(name) for name in names]
    for name, d in zip(names, dicts):
        if len(d) == 0:
            raise ValueError(f"Dataset '{name}' is empty")
    return list(itertools.chain.from_iterable(dicts))


def pin_memory_for(cfg) -> bool:
    """Whether the loaders of ``cfg`` pin their batches: ``MODEL.DEVICE`` is CUDA and CUDA is
    available (pinning needs it; a CPU model gains nothing)."""
    return torch.device(cfg.MODEL.DEVICE).type == "cuda" and torch.cuda.is_available()


def _pinned(loader, cfg):
    # detectron2's builders take no pin_memory argument; DataLoader reads the attribute when it
    # creates an iterator (it is not one of the attributes frozen after __init__).
    if pin_memory_for(cfg):
        loader.pin_memory = True
    return loader


def build_pillars_train_loader(cfg, mapper=None):
    """Infinite training loader over ``cfg.DATASETS.TRAIN``: lists of
    ``SOLVER.IMS_PER_BATCH / world_size`` mapped samples, ``DATALOADER.NUM_WORKERS`` workers."""
    dataset = get_pillars_dataset_dicts(cfg.DATASETS.TRAIN)
    if mapper is None:
        mapper = PointCloudMapper(cfg, is_train=True)
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logger.warning(
            "DATALOADER.SAMPLER_TRAIN=%s is ignored; point-cloud training uses TrainingSampler",
            cfg.DATALOADER.SAMPLER_TRAIN,
        )
    loader = build_detection_train_loader(
        dataset,
        mapper=mapper,
        sampler=TrainingSampler(len(dataset), seed=cfg.SEED if cfg.SEED >= 0 else None),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
    )
    return _pinned(loader, cfg)


def build_pillars_test_loader(cfg, dataset_name, mapper=None):
    """Inference loader over one registered split, batch 1, every sample once (in order on one
    process; sharded across processes by ``InferenceSampler``)."""
    dataset = get_pillars_dataset_dicts(dataset_name)
    if mapper is None:
        mapper = PointCloudMapper(cfg, is_train=False)
    loader = build_detection_test_loader(
        dataset,
        mapper=mapper,
        sampler=InferenceSampler(len(dataset)),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
    )
    return _pinned(loader, cfg)
