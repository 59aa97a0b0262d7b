"""Test configuration. Triton kernels run through its interpreter when no GPU is present; the variable
must be set before anything imports Triton."""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's root: `benchmarks.*` (analysis tools)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.manual_seed(0)


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib made unimportable, as in the minimal install (the optional-import cache cleared around it)."""
    from vmae2_kernels import optional

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    optional.load.cache_clear()
    yield
    optional.load.cache_clear()
