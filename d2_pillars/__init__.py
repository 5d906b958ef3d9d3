"""d2_pillars: PointPillars (+RegNetX / FPN) LiDAR 3D detection as a detectron2 extension.

Importing the package registers its components in detectron2's registries (meta-architecture,
backbones) and the default dataset names in ``DatasetCatalog``.
"""

import warnings

# fvcore (detectron2's dependency) scripts its focal losses with torch.jit.script at import time,
# which recent torch flags as deprecated: twice per process, on every command, not actionable
# by users of this package.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

from .config import add_pillars_config  # noqa: E402  isort:skip
from .structures import BOX_CONVENTION_VERSION, LiDARBoxes  # noqa: E402  isort:skip

from . import data  # noqa: F401,E402  isort:skip  (registers datasets)
from . import modeling  # noqa: F401,E402  isort:skip  (registers models)
from . import evaluation  # noqa: F401,E402  isort:skip

__version__ = "0.1.0"
__all__ = ["add_pillars_config", "BOX_CONVENTION_VERSION", "LiDARBoxes"]
