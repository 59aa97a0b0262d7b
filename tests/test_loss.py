import oracle as O
import pytest
import torch
from oracle.tolerances import assert_close_fp

from vmae2 import masking
from vmae2.loss import denormalize_patches, normalize_patches, patchify, reconstruction_loss, reconstruction_target

GRID = (2, 2, 3)  # T'=2, H'=2, W'=3 tokens from a [B, 3, 4, 32, 48] clip with 16x16 patches


def _setup(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, 3, 4, 32, 48, generator=g)
    enc = masking.random_mask(B, GRID, 0.5, generator=g)
    dec = masking.random_mask(B, GRID, 0.5, generator=g)
    return video, enc, dec


def test_patchify_layout():
    video = torch.arange(1 * 3 * 2 * 4 * 4, dtype=torch.float32).reshape(1, 3, 2, 4, 4)
    patches = patchify(video, patch_size=2, tubelet_size=2)  # [1, 4, 8, 3]
    assert patches.shape == (1, 4, 8, 3)
    # token 1 = (t0, h0, w1); pixel 3 = (p0=0, p1=1, p2=1); channel 2
    assert patches[0, 1, 3, 2] == video[0, 2, 0, 1, 3]  # patchify is a reshape/permute: data movement
    assert patches[0, 2, 4, 0] == video[0, 0, 1, 2, 0]


def test_normalisation_uses_unbiased_std_plus_eps():
    x = torch.tensor([[[1.0], [2.0], [3.0], [6.0]]])
    out = normalize_patches(x)
    expected = (x - 3.0) / (torch.tensor(14 / 3).sqrt() + 1e-6)
    assert_close_fp(out, expected)


def test_denormalize_inverts_normalize():
    x = torch.randn(2, 5, 8, 3, generator=torch.Generator().manual_seed(0)) * 3 + 1
    x[0, 1] = 0.25  # a flat patch: std 0, the eps alone scales it
    assert_close_fp(denormalize_patches(normalize_patches(x), x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_loss_matches_official_oracle(dtype):
    video, enc, dec = _setup()
    pred = torch.randn(3, 6, 1536).to(dtype)
    loss = reconstruction_loss(pred, video, enc, dec, patch_size=16)
    ref = O.official_loss(pred, video, enc, dec, 16)
    assert loss.dtype == torch.float32
    assert_close_fp(loss, ref)  # fp32 accumulation whatever pred's dtype


def test_targets_are_fp32_for_low_precision_pred():
    video, enc, dec = _setup()
    pred = torch.randn(3, 6, 1536)
    loss_bf16 = reconstruction_loss(pred.bfloat16(), video, enc, dec, patch_size=16)
    loss_f32 = reconstruction_loss(pred.bfloat16().float(), video, enc, dec, patch_size=16)
    assert torch.equal(loss_bf16, loss_f32)  # pred is upcast first, then the same fp32 kernel runs: bit-exact


def test_ids_and_masks_agree():
    video, enc, dec = _setup()
    pred = torch.randn(3, 6, 1536)
    a = reconstruction_loss(pred, video, enc, dec, patch_size=16)
    b = reconstruction_loss(pred, video, masking.mask_to_ids(enc), masking.mask_to_ids(dec), patch_size=16)
    assert torch.equal(a, b)  # masks become the same ids, then the same kernels run: bit-exact
    c = reconstruction_loss(pred, video, enc.float(), dec.float(), patch_size=16)  # float 0/1 masks (MAE's kind)
    assert torch.equal(a, c)


def test_v1_and_loss_on_all():
    video, enc, _ = _setup()
    pred = torch.randn(3, 6, 1536)
    v1 = reconstruction_loss(pred, video, enc, None, patch_size=16)
    assert_close_fp(v1, O.official_loss(pred, video, enc, ~enc, 16))
    dec_ids = masking.random_ids(3, GRID, 0.5, generator=torch.Generator().manual_seed(5))
    target = reconstruction_target(video, dec_ids, patch_size=16)
    every = reconstruction_loss(pred, video, enc, dec_ids, patch_size=16, loss_on="all")
    assert_close_fp(every, (pred - target).pow(2).mean())


def test_gradient_wrt_pred():
    video, enc, dec = _setup()
    pred = torch.randn(3, 6, 1536, requires_grad=True)
    reconstruction_loss(pred, video, enc, dec, patch_size=16).backward()
    dec_ids = masking.mask_to_ids(dec)
    target = reconstruction_target(video, dec_ids, patch_size=16)
    w = torch.gather(enc, 1, dec_ids).float()
    expected = 2 * (pred.detach() - target) * w[..., None] / (1536 * w.sum())
    assert_close_fp(pred.grad, expected)


def test_unnormalised_target():
    video, enc, dec = _setup()
    dec_ids = masking.mask_to_ids(dec)
    target = reconstruction_target(video, dec_ids, patch_size=16, normalize_target=False)
    full = O.official_targets(video, 16, normalize=False)  # [3, 12, 1536]
    assert_close_fp(target, torch.gather(full, 1, dec_ids[..., None].expand(-1, -1, 1536)))


def test_bad_inputs():
    video, enc, dec = _setup()
    with pytest.raises(ValueError, match="pred"):
        reconstruction_loss(torch.randn(3, 5, 1536), video, enc, dec, patch_size=16)
    with pytest.raises(ValueError, match="loss_on"):
        reconstruction_loss(torch.randn(3, 6, 1536), video, enc, dec, patch_size=16, loss_on="some")
    with pytest.raises(ValueError, match="video"):
        reconstruction_loss(torch.randn(3, 6, 1536), video[0], enc, dec, patch_size=16)
