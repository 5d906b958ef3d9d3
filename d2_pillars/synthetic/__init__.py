"""The synthetic LiDAR world and its nuScenes / Lyft writers: built-in datasets in the exact
on-disk formats of the real ones, read back through the official devkits like real data. Nothing
in ``d2_pillars.data`` needs this package.

* :mod:`.world`: the scene (road, ego vehicle, objects of every class, background);
* :mod:`.lidar`: the spinning LiDAR ray-cast against it; :mod:`.geometry`: quaternions;
* :mod:`.writer`: nuScenes / Lyft tables and point files (:data:`NUSCENES_FORMAT`, ...);
* :mod:`.dataset`: :func:`make_synthetic_nuscenes`, :func:`make_synthetic_lyft`,
  :func:`make_synthetic_dataset` (what ``tools/make_synthetic_dataset.py`` and the demo run);
* :mod:`.custom_format`: :func:`make_synthetic_custom`, the world in the own-data layout.
"""

from .custom_format import make_synthetic_custom
from .dataset import (
    GENERATOR_VERSION,
    MARKER_NAME,
    make_synthetic_dataset,
    make_synthetic_lyft,
    make_synthetic_nuscenes,
)

__all__ = [
    "GENERATOR_VERSION",
    "MARKER_NAME",
    "make_synthetic_dataset",
    "make_synthetic_lyft",
    "make_synthetic_nuscenes",
    "make_synthetic_custom",
]
