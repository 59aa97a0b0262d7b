"""vmae2: fast, faithful VideoMAE V2 dual-masking pretraining.

Library modules: :mod:`vmae2.models` (model zoo), :mod:`vmae2.masking`, :mod:`vmae2.loss`, :mod:`vmae2.attention`
(backends), :mod:`vmae2.weights` (weights I/O). Commands: ``python -m vmae2.X`` (:mod:`vmae2.train`,
:mod:`vmae2.finetune`, ...; their configs and ``main``), which run :mod:`vmae2.runs` on the scaffold in
:mod:`vmae2.training`.
"""
__version__ = "0.1.0"
