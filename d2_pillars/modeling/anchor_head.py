# -*- coding: utf-8 -*-
"""The PointPillars anchor head: predictions, anchor assignment, losses and inference."""
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple
import torch
from fvcore.nn import smooth_l1_loss
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage
from detectron2.utils.registry import Registry

from ..layers import multiclass_nms_rotated_bev
from ..structures import LiDARBoxes
from .anchor_matching import match_pairs
from .anchors import Anchor3DGenerator
from .box_coder import ResidualBoxCoder, add_sin_difference, apply_direction, direction_targets
from .losses import sigmoid_focal_loss_sparse

__all__ = [
    "ANCHOR3D_HEAD_REGISTRY",
    "build_anchor3d_head",
    "Anchor3DHead",
    "permute_to_N_HWA_K",
    "DIR_OFFSET_KEY",
]

logger = logging.getLogger(__name__)

ANCHOR3D_HEAD_REGISTRY = Registry("ANCHOR3D_HEAD")
ANCHOR3D_HEAD_REGISTRY.__doc__ = """
Registry for 3D dense heads, which predict class scores, box residuals and direction bins for the
anchors of BEV feature maps.

The registered object is called with `obj(cfg, input_shapes)`, where `input_shapes` is a list of
:class:`ShapeSpec`, one per feature level of `MODEL.ANCHOR3D_HEAD.IN_FEATURES`.
"""


def build_anchor3d_head(cfg, input_shapes: List[ShapeSpec]):
    """Build the head named by ``cfg.MODEL.ANCHOR3D_HEAD.NAME``."""
    return ANCHOR3D_HEAD_REGISTRY.get(cfg.MODEL.ANCHOR3D_HEAD.NAME)(cfg, input_shapes)


def permute_to_N_HWA_K(tensor: Tensor, k: int) -> Tensor:
    """(B, A * K, H, W) -> (B, H * W * A, K), the anchor order of :class:`Anchor3DGenerator`."""
    # channel c = a * K + k: one 4-D permutation to (B, H, W, A * K) holds the same order as the
    # 5-D (B, H, W, A, K) one, and graph runtimes fold it into the convolution's output layout
    return tensor.permute(0, 2, 3, 1).reshape(tensor.shape[0], -1, k)


def _row_max(x: Tensor) -> Tensor:
    """``x.amax(dim=1)`` of an (N, K) tensor with a few columns, as K - 1 elementwise maxima:
    torch's reduction over a short inner axis runs at a third of the memory rate on the CPU
    (320,000 x 10 class logits: 2.3 -> 1.4 ms). The same values (a max is exact)."""
    if x.shape[1] < 2:
        return x.amax(dim=1)
    out = torch.maximum(x[:, 0], x[:, 1])
    for k in range(2, x.shape[1]):
        torch.maximum(out, x[:, k], out=out)
    return out


def _put_scalar(name: str, value: float):
    """Log to the current detectron2 EventStorage when there is one (training loops)."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no storage outside a trainer
        return
    storage.put_scalar(name, value)


#: State-dict entry (under the head's prefix) holding the direction offset in radians.
DIR_OFFSET_KEY = "dir_offset"


def _save_dir_offset(module, state_dict, prefix, local_metadata):
    state_dict[prefix + DIR_OFFSET_KEY] = torch.tensor(module.dir_offset, dtype=torch.float64)


def _load_dir_offset(module, state_dict, prefix, local_metadata, *args):
    value = state_dict.pop(prefix + DIR_OFFSET_KEY, None)
    if value is None:
        return
    value = float(value)
    if abs(value - module.dir_offset) > 1e-9:
        logger.info(
            f"Direction offset {value:.7f} rad from the checkpoint replaces the config's "
            f"MODEL.ANCHOR3D_HEAD.DIR_OFFSET {module.dir_offset:.7f} (the weights were trained "
            "with it)"
        )
    module.dir_offset = value


@ANCHOR3D_HEAD_REGISTRY.register()
class Anchor3DHead(nn.Module):
    """
    The anchor head of PointPillars / SECOND (mmdetection3d ``Anchor3DHead``).

    Three 1x1 convolutions shared across feature levels predict, for each of the ``A`` anchors at
    each location, ``C`` class logits, ``code_size`` box residuals and 2 direction logits (channel
    ``a * K + k``). Training assigns anchors class-agnostically by nearest axis-aligned BEV IoU
    and returns the focal / smooth-L1 / direction losses; inference decodes the top candidates
    per level, runs per-class rotated BEV NMS and resolves the heading direction.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        anchor_generator: Anchor3DGenerator,
        box_coder: ResidualBoxCoder,
        anchor_matcher: Matcher,
        low_quality_min_iou: Optional[float] = 0.3,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 1.0 / 9.0,
        code_weights: Optional[Sequence[float]] = None,
        loss_cls_weight: float = 1.0,
        loss_box_weight: float = 1.0,
        loss_dir_weight: float = 0.2,
        dir_offset: float = -0.7854,
        prior_prob: float = 0.01,
        nms_pre: int = 1000,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.2,
        max_detections_per_sample: int = 500,
    ):
        """
        Args:
            in_channels (int): channels of every input feature level.
            num_classes (int): C, number of detection classes (no background logit).
            anchor_generator (Anchor3DGenerator): anchors of every level.
            box_coder (ResidualBoxCoder): box residual coding; its code size sets the outputs.
            anchor_matcher (Matcher): IoU thresholds / labels, without low-quality matches.
            low_quality_min_iou (float or None): floor of the low-quality matches (see
                :func:`match_anchors`); None disables them.
            focal_loss_alpha, focal_loss_gamma (float): sigmoid focal loss parameters.
            smooth_l1_beta (float): smooth L1 transition point.
            code_weights (list[float]): one weight per box-code value (default all 1).
            loss_cls_weight, loss_box_weight, loss_dir_weight (float): loss multipliers.
            dir_offset (float): radians; bin 0 holds headings in ``[dir_offset, dir_offset+pi)``.
            prior_prob (float): initial foreground probability of the class logits.
            nms_pre (int): candidates kept per level (by max class score) before NMS.
            score_thresh (float): candidates need a class score above this.
            nms_thresh (float): rotated BEV IoU threshold of the per-class NMS.
            max_detections_per_sample (int): detections kept per sample after NMS.
        """
        super().__init__()
        code_size = box_coder.code_size
        if code_weights is None:
            code_weights = [1.0] * code_size
        if len(code_weights) != code_size:
            raise ValueError(
                f"MODEL.ANCHOR3D_HEAD.CODE_WEIGHTS has {len(code_weights)} values for a box code "
                f"of size {code_size}: give one weight per code value"
            )
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.anchor_matcher = anchor_matcher
        self.low_quality_min_iou = low_quality_min_iou
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.smooth_l1_beta = smooth_l1_beta
        self.register_buffer(
            "code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False
        )
        self.loss_weights = {"cls": loss_cls_weight, "box": loss_box_weight, "dir": loss_dir_weight}
        self.dir_offset = dir_offset
        self.nms_pre = nms_pre
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.max_detections_per_sample = max_detections_per_sample

        num_anchors = anchor_generator.num_anchors_per_location
        self.conv_cls = nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=1)
        self.conv_reg = nn.Conv2d(in_channels, num_anchors * code_size, kernel_size=1)
        self.conv_dir = nn.Conv2d(in_channels, num_anchors * 2, kernel_size=1)
        for conv in (self.conv_cls, self.conv_reg, self.conv_dir):
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.constant_(conv.bias, 0.0)
        nn.init.constant_(self.conv_cls.bias, -math.log((1 - prior_prob) / prior_prob))
        self._anchor_bev_cache: Dict[Tuple, Tensor] = {}
        # The direction offset belongs to the weights (a checkpoint converted from another box
        # convention carries its own): saved in the state dict, and taken from a checkpoint that
        # has it. Checkpoints without it keep the config's value.
        self._register_state_dict_hook(_save_dir_offset)
        self._register_load_state_dict_pre_hook(_load_dir_offset, with_module=True)

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec]):
        head = cfg.MODEL.ANCHOR3D_HEAD
        channels = {s.channels for s in input_shapes}
        if len(channels) != 1:
            raise ValueError(
                f"Anchor3DHead shares its convolutions across levels, but the IN_FEATURES "
                f"{list(head.IN_FEATURES)} have different channels {sorted(channels)}"
            )
        return {
            "in_channels": channels.pop(),
            "num_classes": head.NUM_CLASSES,
            "anchor_generator": Anchor3DGenerator(cfg),
            "box_coder": ResidualBoxCoder(head.BOX_CODE_SIZE),
            "anchor_matcher": Matcher(
                head.IOU_THRESHOLDS, head.IOU_LABELS, allow_low_quality_matches=False
            ),
            "low_quality_min_iou": (
                head.LOW_QUALITY_MIN_IOU if head.ALLOW_LOW_QUALITY_MATCHES else None
            ),
            "focal_loss_alpha": head.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": head.FOCAL_LOSS_GAMMA,
            "smooth_l1_beta": head.SMOOTH_L1_BETA,
            "code_weights": head.CODE_WEIGHTS,
            "loss_cls_weight": head.LOSS_CLS_WEIGHT,
            "loss_box_weight": head.LOSS_BOX_WEIGHT,
            "loss_dir_weight": head.LOSS_DIR_WEIGHT,
            "dir_offset": head.DIR_OFFSET,
            "prior_prob": head.PRIOR_PROB,
            "nms_pre": head.NMS_PRE,
            "score_thresh": head.SCORE_THRESH_TEST,
            "nms_thresh": head.NMS_THRESH_TEST,
            "max_detections_per_sample": head.MAX_DETECTIONS_PER_SAMPLE,
        }

    @property
    def code_size(self) -> int:
        return self.box_coder.code_size

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """
        Args:
            features (list[Tensor]): per level, (B, C_in, H, W).

        Returns:
            pred_logits, pred_deltas, pred_dirs (list[Tensor]): per level, (B, H*W*A, K) with
            K = num_classes, code_size and 2, in the anchor order of :class:`Anchor3DGenerator`.
        """
        logits, deltas, dirs = [], [], []
        for x in features:
            logits.append(permute_to_N_HWA_K(self.conv_cls(x), self.num_classes))
            deltas.append(permute_to_N_HWA_K(self.conv_reg(x), self.code_size))
            dirs.append(permute_to_N_HWA_K(self.conv_dir(x), 2))
        return logits, deltas, dirs

    def anchors(self, grid_sizes: List[Tuple[int, int]], device) -> List[Tensor]:
        """Per level, the (H * W * A, 7) anchors of feature maps of the given (H, W) sizes."""
        return self.anchor_generator.grid_anchors(grid_sizes, device)

    def _anchor_bev(self, grid_sizes: List[Tuple[int, int]], device) -> Tensor:
        """Nearest axis-aligned BEV boxes of all anchors, (N, 4), cached per grid."""
        key = (tuple(tuple(g) for g in grid_sizes), str(device))
        if key not in self._anchor_bev_cache:
            anchors = cat(self.anchors(grid_sizes, device))
            self._anchor_bev_cache[key] = LiDARBoxes(anchors).nearest_bev()
        return self._anchor_bev_cache[key]

    @torch.no_grad()
    def label_anchors(
        self,
        grid_sizes: List[Tuple[int, int]],
        gt_boxes: List[LiDARBoxes],
        gt_classes: List[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        """
        Class-agnostic assignment of every anchor of every sample.

        Args:
            grid_sizes: (H, W) of each feature level.
            gt_boxes (list[LiDARBoxes]): per sample, K_i boxes.
            gt_classes (list[Tensor]): per sample, (K_i,) int64 labels in [0, C).

        Returns:
            gt_labels (Tensor): (B, N) int64: class in [0, C) for positives, C for negatives,
                -1 for ignored anchors.
            matched_idxs (Tensor): (B, N) int64 index of the matched box in the concatenation of
                all samples' GT boxes (meaningful for positives only).
        """
        device = gt_boxes[0].device
        anchor_bev = self._anchor_bev(grid_sizes, device)
        num_anchors = anchor_bev.shape[0]
        counts = torch.tensor([len(b) for b in gt_boxes], device=device)
        gt_bev = cat([b.nearest_bev() for b in gt_boxes])  # (K, 4), all samples
        all_classes = cat([c.to(device, torch.int64) for c in gt_classes])
        sample_of_gt = torch.repeat_interleave(torch.arange(len(gt_boxes), device=device), counts)
        # All samples at once: slot = sample * N + anchor.
        g, a = self.anchor_generator.candidate_pairs(gt_bev, grid_sizes)
        iou = matched_pairwise_iou(Boxes(gt_bev[g]), Boxes(anchor_bev[a]))
        matches, match_labels = match_pairs(
            self.anchor_matcher,
            g,
            sample_of_gt[g] * num_anchors + a,
            iou,
            gt_bev.shape[0],
            len(gt_boxes) * num_anchors,
            self.low_quality_min_iou,
        )
        if all_classes.numel() > 0:
            labels = all_classes[matches]
        else:
            labels = torch.zeros_like(matches)
        labels = labels.masked_fill(match_labels == 0, self.num_classes)
        labels = labels.masked_fill(match_labels == -1, -1)
        return labels.view(len(gt_boxes), num_anchors), matches.view(len(gt_boxes), num_anchors)

    def losses(
        self,
        grid_sizes: List[Tuple[int, int]],
        pred_logits: List[Tensor],
        pred_deltas: List[Tensor],
        pred_dirs: List[Tensor],
        gt_boxes: List[LiDARBoxes],
        gt_classes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            grid_sizes: (H, W) of each feature level.
            pred_logits, pred_deltas, pred_dirs: outputs of :meth:`forward`.
            gt_boxes (list[LiDARBoxes]): per sample, K_i boxes with at least ``code_size`` values.
            gt_classes (list[Tensor]): per sample, (K_i,) int64 in [0, C).

        Returns:
            dict[str, Tensor]: ``loss_cls`` (sigmoid focal over non-ignored anchors),
            ``loss_box_reg`` (smooth L1 on positives with the sin-difference yaw) and ``loss_dir``
            (2-bin cross entropy on positives), each already weighted and divided by
            ``N_pos = sum over samples of max(#positives, 1)`` (mmdetection3d; detectron2's
            RetinaNet uses an EMA of the positive count instead).
        """
        num_classes = self.num_classes
        gt_labels, matched_idxs = self.label_anchors(grid_sizes, gt_boxes, gt_classes)
        valid = gt_labels >= 0
        pos = valid & (gt_labels != num_classes)
        num_pos = pos.sum(dim=1)
        normalizer = num_pos.clamp(min=1).sum().float()
        _put_scalar("num_pos_anchors", num_pos.sum().item() / max(len(gt_boxes), 1))

        # float32 losses, also under autocast
        logits = cat(pred_logits, dim=1).float()  # (B, N, C)
        num_anchors = logits.shape[1]
        pos_b, pos_a = pos.nonzero(as_tuple=True)
        # Sigmoid focal loss on the non-ignored anchors (fvcore's, without the dense targets).
        loss_cls = sigmoid_focal_loss_sparse(
            logits.reshape(-1, num_classes),
            valid.flatten().to(logits.dtype),
            pos_b * num_anchors + pos_a,
            gt_labels[pos_b, pos_a],
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
        )

        all_anchors = cat(self.anchors(grid_sizes, logits.device))
        all_gt = cat([self._gt_code_columns(b) for b in gt_boxes])
        matched_gt = all_gt[matched_idxs[pos_b, pos_a]]
        target_deltas = self.box_coder.encode(matched_gt, all_anchors[pos_a])
        pos_deltas = cat(pred_deltas, dim=1)[pos_b, pos_a].float()
        pred_sin, target_sin = add_sin_difference(pos_deltas, target_deltas)
        loss_box = smooth_l1_loss(pred_sin, target_sin, beta=self.smooth_l1_beta, reduction="none")
        loss_box = (loss_box * self.code_weights).sum()

        pos_dirs = cat(pred_dirs, dim=1)[pos_b, pos_a].float()
        dir_targets = direction_targets(matched_gt[:, 6], self.dir_offset)
        loss_dir = F.cross_entropy(pos_dirs, dir_targets, reduction="sum")

        return {
            "loss_cls": loss_cls * (self.loss_weights["cls"] / normalizer),
            "loss_box_reg": loss_box * (self.loss_weights["box"] / normalizer),
            "loss_dir": loss_dir * (self.loss_weights["dir"] / normalizer),
        }

    def _gt_code_columns(self, boxes: LiDARBoxes) -> Tensor:
        """(K, code_size) box values of one sample (velocity dropped for 7-value codes)."""
        cs = self.code_size
        if len(boxes) == 0:
            return boxes.tensor.new_zeros((0, cs))
        if boxes.box_dim < cs:
            raise ValueError(
                f"GT boxes have {boxes.box_dim} values but the box code needs {cs}; set "
                "MODEL.ANCHOR3D_HEAD.BOX_CODE_SIZE to 7 (and 7 CODE_WEIGHTS) for data without "
                "velocity"
            )
        return boxes.tensor[:, :cs]

    @torch.no_grad()
    def inference(
        self,
        grid_sizes: List[Tuple[int, int]],
        pred_logits: List[Tensor],
        pred_deltas: List[Tensor],
        pred_dirs: List[Tensor],
        image_size: Tuple[int, int],
    ) -> List[Instances]:
        """
        Args:
            grid_sizes, pred_logits, pred_deltas, pred_dirs: as in :meth:`losses`.
            image_size (tuple[int, int]): (ny, nx) of the BEV grid, stored in the Instances.

        Returns:
            list[Instances]: per sample, ``pred_boxes3d`` (LiDARBoxes, yaw in [-pi, pi)),
            ``scores`` (float) and ``pred_classes`` (int64), sorted by decreasing score.
        """
        anchors = self.anchors(grid_sizes, pred_logits[0].device)
        results = []
        for b in range(pred_logits[0].shape[0]):
            results.append(
                self.inference_single_sample(
                    anchors,
                    [x[b] for x in pred_logits],
                    [x[b] for x in pred_deltas],
                    [x[b] for x in pred_dirs],
                    image_size,
                )
            )
        return results

    def inference_single_sample(
        self,
        anchors: List[Tensor],
        logits: List[Tensor],
        deltas: List[Tensor],
        dirs: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """Inference for one sample; each list holds per-level (N_l, K) tensors."""
        boxes_all, scores_all, dirs_all = [], [], []
        for anchors_l, logits_l, deltas_l, dirs_l in zip(anchors, logits, deltas, dirs):
            logits_l = logits_l.float()
            if 0 < self.nms_pre < logits_l.shape[0]:
                # The sigmoid is monotonic: rank by the largest logit (amax, no indices) and take
                # the sigmoid of the kept rows only (not of every anchor x class: 12 of the 80 ms
                # of a full-load nuScenes frame). Ties of the float32 sigmoid (saturated scores)
                # are broken by the logit, which a sigmoid ranking leaves to topk.
                top = _row_max(logits_l).topk(self.nms_pre).indices
                anchors_l, logits_l, deltas_l, dirs_l = (
                    anchors_l[top],
                    logits_l[top],
                    deltas_l[top],
                    dirs_l[top],
                )
            scores_l = logits_l.sigmoid()
            boxes_all.append(self.box_coder.decode(deltas_l.float(), anchors_l))
            scores_all.append(scores_l)
            dirs_all.append(dirs_l.argmax(dim=1))
        boxes, scores, dir_bins = cat(boxes_all), cat(scores_all), cat(dirs_all)

        keep, classes, kept_scores = multiclass_nms_rotated_bev(
            LiDARBoxes(boxes).bev(),
            scores,
            self.score_thresh,
            self.nms_thresh,
            self.max_detections_per_sample,
        )
        boxes = boxes[keep]
        boxes[:, 6] = apply_direction(boxes[:, 6], dir_bins[keep], self.dir_offset)

        result = Instances(image_size)
        result.pred_boxes3d = LiDARBoxes(boxes)
        result.scores = kept_scores
        result.pred_classes = classes
        return result
