from .lidar_boxes import BOX_CONVENTION_VERSION, LiDARBoxes

__all__ = ["BOX_CONVENTION_VERSION", "LiDARBoxes"]
