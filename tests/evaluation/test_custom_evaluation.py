"""CustomEvaluator (own data) end to end: a tiny in-memory split registered with the own-data
contract, a small real torch module producing ``Instances``, detectron2's
``inference_on_dataset``, the JSON file and the returned metrics."""

import json
import logging
import math
import numpy as np
import os
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.structures import Instances

from d2_pillars.evaluation import CUSTOM_METRICS_FILE, CustomEvaluator, evaluate_results_file
from d2_pillars.structures import LiDARBoxes

CLASSES = ["Car", "Pedestrian", "Cyclist", "Truck"]  # no Truck in the ground truth
DATASET = "own_eval_test_tiny"
DATASET_THRESHOLDS = "own_eval_test_tiny_thresholds"
AP_KEYS = ("AP_3D", "AP_BEV", "AP_3D_loose", "AP_BEV_loose")
CLASS_KEYS = ["iou", "AP_3D", "AP_BEV", "iou_loose", "AP_3D_loose", "AP_BEV_loose", "num_gt"]
BIN_KEYS = ["AP_3D", "AP_BEV", "AP_3D_loose", "AP_BEV_loose", "num_gt"]


def _box(x, y, l, w, h, yaw=0.0, z=-0.5):
    return [x, y, z, l, w, h, yaw]


def _record(token, boxes, names, has_labels=True):
    labels = [CLASSES.index(n) if n in CLASSES else -1 for n in names]
    return {
        "token": token,
        "sample_token": token,
        "lidar_path": f"/nonexistent/{token}.bin",
        "gt_boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 7),
        "gt_names": list(names),
        "gt_labels": np.asarray(labels, dtype=np.int64),
        "has_labels": has_labels,
    }


def tiny_records():
    """Three labelled frames (cars at 10, 35 and 60 m, a pedestrian, a cyclist, a 'Van' that is no
    class) and one unlabelled frame, as the own-data readers register them."""
    return [
        _record(
            "000",
            [_box(10, 0, 4, 2, 1.5), _box(5, 3, 0.8, 0.8, 1.7), _box(20, -5, 5, 2, 2)],
            ["Car", "Pedestrian", "Van"],
        ),
        _record(
            "001",
            [_box(35, 4, 4.5, 1.9, 1.6), _box(60, -2, 4, 2, 1.5), _box(12, -6, 1.8, 0.6, 1.7, 2.0)],
            ["Car", "Car", "Cyclist"],
        ),
        _record("002", [_box(-8, 2, 4, 2, 1.5, math.pi / 2)], ["Car"]),
        _record("003", np.zeros((0, 7)), [], has_labels=False),
    ]


def _register(name, **metadata):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, tiny_records)
        MetadataCatalog.get(name).set(evaluator_type="custom", thing_classes=CLASSES, **metadata)


@pytest.fixture(scope="module", autouse=True)
def tiny_dataset():
    _register(DATASET)
    _register(DATASET_THRESHOLDS, class_iou_thresholds={"Car": [0.55, 0.3]})


class EchoModel(torch.nn.Module):
    """A small real model for the evaluation loop: it "detects" each input's labelled boxes
    (those of a class), moved by its learnable ``offset`` (x, y, z in m), scored 0.9, 0.8, ...;
    in unlabelled frames (and in labelled ones with ``ghosts_everywhere``) it also reports a
    confident car 30 m from anything (a false positive wherever it is scored). With
    ``drop_all`` it finds nothing: (0, 7) boxes."""

    def __init__(self, offset=(0.0, 0.0, 0.0), ghosts_everywhere=False, drop_all=False):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(offset, dtype=torch.float32))
        self.ghosts_everywhere = ghosts_everywhere
        self.drop_all = drop_all

    def forward(self, batched_inputs):
        outputs = []
        for inp in batched_inputs:
            boxes = torch.as_tensor(inp["gt_boxes"], dtype=torch.float32).reshape(-1, 7)
            labels = torch.as_tensor(inp["gt_labels"], dtype=torch.int64)
            keep = (labels >= 0) & (not self.drop_all)
            boxes, labels = boxes[keep], labels[keep]
            shift = torch.cat([self.offset, self.offset.new_zeros(4)])
            boxes = boxes + shift
            scores = 0.9 - 0.1 * torch.arange(len(boxes), dtype=torch.float32)
            if (self.ghosts_everywhere or not inp["has_labels"]) and not self.drop_all:
                boxes = torch.cat([boxes, torch.tensor([_box(-30, -30, 4, 2, 1.5)])])
                scores = torch.cat([scores, torch.tensor([0.95])])
                labels = torch.cat([labels, torch.tensor([0])])
            outputs.append(
                {
                    "instances": Instances(
                        (1, 1),
                        pred_boxes3d=LiDARBoxes(boxes),
                        scores=scores,
                        pred_classes=labels,
                    )
                }
            )
        return outputs


def loader(name=DATASET):
    """Batches of one record (the evaluator reads only ``sample_token`` of the inputs)."""
    return [[d] for d in DatasetCatalog.get(name)]


def run(model, output_dir=None, name=DATASET, **kwargs):
    evaluator = CustomEvaluator(name, output_dir, **kwargs)
    return inference_on_dataset(model, loader(name), evaluator)


def test_ground_truth_as_predictions(tmp_path):
    results = run(EchoModel(), str(tmp_path))
    assert list(results) == ["custom"]
    res = results["custom"]
    for key in ("mAP_3D", "mAP_BEV", "mAP_3D_loose", "mAP_BEV_loose"):
        assert res[key] == pytest.approx(1.0), key
    for name in ("Car", "Pedestrian", "Cyclist"):
        for key in AP_KEYS:
            assert res[f"{name}/{key}"] == pytest.approx(1.0)
    assert all(math.isnan(res[f"Truck/{k}"]) for k in AP_KEYS)
    print_csv_format(results)  # detectron2's copy-paste lines accept it

    with open(tmp_path / CUSTOM_METRICS_FILE) as f:
        metrics = json.load(f)
    assert list(metrics) == ["classes", "mAP_3D", "mAP_BEV", "recall_positions"]
    assert metrics["recall_positions"] == 40
    assert list(metrics["classes"]) == CLASSES
    car = metrics["classes"]["Car"]
    assert list(car) == CLASS_KEYS + ["by_distance"]
    assert (car["iou"], car["iou_loose"], car["num_gt"]) == (0.7, 0.5, 4)
    assert list(car["by_distance"]) == ["0-30", "30-50", "50+"]
    assert [car["by_distance"][b]["num_gt"] for b in ("0-30", "30-50", "50+")] == [2, 1, 1]
    for b in car["by_distance"].values():
        assert list(b) == BIN_KEYS
        assert all(b[k] == pytest.approx(1.0) for k in AP_KEYS)
    ped = metrics["classes"]["Pedestrian"]
    assert (ped["iou"], ped["iou_loose"], ped["num_gt"]) == (0.5, 0.25, 1)
    assert ped["by_distance"]["50+"] == dict.fromkeys(AP_KEYS, None) | {"num_gt": 0}
    # No Truck ground truth: null APs (the mAP is over the three other classes).
    truck = metrics["classes"]["Truck"]
    assert truck["num_gt"] == 0 and all(truck[k] is None for k in AP_KEYS)
    assert metrics["mAP_3D"] == pytest.approx(1.0) and metrics["mAP_BEV"] == pytest.approx(1.0)


def test_offset_between_thresholds_and_override_from_metadata():
    # Every box 1 m along +x. BEV IoU (on paper): the 4 m cars at 10 and 60 m (yaw 0) 3/5 = 0.6,
    # the 4.5 m car at 35 m 3.5/5.5 = 0.64, the car at -8 m (yaw pi/2: moved across its 2 m
    # width) 4/12 = 1/3; the pedestrian and the cyclist are lost.
    res = run(EchoModel(offset=(1.0, 0.0, 0.0)))["custom"]
    assert res["Car/AP_BEV"] == 0.0 and res["Car/AP_3D"] == 0.0  # nothing at 0.7
    assert res["Pedestrian/AP_BEV_loose"] == 0.0 and res["mAP_BEV"] == 0.0
    # At 0.5, car scores over the frames: 0.9 (10 m, TP), 0.9 (35 m, TP), 0.9 (-8 m, FP),
    # 0.8 (60 m, TP) of 4 cars: (r 1/2, p 2/3) at 0.9, (r 3/4, p 3/4) at 0.8 -> the envelope is
    # 3/4 up to recall 3/4 (30 of the 40 positions) -> AP = 30/40 * 3/4.
    assert res["Car/AP_BEV_loose"] == pytest.approx(30 / 40 * 3 / 4)
    assert res["Car/AP_3D_loose"] == pytest.approx(30 / 40 * 3 / 4)  # same z, same heights
    # The same shift under the Car thresholds (0.55, 0.3) of the dataset's metadata: the strict
    # AP is the old loose one, and at 0.3 every car counts.
    res = run(EchoModel(offset=(1.0, 0.0, 0.0)), name=DATASET_THRESHOLDS)["custom"]
    assert res["Car/AP_BEV"] == pytest.approx(30 / 40 * 3 / 4)
    assert res["Car/AP_BEV_loose"] == pytest.approx(1.0)
    assert CustomEvaluator(DATASET_THRESHOLDS).iou_thresholds["Car"] == (0.55, 0.3)


def test_height_error_lowers_3d_only():
    # 0.4 m up: BEV unchanged; 3D IoU 1.1 / 1.9 = 0.58 for the 1.5 m cars and 1.2 / 2.0 = 0.6
    # for the 1.6 m one: below 0.7, above the loose 0.5.
    res = run(EchoModel(offset=(0.0, 0.0, 0.4)))["custom"]
    assert res["Car/AP_BEV"] == pytest.approx(1.0)
    assert res["Car/AP_3D"] == 0.0
    assert res["Car/AP_3D_loose"] == pytest.approx(1.0)


def test_unlabelled_frames_are_not_scored():
    # EchoModel reports a confident ghost car in the unlabelled frame only: no effect.
    res = run(EchoModel())["custom"]
    assert res["Car/AP_3D"] == pytest.approx(1.0)
    # The same ghost in every labelled frame is a false positive ranked first in each frame.
    res = run(EchoModel(ghosts_everywhere=True))["custom"]
    assert res["Car/AP_3D"] < 1.0


def test_frames_without_predictions():
    # A model that finds nothing: (0, 7) boxes in every frame -> AP 0 where there is ground truth.
    res = run(EchoModel(offset=(0.0, 0.0, 0.0), drop_all=True))["custom"]
    assert res["Car/AP_3D"] == 0.0 and res["mAP_BEV"] == 0.0
    assert math.isnan(res["Truck/AP_BEV"])


def test_atomic_json_write(tmp_path, monkeypatch):
    import d2_pillars.evaluation.results_io as results_io

    path = tmp_path / CUSTOM_METRICS_FILE
    path.write_text('{"previous": true}')

    def broken_dump(obj, f):
        f.write('{"classes": {"Car"')
        raise OSError("disk full")

    monkeypatch.setattr(results_io.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        run(EchoModel(), str(tmp_path))
    assert json.loads(path.read_text()) == {"previous": True}
    assert os.listdir(tmp_path) == [CUSTOM_METRICS_FILE]  # no temporary file left


def test_tables_are_logged(caplog):
    with caplog.at_level(logging.INFO, logger="d2_pillars.evaluation.custom_evaluation"):
        run(EchoModel())
    text = caplog.text
    assert "mAP_BEV_loose" in text and "Per-class AP" in text and "AP by distance" in text
    assert "| Car " in text and "| 30-50 " in text
    assert "| Truck      | 0     | 0.7000 | -" in text  # no ground truth: no AP


def test_frames_must_match_the_split():
    evaluator = CustomEvaluator(DATASET)
    model = EchoModel()
    records = DatasetCatalog.get(DATASET)
    evaluator.reset()
    for d in records[:2] + records[3:]:
        evaluator.process([d], model([d]))
    with pytest.raises(
        ValueError, match=r"1 labelled frames were never processed \(e.g. \['002'\]"
    ):
        evaluator.evaluate()
    evaluator.reset()
    for d in records + [dict(records[0], sample_token="999", token="999")]:
        evaluator.process([d], model([d]))
    with pytest.raises(ValueError, match=r"not in the split \(e.g. \['999'\]"):
        evaluator.evaluate()


def test_frame_seen_twice_keeps_the_first():
    # A padded sampler repeats frames: the second copy (here: shifted away) is ignored.
    evaluator = CustomEvaluator(DATASET)
    good, shifted = EchoModel(), EchoModel(offset=(5.0, 0.0, 0.0))
    records = DatasetCatalog.get(DATASET)
    evaluator.reset()
    for d in records:
        evaluator.process([d], good([d]))
    evaluator.process([records[0]], shifted([records[0]]))
    assert evaluator.evaluate()["custom"]["mAP_3D"] == pytest.approx(1.0)


def test_inputs_with_token_only():
    # An input without 'sample_token' is matched by 'token' (the own-data record's frame id).
    evaluator = CustomEvaluator(DATASET)
    model = EchoModel()
    for d in DatasetCatalog.get(DATASET):
        inp = {k: v for k, v in d.items() if k != "sample_token"}
        evaluator.process([inp], model([inp]))
    assert evaluator.evaluate()["custom"]["mAP_BEV"] == pytest.approx(1.0)


def test_dataset_checks():
    name = "own_eval_test_not_custom"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, tiny_records)
        MetadataCatalog.get(name).set(evaluator_type="nuscenes", thing_classes=CLASSES)
    with pytest.raises(ValueError, match="evaluator_type 'nuscenes'"):
        CustomEvaluator(name)
    name = "own_eval_test_bad_thresholds"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, tiny_records)
        MetadataCatalog.get(name).set(
            evaluator_type="custom", thing_classes=CLASSES, class_iou_thresholds={"Car": [0.5, 1.5]}
        )
    with pytest.raises(ValueError, match=f"Dataset '{name}'.*two IoUs in \\(0, 1\\]"):
        CustomEvaluator(name)


def test_trainer_builds_it_and_results_files_are_refused(tmp_path):
    from detectron2.config import get_cfg

    from d2_pillars.config import add_pillars_config
    from d2_pillars.engine import build_pillars_evaluator

    cfg = get_cfg()
    add_pillars_config(cfg)
    cfg.OUTPUT_DIR, cfg.DATASETS.TEST = str(tmp_path), (DATASET,)
    evaluator = build_pillars_evaluator(cfg, DATASET)
    assert isinstance(evaluator, CustomEvaluator)
    inference_on_dataset(EchoModel(), loader(), evaluator)
    assert os.path.isfile(tmp_path / "inference" / DATASET / CUSTOM_METRICS_FILE)
    with pytest.raises(ValueError, match="own-data split.*cannot be scored"):
        evaluate_results_file(cfg, str(tmp_path / "results.json"))


def test_predictions_of_every_rank_are_scored_on_the_main_one(monkeypatch):
    """Two ranks each process every other frame; detectron2's ``comm.gather`` (replaced here by
    what it returns in a 2-process run: one payload per rank) brings both to rank 0, which
    scores them all (a frame missing there would raise 'never processed'). A real 2-process
    gloo run of the same path takes ~30 s here; the trainer's gloo test covers the launch."""
    import d2_pillars.evaluation.custom_evaluation as module

    model = EchoModel()
    ranks = [CustomEvaluator(DATASET), CustomEvaluator(DATASET)]
    for i, d in enumerate(DatasetCatalog.get(DATASET)):
        ranks[i % 2].process([d], model([d]))
    payloads = [(e._predictions, e._vis_predictions) for e in ranks]
    monkeypatch.setattr(module.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(module.comm, "synchronize", lambda: None)
    monkeypatch.setattr(module.comm, "gather", lambda data, dst=0: payloads)
    monkeypatch.setattr(module.comm, "is_main_process", lambda: True)
    res = ranks[0].evaluate()["custom"]
    assert res["mAP_3D"] == pytest.approx(1.0) and res["Car/AP_BEV_loose"] == pytest.approx(1.0)
    # Without gathering (distributed=False) rank 0 alone misses the frames of rank 1.
    alone = CustomEvaluator(DATASET, distributed=False)
    alone._predictions = ranks[0]._predictions
    with pytest.raises(ValueError, match="never processed"):
        alone.evaluate()
    # The other ranks return {} (detectron2's convention).
    monkeypatch.setattr(module.comm, "is_main_process", lambda: False)
    monkeypatch.setattr(module.comm, "gather", lambda data, dst=0: [])
    assert ranks[1].evaluate() == {}


def test_example_images(tmp_path):
    """With vis_num_samples the worst and best frames are drawn next to the metrics (records
    with real point files: float32 x y z intensity time_lag)."""
    rng = np.random.default_rng(0)
    records = []
    for r in tiny_records():
        path = tmp_path / f"{r['token']}.bin"
        rng.uniform(-40, 40, (200, 5)).astype(np.float32).tofile(path)
        records.append(dict(r, lidar_path=str(path), timestamp=0.0, sweeps=[]))
    name = "own_eval_test_tiny_with_points"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(evaluator_type="custom", thing_classes=CLASSES)
    try:
        out = tmp_path / "eval"
        run(EchoModel(offset=(0.3, 0.0, 0.0)), str(out), name=name, vis_num_samples=1)
        images = sorted(os.listdir(out / "vis"))
        assert len(images) == 2 and all(i.endswith(".png") for i in images)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
