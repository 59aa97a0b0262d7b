"""Attention backends: agreement with the official math path, choice and its reasons.

flash-attn and xformers cannot run on a CPU, so their call paths are exercised through stand-in modules
that implement the documented signatures on top of SDPA and record how they were called.
"""
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from oracle.tolerances import assert_close_fp

from vmae2 import attention
from vmae2.masking import running_cell_ids, tube_ids
from vmae2.models import create_model


@pytest.fixture(autouse=True)
def _fresh_cache():
    attention.reset()
    yield
    attention.reset()


def _qkv(B=2, N=37, H=3, hd=64, dtype=torch.float32):
    return torch.randn(B, N, 3, H, hd, dtype=dtype)


@pytest.mark.parametrize("hd", [64, 80, 88, 24])
def test_sdpa_matches_math(hd):
    qkv = _qkv(hd=hd).requires_grad_()
    scale = hd ** -0.5
    ref = attention.attention(qkv, scale, "math")
    out = attention.attention(qkv, scale, "sdpa")
    assert_close_fp(out, ref)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), qkv)
    (g_out,) = torch.autograd.grad(out.square().sum(), qkv)
    assert_close_fp(g_out, g_ref)


@pytest.mark.parametrize("hd,num_query", [(64, None), (64, 11), (80, None), (24, 5)])
def test_explicit_in_place_matches_math(hd, num_query):
    qkv = _qkv(hd=hd).requires_grad_()
    scale = hd ** -0.5
    ref = attention.attention(qkv, scale, "math", num_query)
    out = attention.attention(qkv, scale, "explicit", num_query)
    assert out.shape == ref.shape == (2, num_query or 37, 3, hd)
    upstream = torch.randn_like(ref).transpose(0, 1).contiguous().transpose(0, 1)  # a non-contiguous gradient
    (g_ref,) = torch.autograd.grad(ref, qkv, upstream)
    (g_out,) = torch.autograd.grad(out, qkv, upstream)
    if hd == 64:  # scale 1/8: scaling the scores instead of q is exact, and every product is the same
        assert torch.equal(out, ref) and torch.equal(g_out, g_ref)
    else:
        assert_close_fp(out, ref)
        assert_close_fp(g_out, g_ref)


def test_explicit_in_place_runs_in_the_autocast_dtype():
    qkv = _qkv(hd=64).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention.attention(qkv, 0.125, "explicit")
        ref = attention.attention(qkv, 0.125, "math")
    assert out.dtype == ref.dtype == torch.bfloat16
    assert_close_fp(out.float(), ref.float(), torch.bfloat16)
    out.float().square().sum().backward()
    assert qkv.grad.dtype == torch.float32 and torch.isfinite(qkv.grad).all()


def test_math_is_official_formula():
    qkv = _qkv(hd=16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    expected = ((q * 16 ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
    # the same ops in the same order on the same inputs: bit-exact
    assert torch.equal(attention.attention(qkv, 16 ** -0.5, "math"), expected.transpose(1, 2))


def test_cpu_auto_choice_and_reasons():
    assert attention.select_backend("cpu", torch.float32, 64) == "sdpa"
    flash = attention.not_supported_reasons("flash", "cpu", torch.float32, 64)
    assert any("device cpu" in r for r in flash) and any("dtype" in r for r in flash)
    assert any("device cpu" in r for r in attention.not_supported_reasons("xformers", "cpu", torch.bfloat16, 64))
    assert attention.not_supported_reasons("sdpa", "cpu", torch.float32, 88) == []
    assert any("head_dim 90" in r for r in attention.not_supported_reasons("flash", "cuda", torch.bfloat16, 90))


def test_forcing_an_unavailable_backend_raises_with_reasons():
    with pytest.raises(RuntimeError, match="flash.*device cpu"):
        attention.attention(_qkv(), 0.125, "flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention.select_backend("cpu", torch.float32, 64, "cudnn")


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(attention.ENV_VAR, "math")
    assert attention.select_backend("cpu", torch.float32, 64) == "math"
    assert attention.select_backend("cpu", torch.float32, 64, "sdpa") == "sdpa"  # explicit beats env
    monkeypatch.setenv(attention.ENV_VAR, "xformers")
    with pytest.raises(RuntimeError, match="xformers"):
        attention.select_backend("cpu", torch.float32, 64)


def test_missing_package_is_a_reason_not_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # makes `import flash_attn` fail
    monkeypatch.setattr(attention, "CUDA_ONLY", {})
    reasons = attention.not_supported_reasons("flash", "cpu", torch.bfloat16, 64)
    assert len(reasons) == 1 and "flash_attn is not importable" in reasons[0]


@pytest.fixture
def stand_ins(monkeypatch):
    """Fake flash_attn / xformers.ops on top of SDPA, allowed on the CPU, recording their calls."""
    calls = []

    def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
        assert qkv.dtype in (torch.float16, torch.bfloat16), "flash-attn only takes fp16/bf16"
        assert qkv.ndim == 5 and qkv.shape[2] == 3, "packed qkv must be [B, N, 3, H, D]"
        calls.append(("flash", qkv.shape, qkv.dtype, softmax_scale, dropout_p, causal))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).float()
        out = F.scaled_dot_product_attention(q, k, v, scale=softmax_scale)
        return out.transpose(1, 2).to(qkv.dtype)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
        assert q.dtype in (torch.float16, torch.bfloat16), "flash-attn only takes fp16/bf16"
        assert q.ndim == 4 and k.shape == v.shape and q.shape[::2] == k.shape[::2], "q [B, Mq, H, D], k/v [B, M, H, D]"
        assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "flash-attn needs the last dimension contiguous"
        calls.append(("flash", q.shape, q.dtype, softmax_scale, dropout_p, causal))
        q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, scale=softmax_scale).transpose(1, 2).to(k.dtype)

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
        assert query.ndim == 4 and key.shape == value.shape and query.shape[::2] == key.shape[::2], \
            "xformers takes query [B, Mq, H, K], key/value [B, M, H, K]"
        calls.append(("xformers", query.shape, query.dtype, scale, p, attn_bias))
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)

    flash = types.ModuleType("flash_attn")
    flash.flash_attn_qkvpacked_func = flash_attn_qkvpacked_func
    flash.flash_attn_func = flash_attn_func
    xops = types.ModuleType("xformers.ops")
    xops.memory_efficient_attention = memory_efficient_attention
    xformers = types.ModuleType("xformers")
    xformers.ops = xops
    monkeypatch.setitem(sys.modules, "flash_attn", flash)
    monkeypatch.setitem(sys.modules, "xformers", xformers)
    monkeypatch.setitem(sys.modules, "xformers.ops", xops)
    monkeypatch.setattr(attention, "CUDA_ONLY", {})
    attention.reset()
    return calls


@pytest.mark.parametrize("hd", [64, 80, 88])
def test_flash_stand_in_plumbing(stand_ins, hd):
    qkv = _qkv(hd=hd, dtype=torch.bfloat16)
    assert attention.select_backend("cpu", torch.bfloat16, hd) == "flash"
    out = attention.attention(qkv, hd ** -0.5)
    ref = attention.attention(qkv.float(), hd ** -0.5, "math")
    assert out.shape == (2, 37, 3, hd) and out.dtype == torch.bfloat16
    assert_close_fp(out.float(), ref, torch.bfloat16)  # fp32 math on the same bf16 inputs, rounded to bf16 once
    name, shape, dtype, scale, p, causal = stand_ins[-1]
    assert name == "flash" and shape == qkv.shape and scale == hd ** -0.5 and p == 0.0 and causal is False


def test_xformers_stand_in_plumbing(stand_ins):
    qkv = _qkv(hd=80)
    # fp32 rules flash out, so auto falls to xformers.
    assert attention.select_backend("cpu", torch.float32, 80) == "xformers"
    out = attention.attention(qkv, 80 ** -0.5)
    assert_close_fp(out, attention.attention(qkv, 80 ** -0.5, "math"))
    name, shape, _, scale, p, bias = stand_ins[-1]
    assert name == "xformers" and shape == (2, 37, 3, 80) and scale == 80 ** -0.5 and p == 0.0 and bias is None


def test_model_under_autocast_uses_flash_stand_in(stand_ins):
    model = create_model("pretrain_videomae_small_patch16_224", num_frames=4, img_size=32)
    video = torch.randn(2, 3, 4, 32, 32)
    enc, dec = tube_ids(2, model.grid, 0.5), running_cell_ids(2, model.grid, 0.5)
    ref = model(video, enc, dec)  # fp32: flash refused, the xformers stand-in runs
    assert {c[0] for c in stand_ins} == {"xformers"}
    stand_ins.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video, enc, dec)
    assert {c[0] for c in stand_ins} == {"flash"}
    assert len(stand_ins) == 12 + 4  # every encoder and decoder block
    # bf16 autocast vs the fp32 model: every GEMM input is rounded to bf16 as well (one more rounding per op, 16
    # blocks); seeds 0-19 reach 0.34-0.51 of the growth-1 bound, so growth 2
    assert_close_fp(out.float(), ref, torch.bfloat16, growth=2)
    report = attention.explain(model, dtype=torch.bfloat16)
    assert [entry["backend"] for entry in report] == ["flash"]


def test_explain_reports_choice_and_refusals():
    model = create_model("pretrain_videomae_small_patch16_224", num_frames=4, img_size=32)
    report = attention.explain(model)
    assert len(report) == 1  # encoder (hd 64) and decoder (hd 64) share one group
    entry = report[0]
    assert entry["backend"] == "sdpa" and entry["head_dim"] == 64
    assert set(entry["refused"]) == {"flash", "xformers"}
    assert entry["measured"] == []  # nothing timed: the suite runs with VMAE2_MEASURE=0
    assert len(entry["modules"]) == 16
    attention.set_backend(model, "flash")
    entry = attention.explain(model)[0]
    assert entry["backend"] is None and "device cpu" in entry["error"]
    with pytest.raises(ValueError, match="unknown"):
        attention.set_backend(model, "fast")


def test_model_backends_agree():
    video = torch.randn(2, 3, 4, 32, 32)
    model = create_model("pretrain_videomae_small_patch16_224", num_frames=4, img_size=32, attn_backend="math")
    enc, dec = tube_ids(2, model.grid, 0.75), running_cell_ids(2, model.grid, 0.5)
    ref = model(video, enc, dec)
    attention.set_backend(model, "sdpa")
    assert_close_fp(model(video, enc, dec), ref)
