"""Voxelization, rotated BEV and 3D IoU and rotated / multi-class NMS."""

from .nms import batched_nms_rotated_bev, multiclass_nms_rotated_bev, nms_rotated_bev
from .rotated_iou import pairwise_iou_rotated_3d, pairwise_iou_rotated_bev
from .voxelizer import Voxelizer, collate_voxels

__all__ = [
    "Voxelizer",
    "collate_voxels",
    "pairwise_iou_rotated_bev",
    "pairwise_iou_rotated_3d",
    "nms_rotated_bev",
    "batched_nms_rotated_bev",
    "multiclass_nms_rotated_bev",
]
