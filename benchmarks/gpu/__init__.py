"""GPU work predicted, inspected and run: the roofline model of each kernel (``roofline``), the ahead-of-time compile
report of every Triton kernel for sm_80/sm_90 without a GPU (``python -m benchmarks.gpu.report``), and the one
prepared check for a lent GPU (``python -m benchmarks.gpu.check``, its coverage items in ``items``)."""
