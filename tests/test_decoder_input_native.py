"""The CUDA ``decoder_input`` reads the position table in its own dtype and writes the promoted dtype once (no fp32
copy of the table, no fp32 output converted after). Checked in the binding's source here; on a GPU with the CUDA
build, every dtype combination against the reference, bit for bit (one rounding of fp32 sums, as torch's)."""
import itertools
import re
from pathlib import Path

import pytest
import torch
from oracle.tolerances import assert_close_fp

ROOT = Path(__file__).resolve().parents[1]
BINDING = (ROOT / "csrc" / "cuda" / "vmae2_cuda_binding.cpp").read_text()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _decoder_input_body() -> str:
    start = BINDING.index("at::Tensor decoder_input(")
    return BINDING[start:BINDING.index("\n}\n", start)]


def test_binding_reads_the_table_natively_and_writes_the_promoted_dtype_once():
    body = _decoder_input_body()
    assert not re.search(r"pos_in\.to\(", body), "the table is converted before the kernel reads it"
    assert ".to(out_type)" not in body and "dtype(at::kFloat)" not in body, "the output is converted after"
    assert "dtype_of(pos, " in body and "x.options().dtype(out_type)" in body


def _cuda_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    from vmae2_kernels import dispatch

    return "; ".join(dispatch.not_supported_reasons("cuda", "decoder_input", "cuda")) or None


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_reason() is not None, reason=f"CUDA ops unavailable: {_cuda_reason()}")
@pytest.mark.parametrize("x_dtype,tok_dtype,pos_dtype", list(itertools.product(DTYPES, repeat=3)))
def test_cuda_decoder_input_every_dtype_is_the_reference(x_dtype, tok_dtype, pos_dtype):
    import vmae2_kernels as K
    from vmae2_kernels import reference as R

    g, dev = torch.Generator().manual_seed(0), torch.device("cuda")
    B, N, D, Nv, Nd = 3, 40, 100, 7, 20
    x = torch.randn(B, Nv, D, generator=g).to(dev, x_dtype)
    token = torch.randn(D, generator=g).to(dev, tok_dtype)
    pos = torch.randn(N, D, generator=g).to(dev, pos_dtype)
    vis = torch.stack([torch.randperm(N, generator=g)[:Nv] for _ in range(B)]).to(dev)
    dec = torch.stack([torch.randperm(N, generator=g)[:Nd] for _ in range(B)]).to(dev)
    out = K.decoder_input(x, vis, dec, token, pos, backend="cuda")
    ref = R.decoder_input(x, vis, dec, token, pos)
    assert out.dtype == ref.dtype
    p = pos.double()
    exact = torch.cat([x.double() + p[vis], token.double().reshape(1, 1, D) + p[dec]], 1)
    assert_close_fp(out.double(), exact, out.dtype)  # fp32 sums, one rounding to the output dtype
    if x_dtype == tok_dtype == pos_dtype:  # torch rounds once too: the same bits
        assert torch.equal(out, ref)
