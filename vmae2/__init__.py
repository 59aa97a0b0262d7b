"""vmae2: fast, faithful VideoMAE V2 dual-masking pretraining.

Submodules: :mod:`vmae2.models` (model zoo), :mod:`vmae2.masking`, :mod:`vmae2.loss`,
:mod:`vmae2.attention` (backends), :mod:`vmae2.weights`.
"""
__version__ = "0.1.0"
