"""Parity with mmdetection3d 1.4.0: rebuild a fixture's reference checkpoint, convert it with
``tools/convert_mmdet3d.py``, run ``PillarsPredictor.predict_points`` and measure every difference
to the golden outputs of ``tests/fixtures/parity`` (copied from ``shared/parity``; see its
``repack.py``).

``measure_parity`` is shared by the tests and by ``python tests/checkpoint/mmdet3d_parity.py``,
which prints the table of largest differences that the README's model zoo quotes;
``--inference-dtype bfloat16`` (or float16) measures the same under ``MODEL.INFERENCE_DTYPE``
(the network under CPU autocast, the figures docs/cuda.md quotes).
"""

import argparse
import contextlib
import json
import math
import numpy as np
import os
import sys
import zlib
import torch

from detectron2.structures import Instances

from d2_pillars.engine import PillarsPredictor, load_config
from d2_pillars.structures import LiDARBoxes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE_DIR = os.path.join(REPO, "tests", "fixtures", "parity")

#: fixture -> this project's config
FIXTURE_CONFIGS = {
    "nus_secfpn": "configs/nuscenes/pointpillars_secfpn.yaml",
    "nus_fpn": "configs/nuscenes/pointpillars_fpn.yaml",
    "nus_400mf_secfpn": "configs/nuscenes/pointpillars_regnetx_400mf_secfpn.yaml",
    "nus_400mf_fpn": "configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml",
    "nus_1.6gf_fpn": "configs/nuscenes/pointpillars_regnetx_1.6gf_fpn.yaml",
    "lyft_secfpn": "configs/lyft/pointpillars_secfpn.yaml",
    "lyft_fpn": "configs/lyft/pointpillars_fpn.yaml",
    "lyft_400mf_secfpn": "configs/lyft/pointpillars_regnetx_400mf_secfpn.yaml",
    "lyft_400mf_fpn": "configs/lyft/pointpillars_regnetx_400mf_fpn.yaml",
}
#: 0.x ("legacy") fixtures: the same weights as the named fixture, read as 0.x checkpoints
LEGACY_FIXTURES = {
    "nus_400mf_fpn_legacy": "nus_400mf_fpn",
    "lyft_400mf_secfpn_legacy": "lyft_400mf_secfpn",
}


def load_fixture(name):
    """``(arrays, meta, points)`` of a fixture; legacy fixtures get their base's state dict list
    and ground truth."""
    base = LEGACY_FIXTURES.get(name, name)
    arrays = dict(np.load(os.path.join(FIXTURE_DIR, name + ".npz")))
    with open(os.path.join(FIXTURE_DIR, name + ".json")) as f:
        meta = json.load(f)
    if base != name:
        with open(os.path.join(FIXTURE_DIR, base + ".json")) as f:
            base_meta = json.load(f)
        meta["state_dict"] = base_meta["state_dict"]
        meta["state_dict_checks"] = base_meta["state_dict_checks"]
    family = name.split("_")[0]
    points = np.load(os.path.join(FIXTURE_DIR, f"points_{family}.npz"))["points"]
    return arrays, meta, points


def rule_tensor(key, shape, seed):
    """One entry of the reference state dict, by the deterministic rule of shared/parity."""
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
    if key.endswith("running_var"):
        value = rng.uniform(0.5, 2.0, shape)
    elif key.endswith("running_mean"):
        value = rng.normal(0.0, 0.2, shape)
    elif len(shape) == 1 and key.endswith("weight"):
        value = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("bias"):
        value = rng.normal(-2.0, 0.5, shape) if "conv_cls" in key else rng.normal(0.0, 0.1, shape)
    else:
        value = rng.normal(0.0, 1.0, shape) / math.sqrt(math.prod(shape[1:]))
        if "conv_reg" in key or "conv_dir_cls" in key:
            value = value * 0.1
        elif "conv_cls" in key:
            value = value * 0.3
    return torch.from_numpy(np.asarray(value, dtype=np.float32))


def reference_state_dict(meta):
    return {k: rule_tensor(k, shape, meta["seed"]) for k, shape, _ in meta["state_dict"]}


def write_reference_checkpoint(meta, path, mmdet3d_version):
    """Save the rebuilt state dict as mmdetection3d writes checkpoints."""
    torch.save(
        {"meta": {"mmdet3d_version": mmdet3d_version}, "state_dict": reference_state_dict(meta)},
        path,
    )


def _sorted_voxels(inputs):
    coords = inputs["voxel_coords"].long().numpy()
    order = np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0]))
    return order, coords[order], inputs["voxel_num_points"].numpy()[order]


def _rel(diff, scale):
    return float(diff) / max(float(scale), 1e-12)


def _legacy_outputs_to_current(cls, reg, dirs, num_sizes):
    """The 0.x raw head outputs as the package's head outputs (rotations {0, 1.57}): anchor
    (s, r) takes 0.x anchor (s, 1 - r); residuals (w, l) -> (l, w); yaw residual t -> -t - 1.57 -
    pi/2. Written out independently of the converter, for the test."""
    out = []
    for t, k in (
        (cls, cls.shape[1] // (2 * num_sizes)),
        (reg, reg.shape[1] // (2 * num_sizes)),
        (dirs, 2),
    ):
        t = t.reshape(t.shape[0], num_sizes, 2, k)[:, :, ::-1].copy()
        out.append(t)
    cls, reg, dirs = out
    reg[..., [3, 4]] = reg[..., [4, 3]]
    reg[..., 6] = -reg[..., 6] - 1.57 - math.pi / 2
    return [t.reshape(t.shape[0], -1) for t in (cls, reg, dirs)]


def match_predictions(pred_boxes, pred_scores, pred_labels, ref_boxes, ref_scores, ref_labels):
    """One-to-one matching by label and nearest centre; returns the largest differences."""
    if len(pred_boxes) != len(ref_boxes):
        return {"count": (len(pred_boxes), len(ref_boxes))}
    used = np.zeros(len(pred_boxes), bool)
    worst = {"centre": 0.0, "size": 0.0, "yaw": 0.0, "velocity": 0.0, "score": 0.0, "unmatched": 0}
    for i in range(len(ref_boxes)):
        cand = np.flatnonzero((pred_labels == ref_labels[i]) & ~used)
        if cand.size == 0:
            worst["unmatched"] += 1
            continue
        d = np.linalg.norm(pred_boxes[cand, :3] - ref_boxes[i, :3], axis=1)
        j = cand[np.argmin(d)]
        used[j] = True
        worst["centre"] = max(worst["centre"], float(d.min()))
        worst["size"] = max(
            worst["size"], float(np.abs(pred_boxes[j, 3:6] - ref_boxes[i, 3:6]).max())
        )
        dyaw = (pred_boxes[j, 6] - ref_boxes[i, 6] + math.pi) % (2 * math.pi) - math.pi
        worst["yaw"] = max(worst["yaw"], abs(float(dyaw)))
        if ref_boxes.shape[1] > 7:
            dv = np.abs(pred_boxes[j, 7:9] - ref_boxes[i, 7:9]).max()
            worst["velocity"] = max(worst["velocity"], float(dv))
        worst["score"] = max(worst["score"], abs(float(pred_scores[j] - ref_scores[i])))
    return worst


def build_predictor(name, weights, nms_thresh=None, inference_dtype="float32"):
    base = LEGACY_FIXTURES.get(name, name)
    opts = [
        "MODEL.WEIGHTS",
        weights,
        "MODEL.DEVICE",
        "cpu",
        "MODEL.INFERENCE_DTYPE",
        inference_dtype,
    ]
    if nms_thresh is not None:
        opts += ["MODEL.ANCHOR3D_HEAD.NMS_THRESH_TEST", str(nms_thresh)]
    cfg = load_config(os.path.join(REPO, FIXTURE_CONFIGS[base]), opts)
    return PillarsPredictor(cfg)


def _convert(src, dst, config, convention):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import convert_mmdet3d
    finally:
        sys.path.pop(0)
    return convert_mmdet3d.main(
        [src, dst, "--config-file", config, "--source-convention", convention]
    )


@torch.no_grad()
def measure_parity(name, workdir, *, losses=True, inference_dtype="float32"):
    """
    Convert the fixture's reference checkpoint and measure every output against the golden one.

    With ``inference_dtype`` other than float32 the predictor runs with that
    ``MODEL.INFERENCE_DTYPE`` and the pillar features and head outputs are computed under the
    same CPU autocast (the losses stay float32, as in training).

    Returns:
        dict: voxel checks, max abs / relative differences of the pillar features and the head
        outputs, the prediction matching summary, and (non-legacy, with ``losses``) the relative
        loss differences.
    """
    arrays, meta, points = load_fixture(name)
    legacy = name in LEGACY_FIXTURES
    base = LEGACY_FIXTURES.get(name, name)
    src = os.path.join(workdir, f"{name}_mmdet3d.pth")
    dst = os.path.join(workdir, f"{name}_d2.pth")
    # the real zoo's 0.x checkpoints say 0.1.0; let "auto" decide from it
    write_reference_checkpoint(meta, src, "0.1.0" if legacy else meta["mmdet3d_version"])
    rc = _convert(src, dst, os.path.join(REPO, FIXTURE_CONFIGS[base]), "auto")
    assert rc == 0, f"convert_mmdet3d failed for {name}"
    predictor = build_predictor(
        name, dst, nms_thresh=1.0 if legacy else None, inference_dtype=inference_dtype
    )
    dtype = getattr(torch, inference_dtype)
    autocast = (
        torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    )
    model = predictor.model
    result = {}

    inputs = predictor.mapper.prepare_points(points)
    order, coords, num_points = _sorted_voxels(inputs)
    result["voxels_equal"] = bool(
        np.array_equal(coords, arrays["voxel_coords_zyx"])
        and np.array_equal(num_points, arrays["voxel_num_points"])
    )
    result["num_points_in"] = int(inputs["voxel_num_points"].sum())

    voxels, num, vcoords = model.batch_voxels([inputs])
    with autocast:
        features = model.pillar_encoder(voxels, num, vcoords)
        pseudo = model.scatter(features, vcoords, 1)
        neck = model.backbone(pseudo)
    features = features.float()
    first = features[torch.from_numpy(order[:1024])].numpy()
    ref_first = arrays["vfe_first1024"]
    result["vfe_max_abs"] = float(np.abs(first - ref_first).max())
    result["vfe_rel"] = _rel(result["vfe_max_abs"], np.abs(ref_first).max())
    total = features.double().sum(0).numpy()
    result["vfe_sum_rel"] = _rel(
        np.abs(total - arrays["vfe_channel_sum"]).max(), np.abs(arrays["vfe_channel_sum"]).max()
    )

    levels = [neck[f].float() for f in model.head_in_features]
    head_rel, neck_rel = 0.0, 0.0
    num_sizes = len(model.head.anchor_generator.sizes)
    for i, x in enumerate(levels):
        if not np.array_equal(np.array(x.shape), arrays[f"neck{i}_shape"]):
            raise AssertionError(f"level {i}: shape {tuple(x.shape)} != {arrays[f'neck{i}_shape']}")
        stats = np.array([x.mean().item(), x.std().item(), x.abs().max().item()])
        neck_rel = max(
            neck_rel,
            _rel(
                np.abs(stats - arrays[f"neck{i}_stats"]).max(),
                np.abs(arrays[f"neck{i}_stats"]).max(),
            ),
        )
        yx = torch.from_numpy(arrays[f"head{i}_locations_yx"].astype(np.int64))
        with autocast:
            ours = [
                conv(x)[0][:, yx[:, 0], yx[:, 1]].t().float().numpy()
                for conv in (model.head.conv_cls, model.head.conv_reg, model.head.conv_dir)
            ]
        refs = [arrays[f"head{i}_{k}"] for k in ("cls", "reg", "dir")]
        if legacy:
            refs = _legacy_outputs_to_current(*refs, num_sizes)
        for o, r in zip(ours, refs):
            head_rel = max(head_rel, _rel(np.abs(o - r).max(), np.abs(r).max()))
    result["neck_stats_rel"] = neck_rel
    result["head_rel"] = head_rel

    inst: Instances = predictor.predict_points(points)["instances"]
    boxes = inst.pred_boxes3d.tensor.numpy().astype(np.float64)
    ref_boxes = arrays["pred_boxes_current_convention" if legacy else "pred_boxes"].astype(
        np.float64
    )
    ref_boxes = ref_boxes.copy()
    ref_boxes[:, 2] += ref_boxes[:, 5] / 2  # bottom z -> centre z
    result["predictions"] = match_predictions(
        boxes,
        inst.scores.numpy(),
        inst.pred_classes.numpy(),
        ref_boxes,
        arrays["pred_scores"],
        arrays["pred_labels"],
    )

    if losses and not legacy:
        gt = arrays["gt_boxes"].astype(np.float32).copy()
        gt[:, 2] += gt[:, 5] / 2
        gt_boxes = LiDARBoxes(torch.from_numpy(gt))
        gt_classes = torch.from_numpy(arrays["gt_labels"].astype(np.int64))
        predictions = model.head(levels)
        grid_sizes = [tuple(x.shape[-2:]) for x in levels]
        ours = model.head.losses(grid_sizes, *predictions, [gt_boxes], [gt_classes])
        ref = meta["losses"]
        result["losses_rel"] = {
            ours_key: _rel(abs(float(ours[ours_key]) - ref[ref_key]), abs(ref[ref_key]))
            for ours_key, ref_key in (
                ("loss_cls", "loss_cls"),
                ("loss_box_reg", "loss_bbox"),
                ("loss_dir", "loss_dir"),
            )
        }
    return result


if __name__ == "__main__":
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="fixtures (default: all)")
    parser.add_argument(
        "--inference-dtype", default="float32", choices=["float32", "float16", "bfloat16"]
    )
    a = parser.parse_args()
    names = a.names or list(FIXTURE_CONFIGS) + list(LEGACY_FIXTURES)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            r = measure_parity(n, tmp, inference_dtype=a.inference_dtype)
            print(n, json.dumps(r), flush=True)
