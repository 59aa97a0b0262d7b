"""Test configuration. Triton kernels run through its interpreter when no GPU is present (the variable must be set
before anything imports Triton); with a GPU they run compiled, on the CUDA tensors of the kernel tests' cuda cases
(``tests/test_kernels.py``)."""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Backends by the fixed order, not by timing: the same backend in every run of a test (tests of the measured choice
# turn it on for themselves); the subprocesses that tests start inherit it.
os.environ.setdefault("VMAE2_MEASURE", "0")
# Under pytest-xdist (`make test` runs two workers) each worker and the processes it starts use one intra-op thread:
# two workers of two threads each on two cores slowed the suite.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

torch.manual_seed(0)


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib made unimportable, as in the minimal install (the optional-import cache cleared around it)."""
    from vmae2_kernels import optional

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    optional.load.cache_clear()
    yield
    optional.load.cache_clear()
