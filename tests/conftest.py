"""Test configuration. Triton kernels run through its interpreter when no GPU is present; the variable
must be set before anything imports Triton."""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's root: `benchmarks.*` (analysis tools)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.manual_seed(0)
