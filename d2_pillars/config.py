# -*- coding: utf-8 -*-
"""Every config key d2_pillars adds to detectron2's ``get_cfg()``, with its default.

Call :func:`add_pillars_config` after ``get_cfg()`` and before ``merge_from_file``. Defaults are
those of the nuScenes RegNetX-400MF + FPN reference model unless a comment says otherwise; box
numbers are in the package convention (``d2_pillars.structures``: centre z, (l, w, h), yaw CCW
from +x).
"""
from detectron2.config import CfgNode as CN

from .class_names import NUSCENES_CLASSES

__all__ = ["add_pillars_config"]


def add_pillars_config(cfg):
    """Add the d2_pillars keys to a detectron2 config (in place)."""
    _C = cfg

    # ---------------------------------------------------------------------------------------- #
    # Input: point loading, sweeps, augmentation, voxelization
    # ---------------------------------------------------------------------------------------- #
    # Values stored per point in the .bin files (nuScenes/Lyft: x, y, z, intensity, ring).
    _C.INPUT.LOAD_DIM = 5
    # Columns fed to the network, by name, from: x, y, z, intensity, ring, time_lag.
    # The reference drops intensity (invalid in Lyft): x, y, z, time_lag.
    _C.INPUT.POINT_FEATURES = ["x", "y", "z", "time_lag"]
    # Previous sweeps merged into each keyframe (nuScenes: non-key sweeps; Lyft: keyframes).
    _C.INPUT.NUM_SWEEPS = 10
    # With more sweeps in the info than NUM_SWEEPS: pick randomly in training (reference), else
    # the nearest ones.
    _C.INPUT.RANDOM_SWEEPS_TRAIN = True
    # Remove sweep points with |x| < r and |y| < r (the ego vehicle's own returns); 0 disables.
    _C.INPUT.REMOVE_CLOSE_RADIUS = 0.0
    # [x_min, y_min, z_min, x_max, y_max, z_max] in meters, LiDAR frame.
    _C.INPUT.POINT_CLOUD_RANGE = [-50.0, -50.0, -5.0, 50.0, 50.0, 3.0]
    # Pillar size [dx, dy, dz] in meters (dz spans the whole z range for pillars).
    _C.INPUT.VOXEL_SIZE = [0.25, 0.25, 8.0]
    _C.INPUT.MAX_POINTS_PER_VOXEL = 64
    _C.INPUT.MAX_VOXELS_TRAIN = 30000
    _C.INPUT.MAX_VOXELS_TEST = 40000
    # Shuffle points before voxelization in training (voxel truncation depends on point order).
    _C.INPUT.SHUFFLE_POINTS = True
    # Keep the filtered point cloud in the mapper output (visualization, benchmarks).
    _C.INPUT.KEEP_POINTS = False
    # Training ground truth: drop boxes with fewer LiDAR points than this (nuScenes reference: 1;
    # Lyft's release has num_lidar_pts = -1 everywhere, so its configs use 0 = no filter).
    _C.INPUT.MIN_GT_LIDAR_POINTS = 1

    _C.INPUT.AUG = CN()
    _C.INPUT.AUG.ENABLED = True
    # Global rotation about z, uniform in [min, max] radians (reference: +-pi/8).
    _C.INPUT.AUG.ROTATION_RANGE = [-0.3925, 0.3925]
    # Global scaling, uniform in [min, max].
    _C.INPUT.AUG.SCALE_RANGE = [0.95, 1.05]
    # Global translation noise, normal with this std per axis (m).
    _C.INPUT.AUG.TRANSLATION_STD = [0.0, 0.0, 0.0]
    # Probability of a flip y -> -y ("horizontal" in the reference) and of x -> -x.
    _C.INPUT.AUG.FLIP_Y_PROB = 0.5
    _C.INPUT.AUG.FLIP_X_PROB = 0.0

    # ---------------------------------------------------------------------------------------- #
    # Datasets
    # ---------------------------------------------------------------------------------------- #
    # Detection classes in label order (default: nuScenes'); must equal the registered dataset's
    # thing_classes.
    _C.DATASETS.CLASS_NAMES = list(NUSCENES_CLASSES)
    # Own-data root (README, "Your own LiDAR data"): when set, loading the config registers the
    # splits that `tools/create_data.py custom --root ROOT` wrote (ROOT/d2_pillars/datasets.json).
    _C.DATASETS.CUSTOM_ROOT = ""

    # ---------------------------------------------------------------------------------------- #
    # Pillar feature net and scatter
    # ---------------------------------------------------------------------------------------- #
    _C.MODEL.PILLAR_FEATURE_NET = CN()
    _C.MODEL.PILLAR_FEATURE_NET.NAME = "PillarFeatureNet"
    # Output widths of the Linear-BN-ReLU layers; two layers concatenate [point, pillar max]
    # before the second one (reference: nuScenes [64, 64], Lyft [64]).
    _C.MODEL.PILLAR_FEATURE_NET.FEAT_CHANNELS = [64, 64]
    # Add the Euclidean distance of each point to the sensor as an extra feature.
    _C.MODEL.PILLAR_FEATURE_NET.WITH_DISTANCE = False
    # Add the offset of each point to the mean of its pillar's points (3 values).
    _C.MODEL.PILLAR_FEATURE_NET.WITH_CLUSTER_CENTER = True
    # Add the offset of each point to its pillar's geometric centre (3 values).
    _C.MODEL.PILLAR_FEATURE_NET.WITH_VOXEL_CENTER = True
    # Norm of the encoder: "BN" or "naiveSyncBN" (multi-GPU); eps/momentum as the reference.
    _C.MODEL.PILLAR_FEATURE_NET.NORM = "BN"
    # Let the zero-padded slots of each pillar (MAX_POINTS_PER_VOXEL minus its points) enter the
    # BN statistics and the max over points, exactly as the reference's HardVFE, with whose
    # checkpoints and published numbers it is needed. False: valid points only.
    _C.MODEL.PILLAR_FEATURE_NET.PADDED_SLOTS = True
    _C.MODEL.BN_EPS = 1e-3
    _C.MODEL.BN_MOMENTUM = 0.01
    # With several training processes, convert every BatchNorm to detectron2's naiveSyncBN
    # (single-process runs keep plain BN, so one GPU never needs a process group).
    _C.MODEL.SYNC_BN_MULTI_PROCESS = True
    # Keep the dense part in channels-last (NHWC) memory: the scatter writes the pseudo-image
    # NHWC directly and the backbone, neck and head weights are converted. Same results up to
    # float rounding. Measured on the CPU (RegNetX-400MF + FPN, nuScenes grid, docs/performance.md):
    # 8-14% less time in backbone + neck + head at inference, ~2% less per training iteration.
    # Off by default: not measured on CUDA.
    _C.MODEL.CHANNELS_LAST = False
    # Precision of the network (pillar net .. head convolutions) at inference with the torch
    # back-end: "float32", "float16" or "bfloat16", run under torch.autocast of the model's device
    # (use float16 on CUDA, bfloat16 on CPUs with native bf16, e.g. AVX512-BF16 / AMX). Boxes are
    # decoded and NMS'd in float32 either way. Accuracy against float32 (docs/cuda.md): the same
    # detections up to ~1e-2 in scores and box values. Training precision is SOLVER.AMP.ENABLED.
    _C.MODEL.INFERENCE_DTYPE = "float32"
    # Inference back-end (README, "Deploy"): "torch" (eager), or "onnxruntime" / "openvino",
    # which run the network (pillar net .. head convolutions) exported by
    # tools/deploy/export_model.py (float or int8); the voxelization and the decode + NMS are the
    # same code in all. The graph back-ends are inference only and are registered by
    # `import d2_pillars.deploy` (the tools import it). Their weights are those of the exported
    # graph: MODEL.WEIGHTS is not read.
    _C.MODEL.BACKEND = "torch"
    _C.MODEL.ONNX = CN()
    # The exported model.onnx, or the folder export_model.py wrote it to.
    _C.MODEL.ONNX.PATH = ""
    # onnxruntime execution providers, in order of preference. Empty: TensorRT, then CUDA when
    # the installed onnxruntime has them, then CPU.
    _C.MODEL.ONNX.PROVIDERS = []
    # Intra-op threads of the onnxruntime session (0: onnxruntime's default, one per core).
    _C.MODEL.ONNX.INTRA_OP_THREADS = 0
    # MODEL.BACKEND "openvino" (README, "Deploy"): the graph of MODEL.ONNX.PATH (float, or the
    # int8 QDQ graph of export_model.py --quantize int8) compiled by OpenVINO; threads:
    # MODEL.ONNX.INTRA_OP_THREADS. Registered by `import d2_pillars.deploy`.
    _C.MODEL.OPENVINO = CN()
    # OpenVINO device the graph is compiled for.
    _C.MODEL.OPENVINO.DEVICE = "CPU"
    # Precision of the operations left in float: "f32", or "bf16" (CPUs with AVX512-BF16 / AMX;
    # measured in docs/performance.md). Set explicitly: OpenVINO's own default is bf16 on AMX CPUs.
    _C.MODEL.OPENVINO.INFERENCE_PRECISION = "f32"

    # ---------------------------------------------------------------------------------------- #
    # BEV backbones and necks (MODEL.BACKBONE.NAME picks a builder, e.g. build_regnet_fpn_backbone)
    # ---------------------------------------------------------------------------------------- #
    _C.MODEL.SECOND = CN()
    _C.MODEL.SECOND.LAYER_NUMS = [3, 5, 5]
    _C.MODEL.SECOND.LAYER_STRIDES = [2, 2, 2]
    _C.MODEL.SECOND.OUT_CHANNELS = [64, 128, 256]
    # Stage names are "s1".."s3".
    _C.MODEL.SECOND.OUT_FEATURES = ["s1", "s2", "s3"]
    _C.MODEL.SECOND.NORM = "BN"

    _C.MODEL.REGNET = CN()
    # RegNet generator parameters (pycls / detectron2 generate_regnet_parameters). Default X-400MF.
    _C.MODEL.REGNET.DEPTH = 22
    _C.MODEL.REGNET.W0 = 24
    _C.MODEL.REGNET.WA = 24.48
    _C.MODEL.REGNET.WM = 2.54
    _C.MODEL.REGNET.GROUP_WIDTH = 16
    _C.MODEL.REGNET.BOTTLENECK_RATIO = 1.0
    _C.MODEL.REGNET.SE_RATIO = 0.0
    # Strides of stages s1..s4; the pseudo-image enters s1 directly (no stem).
    _C.MODEL.REGNET.STRIDES = [1, 2, 2, 2]
    # Input width of the first stage (the reference sets the stem width to 64 = pillar channels).
    _C.MODEL.REGNET.STEM_WIDTH = 64
    _C.MODEL.REGNET.OUT_FEATURES = ["s2", "s3", "s4"]
    # "BN", "naiveSyncBN", "FrozenBN", "SyncBN" or "" (detectron2 get_norm names).
    _C.MODEL.REGNET.NORM = "BN"
    # Freeze stages before this one (0: train all; detectron2 semantics).
    _C.MODEL.REGNET.FREEZE_AT = 0

    # detectron2's FPN keys (MODEL.FPN.IN_FEATURES, OUT_CHANNELS, NORM, FUSE_TYPE) are reused;
    # the reference neck adds a ReLU after each lateral and output conv.
    _C.MODEL.FPN.IN_FEATURES = ["s2", "s3", "s4"]
    _C.MODEL.FPN.OUT_CHANNELS = 256
    _C.MODEL.FPN.NORM = "BN"
    _C.MODEL.FPN.ACTIVATION = "relu"

    _C.MODEL.SECFPN = CN()
    _C.MODEL.SECFPN.IN_FEATURES = ["s1", "s2", "s3"]
    _C.MODEL.SECFPN.UPSAMPLE_STRIDES = [1, 2, 4]
    _C.MODEL.SECFPN.OUT_CHANNELS = [128, 128, 128]
    _C.MODEL.SECFPN.NORM = "BN"

    # ---------------------------------------------------------------------------------------- #
    # Anchor3DHead
    # ---------------------------------------------------------------------------------------- #
    _C.MODEL.ANCHOR3D_HEAD = CN()
    _C.MODEL.ANCHOR3D_HEAD.NAME = "Anchor3DHead"
    _C.MODEL.ANCHOR3D_HEAD.NUM_CLASSES = 10
    _C.MODEL.ANCHOR3D_HEAD.IN_FEATURES = ["p1", "p2", "p3"]
    # Box code: 7 (x, y, z, l, w, h, yaw) or 9 (+ vx, vy).
    _C.MODEL.ANCHOR3D_HEAD.BOX_CODE_SIZE = 9
    # Anchor ranges [x_min, y_min, z, x_max, y_max, z]: centres span x/y as an aligned grid; z is
    # the anchor's *bottom* (as the reference writes it), so a level scale that grows the height
    # keeps the bottom on the ground: z_centre = z + h * scale / 2. One range per size, or one
    # range shared by all sizes.
    _C.MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES = [[-50.0, -50.0, -1.8, 50.0, 50.0, -1.8]]
    # Anchor sizes [l, w, h] (m). Class-agnostic sizes for FPN heads; per-class for SECFPN.
    _C.MODEL.ANCHOR3D_HEAD.ANCHOR_SIZES = [
        [2.5981, 0.8660, 1.0],
        [1.7321, 0.5774, 1.0],
        [1.0, 1.0, 1.0],
        [0.4, 0.4, 1.0],
    ]
    _C.MODEL.ANCHOR3D_HEAD.ANCHOR_ROTATIONS = [0.0, 1.57]
    # Per-level multipliers of every anchor dimension (FPN: [1, 2, 4]; single level: [1]).
    _C.MODEL.ANCHOR3D_HEAD.LEVEL_SCALES = [1.0, 2.0, 4.0]
    # Matcher on nearest axis-aligned BEV IoU: negatives < 0.3, positives >= 0.6, plus each GT's
    # best anchors when their IoU >= LOW_QUALITY_MIN_IOU.
    _C.MODEL.ANCHOR3D_HEAD.IOU_THRESHOLDS = [0.3, 0.6]
    _C.MODEL.ANCHOR3D_HEAD.IOU_LABELS = [0, -1, 1]
    _C.MODEL.ANCHOR3D_HEAD.ALLOW_LOW_QUALITY_MATCHES = True
    _C.MODEL.ANCHOR3D_HEAD.LOW_QUALITY_MIN_IOU = 0.3
    _C.MODEL.ANCHOR3D_HEAD.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.ANCHOR3D_HEAD.FOCAL_LOSS_GAMMA = 2.0
    _C.MODEL.ANCHOR3D_HEAD.SMOOTH_L1_BETA = 1.0 / 9.0
    # Per-dimension weights of the box regression (velocity 0.2 in the nuScenes reference).
    _C.MODEL.ANCHOR3D_HEAD.CODE_WEIGHTS = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2]
    _C.MODEL.ANCHOR3D_HEAD.LOSS_CLS_WEIGHT = 1.0
    _C.MODEL.ANCHOR3D_HEAD.LOSS_BOX_WEIGHT = 1.0
    _C.MODEL.ANCHOR3D_HEAD.LOSS_DIR_WEIGHT = 0.2
    # Heading bins: bin 0 holds yaw in [DIR_OFFSET, DIR_OFFSET + pi) (reference: -pi/4).
    _C.MODEL.ANCHOR3D_HEAD.DIR_OFFSET = -0.7854
    _C.MODEL.ANCHOR3D_HEAD.PRIOR_PROB = 0.01
    # Inference.
    _C.MODEL.ANCHOR3D_HEAD.NMS_PRE = 1000  # top-k candidates per level
    _C.MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST = 0.05
    _C.MODEL.ANCHOR3D_HEAD.NMS_THRESH_TEST = 0.2  # rotated BEV IoU, per class
    _C.MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE = 500

    # ---------------------------------------------------------------------------------------- #
    # Solver and evaluation extras
    # ---------------------------------------------------------------------------------------- #
    # "AdamW" (reference) or "SGD" (detectron2's default builder).
    _C.SOLVER.OPTIMIZER = "AdamW"
    _C.SOLVER.BETAS = [0.9, 0.999]
    # Iterations between log lines / metrics.json records (detectron2 hard-codes 20).
    _C.SOLVER.LOG_PERIOD = 20
    _C.TEST.EVAL_OUTPUT_SUBDIR = "inference"
    # BEV images of the VIS_NUM_SAMPLES worst and best samples, saved by the evaluators in
    # OUTPUT_DIR/inference/<dataset>/vis/ (0 disables them); predictions below VIS_SCORE_THRESH
    # are neither drawn nor counted in the ranking.
    _C.TEST.VIS_SCORE_THRESH = 0.3
    _C.TEST.VIS_NUM_SAMPLES = 0
    # Lyft mAP implementation: "sdk" (the SDK's shapely loops), "fast" (vectorised, equal numbers)
    # or "auto" (the SDK up to 1000 predictions, else fast).
    _C.TEST.LYFT_MAP_METHOD = "auto"
    # Also render the nuScenes devkit's PR/TP curves (PDFs in <eval dir>/plots; slow).
    _C.TEST.NUSCENES_PLOTS = False
