"""The public contract of vmae2_kernels as a porting user meets it: fp64 exactness, the decoder table's rows,
mask polarity, what ``info`` reports per dtype, and refused empty channel dimensions."""
from __future__ import annotations

import re

import pytest
import torch

import vmae2_kernels as K
from vmae2_kernels import ops

MEAN, STD = K.IMAGENET_DEFAULT_MEAN, K.IMAGENET_DEFAULT_STD


def _patches(video: torch.Tensor, p: int, t: int) -> torch.Tensor:
    """``[B, 3, T, H, W] -> [B, N, t*p*p, 3]``: tokens ``(t, h, w)``, pixels ``(p0 p1 p2)``, channel last."""
    B, C, T, H, W = video.shape
    x = video.reshape(B, C, T // t, t, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(B, -1, t * p * p, C)


def _plain_target(video: torch.Tensor, target: str, p: int = 4, t: int = 2) -> torch.Tensor:
    """The target of every token in plain fp64 torch: ``[B, N, t*p*p*3]``."""
    mean = torch.tensor(MEAN, dtype=video.dtype)[:, None, None, None]
    std = torch.tensor(STD, dtype=video.dtype)[:, None, None, None]
    x = _patches(video * std + mean, p, t)
    if target == "videomae":
        x = (x - x.mean(-2, keepdim=True)) / (x.std(-2, keepdim=True) + 1e-6)
    elif target == "mae":
        x = (x - x.mean((-2, -1), keepdim=True)) / (x.var((-2, -1), keepdim=True) + 1e-6).sqrt()
    return x.flatten(2)


@pytest.mark.parametrize("target", ["raw", "videomae", "mae"])
def test_fp64_loss_is_exact(target):
    """fp64 prediction and video: a prediction equal to the target gives 0 (to fp64 rounding), and a random one the
    plain fp64 loss and gradient to ~1e-15 (an fp32 target is off by ~1e-8)."""
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)
    mask = torch.rand(2, 8) < 0.5
    goal = _plain_target(video, target)
    kw = dict(patch_size=4, tubelet_size=2, target=target, mean=MEAN, std=STD)
    loss = K.recon_loss(goal.clone(), video, None, mask, **kw)
    assert loss.dtype == torch.float64 and loss.abs() < 1e-28

    pred = torch.randn_like(goal, requires_grad=True)
    loss = K.recon_loss(pred, video, None, mask, **kw)
    loss.backward()
    plain = pred.detach().requires_grad_()
    w = mask.double()
    want = (((plain - goal) ** 2).mean(-1) * w).sum() / w.sum()
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(pred.grad, plain.grad, rtol=1e-13, atol=1e-15)


def test_fp64_decoder_input_gradients_are_exact():
    """fp64 gradients of ``x_vis``, ``mask_token`` and a learnable table match plain fp64 torch to ~1e-15."""
    torch.manual_seed(0)
    B, N, D, Nv = 3, 16, 8, 5
    x = torch.randn(B, Nv, D, dtype=torch.float64, requires_grad=True)
    tok = torch.randn(1, 1, D, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(1, N, D, dtype=torch.float64, requires_grad=True)
    vis = K.random_ids(B, N, 1 - Nv / N)
    upstream = torch.randn(B, N, D, dtype=torch.float64)
    (K.decoder_input(x, vis, None, tok, pos) * upstream).sum().backward()
    got = [t.grad.clone() for t in (x, tok, pos)]
    for t in (x, tok, pos):
        t.grad = None
    dec = K.complement_ids(vis, N)
    plain = torch.cat([x + pos[0][vis], tok + pos[0][dec]], dim=1)
    (plain * upstream).sum().backward()
    for g, t in zip(got, (x, tok, pos)):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, t.grad, rtol=1e-14, atol=1e-15)


def test_decoder_table_rows_are_checked_against_num_tokens():
    """A table with a cls row that ``num_prefix`` does not count is refused, naming the table, before any dispatch;
    the same table with ``num_prefix=1`` (and the cls row in ``x_vis``) is accepted."""
    B, N, D, Nv = 2, 8, 4, 3
    vis = K.random_ids(B, N, 1 - Nv / N)
    tok, pos = torch.zeros(D), torch.randn(1, 1 + N, D)
    with pytest.raises(ValueError, match=r"pos \(1, 9, 4\) has 9 rows; num_tokens=8 and num_prefix=0 need 8 .*"
                                         r"num_prefix=1"):
        K.decoder_input(torch.randn(B, Nv, D), vis, None, tok, pos, num_tokens=N)
    out = K.decoder_input(torch.randn(B, 1 + Nv, D), vis, None, tok, pos, num_prefix=1, num_tokens=N)
    assert out.shape == (B, 1 + N, D)
    with pytest.raises(ValueError, match=r"vis_ids has 3 ids per sample but pos \(2, 4\) .* rows for 2 tokens"):
        K.decoder_input(torch.randn(B, Nv, D), vis, None, tok, torch.randn(2, D))


@pytest.mark.parametrize("case", ["inverted", "count"])
def test_mask_to_ids_checks_the_kept_count_in_debug_mode(monkeypatch, case):
    """With ``VMAE2_DEBUG=1`` an inverted mask or a wrong ``num_kept`` is refused, naming the polarity."""
    mask = K.ids_to_mask(K.random_ids(2, 40, 0.75), 40)  # keeps 10, masks 30
    assert K.mask_to_ids(mask, 10).shape == (2, 10)
    bad = (~mask, 10) if case == "inverted" else (mask, 11)
    assert K.mask_to_ids(*bad).shape == (2, bad[1])  # unchecked without debug mode: sync-free
    monkeypatch.setenv("VMAE2_DEBUG", "1")
    assert torch.equal(K.mask_to_ids(mask, 10), K.mask_to_ids(mask))
    with pytest.raises(RuntimeError, match=f"does not keep num_kept={bad[1]} tokens; the mask is True / nonzero = "
                                           f"masked, False / 0 = kept"):
        K.mask_to_ids(*bad)


def test_info_shows_the_choice_per_dtype(monkeypatch):
    """``info`` names the dtypes of its fixed-order choice and sends the fp64 token ops to the reference."""
    from vmae2_kernels import dispatch
    from vmae2_kernels.info import lines

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = lines()
    assert any(line.startswith("cpu: ") and "(float32, bfloat16, float16 tensors;" in line for line in out)
    typed = [op for op in ops.OPS if op not in ops.DTYPE_FREE]
    assert f"cpu float64 tensors: {', '.join(typed)} -> torch (the fused kernels take float32, bfloat16, float16)" in out
    assert all(dispatch.choose(op, "cpu", "auto", torch.float64) == "torch" for op in typed)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_an_empty_channel_dimension_is_refused(backend):
    """``C = 0`` / ``D = 0`` is refused by validation, before any backend runs, naming the value."""
    ids = torch.tensor([[0, 2]])
    empty = torch.zeros(1, 4, 0)
    calls = {
        "x [B, N, C]": lambda: K.token_gather(empty, ids, backend=backend),
        "src [B, K, C]": lambda: K.token_scatter(empty[:, :2], ids, 4, backend=backend),
        "x_vis [B, P + Nv, D]": lambda: K.decoder_input(empty[:, :2], ids, None, torch.zeros(0), torch.zeros(4, 0),
                                                        backend=backend),
        "grad [B, L, D]": lambda: ops.mask_token_grad(empty, 2, backend),
        "weight [C, 3, t, p, p]": lambda: K.patch_embed(torch.zeros(1, 3, 2, 4, 4), ids[:, :1],
                                                        torch.zeros(0, 3, 2, 4, 4), None, backend=backend),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=re.escape(f"{what} has 0 channels; the channel dimension must be >= 1")):
            call()
