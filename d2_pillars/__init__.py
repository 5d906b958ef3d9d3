"""d2_pillars: PointPillars (+RegNetX / FPN) LiDAR 3D detection as a detectron2 extension.

Importing the package registers its components in detectron2's registries (meta-architecture,
backbones) and the default dataset names in ``DatasetCatalog``.
"""

from .config import add_pillars_config
from .structures import BOX_CONVENTION_VERSION, LiDARBoxes

from . import data  # noqa: F401  isort:skip  (registers datasets)
from . import modeling  # noqa: F401  isort:skip  (registers models)
from . import evaluation  # noqa: F401  isort:skip

__version__ = "0.1.0"
__all__ = ["add_pillars_config", "BOX_CONVENTION_VERSION", "LiDARBoxes"]
