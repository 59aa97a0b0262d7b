"""The one tolerance table for floating-point comparisons in tests/, benchmarks/ and examples/.

Rule:

* Exact equality (``torch.equal``, ``rtol=0, atol=0``) only where the same kernels run on the same inputs:
  resume / determinism / rerun checks, pure data movement (gather, scatter, copies, crops of uint8 frames),
  integer ids, masks, labels, bit-exact re-implementations of the same integer / Pillow ops, and a single IEEE
  operation on the same operands (correctly rounded, so the same bits in any implementation).
* Everything else -- two computations of the same math (GEMMs of different shapes, two backends, a fused kernel
  against its reference, another reduction order) -- is compared with :func:`assert_close_fp`, whose tolerance
  comes from :data:`FP_TOL`.

Where the numbers come from (``u`` = unit roundoff = half the machine epsilon):

* fp64 ``u = 2^-53``, fp32 ``u = 2^-24``: the error of a length-``n`` accumulation in that dtype is at most
  ``~n u`` and typically ``~sqrt(n) u`` of the sum of the terms' magnitudes; two such computations may differ by
  twice that.
  A growth factor of ``2^8`` covers the accumulation lengths in these tests (``sqrt(n) <= 128``, or a short
  chain of such ops): ``rtol = 2^8 u`` (fp32 ``1.5e-5``, the familiar ``1e-5``; fp64 ``2.8e-14``).
* bf16 ``u = 2^-8``, fp16 ``u = 2^-11``: with fp32 accumulation the accumulation error is negligible next to
  the final rounding to the storage dtype; two results may round to neighbours, and an input rounded on one
  side only adds one more: ``rtol = 4 u`` = two ulps (bf16 ``1.6e-2``, torch's own bf16 default; fp16 ``2e-3``).

``atol`` is the same number times ``scale``, the magnitude of the data the result was computed from (default:
``max |expected|``, a normwise bound), so entries that cancel to near zero are judged against the terms they came
from, not against themselves. ``growth`` multiplies both for computations longer than one accumulation (a whole
model forward, gradients through several layers); say in a comment why a test needs it.
"""
from __future__ import annotations

import torch

#: dtype -> (rtol, atol at scale 1) for two computations of the same math in that dtype, fp32 accumulation.
FP_TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (2.0 ** -45, 2.0 ** -45),  # 2^8 u, u = 2^-53
    torch.float32: (2.0 ** -16, 2.0 ** -16),  # 2^8 u, u = 2^-24   (~1.5e-5)
    torch.bfloat16: (2.0 ** -6, 2.0 ** -6),   # 4 u,   u = 2^-8    (~1.6e-2)
    torch.float16: (2.0 ** -9, 2.0 ** -9),    # 4 u,   u = 2^-11   (~2.0e-3)
}


def fp_tol(dtype: torch.dtype, *, scale: float = 1.0, growth: float = 1.0) -> dict[str, float]:
    """``dict(rtol=..., atol=...)`` for ``dtype``, for ``torch.testing.assert_close`` and friends."""
    rtol, atol = FP_TOL[dtype]
    return dict(rtol=rtol * growth, atol=atol * growth * scale)


def _coarsest(*dtypes: torch.dtype) -> torch.dtype:
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


def assert_close_fp(actual, expected, dtype: torch.dtype | None = None, *, scale: float | None = None,
                    growth: float = 1.0, **kwargs) -> None:
    """``torch.testing.assert_close`` with the :data:`FP_TOL` tolerance of ``dtype`` (default: the coarser of
    the two tensors' dtypes; pass it for Python floats); ``scale`` defaults to ``max |expected|``. Other keywords
    go to ``assert_close``."""
    if dtype is None:
        if not (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)):
            raise TypeError("assert_close_fp: pass dtype= (the precision the values were computed in)")
        dtype = _coarsest(actual.dtype, expected.dtype)
    actual, expected = (torch.as_tensor(v, dtype=torch.float64) if isinstance(v, float) else torch.as_tensor(v)
                        for v in (actual, expected))
    if scale is None:
        scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, **fp_tol(dtype, scale=scale, growth=growth), **kwargs)

