"""What the memory plan budgets on a GPU (torch-free: ``python -m vmae2.plan --help`` reads it): each GPU model's
total memory as torch reports it, the reserve outside PyTorch's caching allocator, the margin kept free."""
from __future__ import annotations

# Total memory as torch reports it (``torch.cuda.get_device_properties(i).total_memory``, the "total capacity" of
# its out-of-memory messages), GiB: the nominal 80 / 141 GB less what the driver keeps.
GPUS = {"a100-80gb": 79.35, "h100-80gb": 79.21, "h200": 139.80}
RESERVE_GIB = 2.0  # outside the caching allocator: CUDA context and loaded kernels, NCCL buffers
MARGIN = 0.1  # of the rest, kept free for the caching allocator's block rounding and fragmentation
