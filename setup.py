"""Install vmae2 and vmae2_kernels.

The folder ``kernels/`` installs under the import name ``vmae2_kernels``: a top-level
``kernels`` would collide with Hugging Face's ``kernels`` package. This file never imports
torch; native extensions (``csrc/``) are added by their own build step when present.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["vmae2", "vmae2.*"]) + ["vmae2_kernels"],
    package_dir={"vmae2_kernels": "kernels"},
)
