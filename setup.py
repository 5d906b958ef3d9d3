#!/usr/bin/env python
"""d2_pillars: PointPillars (+RegNetX/FPN) LiDAR detection for nuScenes and Lyft on detectron2."""
from setuptools import find_packages, setup

setup(
    name="d2_pillars",
    version="0.1.0",
    description="PointPillars (RegNetX, FPN) for nuScenes and Lyft on detectron2",
    packages=find_packages(include=["d2_pillars", "d2_pillars.*"]),
    package_data={"d2_pillars": ["data/datasets/splits/*.txt"]},
    python_requires=">=3.9",
    # torch, detectron2 and the devkits are installed by the Makefile (see README): detectron2
    # has no wheel on PyPI, lyft-dataset-sdk needs --no-deps. Listed here for pip's resolver.
    install_requires=[
        "numpy<2",
        "fvcore",
        "spconv",
        "nuscenes-devkit",
        "shapely",
        "pyquaternion",
    ],
)
