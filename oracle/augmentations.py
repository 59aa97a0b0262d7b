"""The official fine-tuning augmentations: timm 0.4.12's own modules (the version the official code pins).

``import timm`` imports torchvision, which needs a build matching the installed torch (there is no CPU build on
PyPI), so each module is loaded from its file; the ones used here import only numpy, torch and Pillow.
"""
import importlib.util
from pathlib import Path

import pytest


def timm_module(relative: str):
    """timm's ``relative`` file (e.g. ``"data/mixup.py"``) as a module; skips the calling test without timm."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        pytest.skip("timm is not installed (make install puts timm==0.4.12 in .venv with --no-deps)")
    path = Path(spec.origin).parent / relative
    module_spec = importlib.util.spec_from_file_location(f"official_timm_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
