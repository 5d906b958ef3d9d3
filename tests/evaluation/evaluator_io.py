"""What the evaluator tests feed an evaluator, and one evaluation pass (imported by the test
modules of this folder, as ``tests/modeling/pillars_scenes.py`` is by theirs)."""

import torch

from detectron2.structures import Instances

from d2_pillars.structures import LiDARBoxes

#: The fields of a dataset dict that an evaluator's ``process`` reads from its inputs.
EVALUATOR_INPUT_KEYS = ("sample_token", "lidar2ego", "ego2global")


def prediction_instances(boxes, scores, labels) -> Instances:
    """A model's output ``Instances``: ``pred_boxes3d`` from (K, 7|9) boxes (keyframe LiDAR
    frame, package convention), ``scores`` (K,) float32, ``pred_classes`` (K,) int64."""
    return Instances(
        (1, 1),
        pred_boxes3d=LiDARBoxes(torch.as_tensor(boxes, dtype=torch.float32)),
        scores=torch.as_tensor(scores, dtype=torch.float32),
        pred_classes=torch.as_tensor(labels, dtype=torch.int64),
    )


def evaluator_input(record: dict) -> dict:
    """The model input an evaluator reads, from a dataset dict (4x4 poses, sample token)."""
    return {k: record[k] for k in EVALUATOR_INPUT_KEYS}


def run_evaluator(evaluator, pairs):
    """``evaluator.evaluate()`` after a reset and one ``process`` call per ``(input, Instances)``
    pair (batches of one)."""
    evaluator.reset()
    for inp, inst in pairs:
        evaluator.process([inp], [{"instances": inst}])
    return evaluator.evaluate()
