"""Test configuration. Triton kernels run through its interpreter when no GPU is present; the variable
must be set before anything imports Triton."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.manual_seed(0)
