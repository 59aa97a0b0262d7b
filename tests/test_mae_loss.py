"""``vmae2_kernels.recon_loss`` for MAE codebases: MAE's ``norm_pix_loss`` and raw targets, images,
masks as MAE gives them (float 0/1, every token predicted), the decoder's mask in place of its ids, and no silent
defaults for the target convention. The oracle is MAE's loss restated from its definition."""
import pytest
import torch
from oracle.tolerances import assert_close_fp

import vmae2_kernels as K
from vmae2_kernels import dispatch

BACKENDS = ["torch"] + [pytest.param(b, marks=pytest.mark.skipif(
    bool(r := dispatch.not_supported_reasons(b, "recon_loss", "cpu", torch.float32)), reason=f"{b}: {r}"))
    for b in ("triton", "cpp")]


def mae_loss(imgs, pred, mask, p, norm_pix_loss):
    """MAE's loss from its definition: patches ``(h, w)`` in row-major order, each flattened ``(p, q, c)``; with
    ``norm_pix_loss`` every patch normalised by its own mean and unbiased variance over all its values (``eps`` 1e-6
    in the square root); squared error averaged per patch, then over the masked patches (``mask`` 1 = removed)."""
    B, C, H, W = imgs.shape
    h, w = H // p, W // p
    target = imgs.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, p * p * C)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def _mae_batch(B=3, H=32, W=48, p=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(B, 3, H, W, generator=g)  # MAE's input: ImageNet-normalised images
    L = (H // p) * (W // p)
    pred = torch.randn(B, L, p * p * 3, generator=g, requires_grad=True)
    noise = torch.rand(B, L, generator=g)
    mask = (noise.argsort(1).argsort(1) >= L // 4).float()  # MAE's float mask: 1 = removed, 3/4 of the patches
    return imgs, pred, mask, p


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_pix_loss, target", [(True, "mae"), (False, "raw")])
def test_mae_loss_on_images_with_mae_masks(backend, norm_pix_loss, target):
    imgs, pred, mask, p = _mae_batch()
    expected = mae_loss(imgs, pred, mask, p, norm_pix_loss)
    loss = K.recon_loss(pred, imgs, None, mask, patch_size=p, tubelet_size=1, target=target, backend=backend)
    assert_close_fp(loss, expected)
    assert_close_fp(torch.autograd.grad(loss, pred)[0], torch.autograd.grad(expected, pred)[0])


def test_the_videomae_target_is_not_the_mae_target():
    """Per channel with eps on the std is another target than per patch with eps on the variance: the two
    conventions must be named, not defaulted."""
    imgs, pred, mask, p = _mae_batch()
    kw = dict(patch_size=p, tubelet_size=1)
    mae = K.recon_loss(pred, imgs, None, mask, target="mae", **kw)
    videomae = K.recon_loss(pred, imgs, None, mask, target="videomae", **kw)
    assert abs(mae.item() - videomae.item()) > 1e-4 * mae.item()
    with pytest.raises(ValueError, match=r"recon_loss needs target= one of \['mae', 'raw', 'videomae'\], got None"):
        K.recon_loss(pred, imgs, None, mask, **kw)
    with pytest.raises(ValueError, match="pass both mean= and std="):
        K.recon_loss(pred, imgs, None, mask, target="raw", mean=K.IMAGENET_DEFAULT_MEAN, **kw)


def test_mean_and_std_undo_the_input_normalisation():
    imgs, pred, mask, p = _mae_batch()
    mean, std = torch.tensor(K.IMAGENET_DEFAULT_MEAN), torch.tensor(K.IMAGENET_DEFAULT_STD)
    pixels = imgs * std[:, None, None] + mean[:, None, None]
    loss = K.recon_loss(pred, imgs, None, mask, patch_size=p, tubelet_size=1, target="raw",
                        mean=K.IMAGENET_DEFAULT_MEAN, std=K.IMAGENET_DEFAULT_STD)
    assert_close_fp(loss, mae_loss(pixels, pred, mask, p, False))


def test_images_need_tubelet_size_1():
    imgs, pred, mask, p = _mae_batch()
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\] have one frame: pass tubelet_size=1 \(got 2\)"):
        K.recon_loss(pred, imgs, None, mask, patch_size=p, target="mae")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_and_decoder_forms_agree(backend):
    """Float 0/1 and bool masks are the same mask; a decoder mask names the same rows as its ids; ``dec_ids=None``
    is every token in order."""
    B, T, H, W, p = 2, 4, 32, 32, 16
    N = (T // 2) * (H // p) * (W // p)
    g = torch.Generator().manual_seed(1)
    video = torch.randn(B, 3, T, H, W, generator=g)
    enc_mask = torch.rand(B, N, generator=g) < 0.6
    enc_mask[:, 0] = True
    dec_mask = torch.ones(B, N, dtype=torch.bool)
    dec_mask[:, ::2] = False  # decode the even tokens
    dec_ids = torch.arange(0, N, 2).expand(B, -1)
    pred = torch.randn(B, N // 2, 2 * p * p * 3, generator=g)
    kw = dict(patch_size=p, target="videomae", mean=K.IMAGENET_DEFAULT_MEAN, std=K.IMAGENET_DEFAULT_STD,
              backend=backend)
    by_ids = K.recon_loss(pred, video, dec_ids, enc_mask, **kw)
    assert torch.equal(K.recon_loss(pred, video, dec_ids, enc_mask.float(), **kw), by_ids)
    assert torch.equal(K.recon_loss(pred, video, dec_mask, enc_mask, **kw), by_ids)
    assert torch.equal(K.recon_loss(pred, video, dec_mask.float(), enc_mask.float(), **kw), by_ids)
    full = torch.randn(B, N, 2 * p * p * 3, generator=g)
    assert torch.equal(K.recon_loss(full, video, None, enc_mask, **kw),
                       K.recon_loss(full, video, torch.arange(N).expand(B, -1), enc_mask, **kw))
