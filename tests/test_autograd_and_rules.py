"""Double backward through the loss and the decoder input, the training setup's TF32 flags, and the masking rules'
names."""
import pytest
import torch

import vmae2_kernels as vk
from vmae2_kernels import ops, reference

CASES = [("torch", torch.float64, 1e-12), ("cpp", torch.float32, 1e-4)]  # the native ops take no fp64


def _decoder_case(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    B, N, Nv, D = 2, 12, 4, 8
    perm = torch.stack([torch.randperm(N, generator=g) for _ in range(B)])
    vis, dec = perm[:, :Nv].sort(1).values, perm[:, Nv:].sort(1).values
    x = torch.randn(B, Nv, D, generator=g, dtype=dtype, requires_grad=True)
    tok = torch.randn(1, 1, D, generator=g, dtype=dtype, requires_grad=True)
    pos = torch.randn(N, D, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(B, N, D, generator=g, dtype=dtype)
    return x, vis, dec, tok, pos, w


def _penalty_grads(build, x, tok, pos, w):
    """A gradient penalty: d/d(x, tok, pos) of |d loss / d(x, tok, pos)|^2, with a loss quadratic in the output."""
    out = build(x, tok, pos)
    loss = (out.pow(2) * w).sum()
    grads = torch.autograd.grad(loss, (x, tok, pos), create_graph=True)
    penalty = sum(g.pow(2).sum() for g in grads)
    return torch.autograd.grad(penalty, (x, tok, pos))


@pytest.mark.parametrize("backend, dtype, tol", CASES)
def test_decoder_input_double_backward_matches_reference(backend, dtype, tol):
    x, vis, dec, tok, pos, w = _decoder_case(dtype)
    got = _penalty_grads(lambda a, t, p: ops.decoder_input(a, vis, dec, t, p, backend), x, tok, pos, w)
    want = _penalty_grads(lambda a, t, p: reference.decoder_input(a, vis, dec, t, p), x, tok, pos, w)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


def test_decoder_input_first_backward_unchanged():
    x, vis, dec, tok, pos, w = _decoder_case(torch.float32)
    got = torch.autograd.grad((ops.decoder_input(x, vis, dec, tok, pos, "torch") * w).sum(), (x, tok, pos))
    want = torch.autograd.grad((reference.decoder_input(x, vis, dec, tok, pos) * w).sum(), (x, tok, pos))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)
        assert not g.requires_grad


def _loss_case(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    B, T, H, W, p, t = 2, 4, 8, 8, 4, 2
    video = torch.randn(B, 3, T, H, W, generator=g, dtype=dtype)
    N = (T // t) * (H // p) * (W // p)
    dec = torch.stack([torch.randperm(N, generator=g)[:5].sort().values for _ in range(B)])
    pred = torch.randn(B, 5, 3 * t * p * p, generator=g, dtype=dtype, requires_grad=True)
    weights = (torch.rand(B, 5, generator=g) > 0.3).to(dtype)
    weights[:, 0] = 1
    return pred, video, dec, weights, (p, t, reference.TARGETS["videomae"], [0.0] * 3, [1.0] * 3)


@pytest.mark.parametrize("backend, dtype, tol", CASES)
def test_recon_loss_double_backward_matches_reference(backend, dtype, tol):
    pred, video, dec, weights, config = _loss_case(dtype)
    v = torch.randn_like(pred)

    def hvp(loss_fn):
        loss = loss_fn(pred, video, dec, weights, *config)
        (grad,) = torch.autograd.grad(loss * 3.0, pred, create_graph=True)
        return torch.autograd.grad((grad * v).sum() + grad.pow(2).sum(), pred)[0]

    got = hvp(lambda *a: ops.recon_loss(*a, backend))
    want = hvp(reference.recon_loss)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_recon_loss_first_backward_unchanged():
    pred, video, dec, weights, config = _loss_case()
    (got,) = torch.autograd.grad(ops.recon_loss(pred, video, dec, weights, *config, "torch"), pred)
    (want,) = torch.autograd.grad(reference.recon_loss(pred, video, dec, weights, *config), pred)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    assert not got.requires_grad


def test_training_setup_sets_the_stated_tf32_flags():
    from vmae2.cli import parse_config
    from vmae2.train import PRETRAIN
    from vmae2.training.loop import setup

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, True
        setup(parse_config(["--device", "cpu"], PRETRAIN))
        assert torch.backends.cudnn.allow_tf32 is True  # Conv3d patch embedding: TF32, as the official code
        assert torch.backends.cuda.matmul.allow_tf32 is False  # F.linear / matmul: full fp32
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("alias, rule", [("mae", "floor_kept"), ("videomae", "floor_masked")])
def test_keep_rule_names_equal_their_aliases(alias, rule):
    assert vk.KEEP_ALIASES[alias] == rule
    for n, r in [(392, 0.9), (48, 0.6), (1568, 0.75), (10, 0.0)]:
        assert vk.keep_count(n, r, rule) == vk.keep_count(n, r, alias)
    noise = torch.rand(3, 392, generator=torch.Generator().manual_seed(2))
    assert torch.equal(vk.random_ids(3, 392, 0.9, noise, keep=rule), vk.random_ids(3, 392, 0.9, noise, keep=alias))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(vk.tube_ids(2, (2, 4, 4), 0.9, g(), keep=rule), vk.tube_ids(2, (2, 4, 4), 0.9, g(), keep=alias))


def test_keep_rules_round_as_documented():
    assert vk.keep_count(392, 0.9, "floor_kept") == 39  # int(392 * 0.1) = int(39.19...)
    assert vk.keep_count(392, 0.9, "floor_masked") == 40  # 392 - int(352.8)
    with pytest.raises(ValueError, match="keep='timm' is unknown; choose one of \\('floor_kept', 'floor_masked'\\)"):
        vk.keep_count(8, 0.5, "timm")


def test_keep_noise_largest_keeps_the_top_of_the_sort():
    noise = torch.rand(4, 50, generator=torch.Generator().manual_seed(4))
    largest = vk.random_ids(4, 50, 0.6, noise, keep_noise="largest")
    assert torch.equal(largest, vk.random_ids(4, 50, 0.6, -noise))
    assert torch.equal(largest, noise.topk(20, dim=1).indices.sort(1).values)
    assert torch.equal(vk.random_ids(4, 50, 0.6, noise), vk.random_ids(4, 50, 0.6, noise, keep_noise="smallest"))
    with pytest.raises(ValueError, match="keep_noise='top' is unknown; choose one of \\('smallest', 'largest'\\)"):
        vk.random_ids(4, 50, 0.6, noise, keep_noise="top")
