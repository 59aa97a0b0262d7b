"""Install vmae2 and vmae2_kernels.

The folder ``kernels/`` installs under the import name ``vmae2_kernels``: a top-level
``kernels`` would collide with Hugging Face's ``kernels`` package. This file never imports
torch; native extensions (``csrc/``) are added by their own build step when present.
"""
from setuptools import setup

setup(
    packages=["vmae2", "vmae2.models", "vmae2_kernels"],
    package_dir={"vmae2": "vmae2", "vmae2.models": "vmae2/models", "vmae2_kernels": "kernels"},
)
