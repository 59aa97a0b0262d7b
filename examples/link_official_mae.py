"""Worked example: putting vmae2_kernels into an official-style VideoMAE V2 forward and loss.

``official_step`` is the shape of the official code path (boolean gathers, full-size targets);
``kernel_step`` is the same computation with the four replacements marked ``# vmae2_kernels``. Both run on
the submodules of any model with the official structure (``encoder.patch_embed``, ``encoder.blocks``,
``encoder.norm``, ``encoder_to_decoder``, ``mask_token``, ``decoder.blocks``, ``decoder.norm``,
``decoder.head``) and the two fixed sinusoid tables. Run ``python examples/link_official_mae.py``.
"""
from __future__ import annotations

import torch

import vmae2_kernels as vk

MEAN, STD = vk.IMAGENET_DEFAULT_MEAN, vk.IMAGENET_DEFAULT_STD


def official_step(model, enc_pos, dec_pos, video, enc_mask, dec_mask, patch_size):
    """Official style: ``enc_mask``/``dec_mask`` ``[B, N]`` bool, True = masked."""
    B = video.shape[0]
    x = model.encoder.patch_embed(video) + enc_pos
    x_vis = x[~enc_mask].reshape(B, -1, x.shape[-1])  # host sync + graph break
    for blk in model.encoder.blocks:
        x_vis = blk(x_vis)
    x_vis = model.encoder_to_decoder(model.encoder.norm(x_vis))
    pos = dec_pos.expand(B, -1, -1)
    pos_vis = pos[~enc_mask].reshape(B, -1, pos.shape[-1])
    pos_dec = pos[~dec_mask].reshape(B, -1, pos.shape[-1])
    x = torch.cat([x_vis + pos_vis, model.mask_token + pos_dec], dim=1)
    for blk in model.decoder.blocks:
        x = blk(x)
    n_dec = pos_dec.shape[1]
    pred = model.decoder.head(model.decoder.norm(x[:, -n_dec:]))
    # Loss: the full normalised target for all N patches, then boolean selection.
    u = video * torch.tensor(STD).view(1, 3, 1, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1, 1)
    Bc, C, T, H, W = u.shape
    p = patch_size
    u = u.reshape(Bc, C, T // 2, 2, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(Bc, -1, 2 * p * p, C)
    target = (u - u.mean(-2, keepdim=True)) / (u.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    target = target.reshape(Bc, target.shape[1], -1)
    labels = target[~dec_mask].reshape(B, n_dec, -1)
    weights = enc_mask[~dec_mask].reshape(B, -1).float()
    loss = (((pred - labels) ** 2).mean(-1) * weights).sum() / weights.sum()
    return pred, loss


def kernel_step(model, enc_pos, dec_pos, video, enc_mask, dec_mask, patch_size, num_visible, num_decoded):
    """The same step on vmae2_kernels. ``num_visible``/``num_decoded`` are known from the mask ratios, so the
    bool -> ids conversion needs no host sync (or build ids directly with ``vk.tube_ids``/``vk.running_cell_ids``)."""
    vis_ids = vk.mask_to_ids(enc_mask, num_visible)  # vmae2_kernels: sorted ids, no sync
    dec_ids = vk.mask_to_ids(dec_mask, num_decoded)  # vmae2_kernels
    proj = model.encoder.patch_embed.proj  # the Conv3d: its weight and bias embed the visible tubelets alone
    x_vis = vk.patch_embed(video, vis_ids, proj.weight, proj.bias, enc_pos[0])  # vmae2_kernels: + pos, no drop
    for blk in model.encoder.blocks:
        x_vis = blk(x_vis)
    x_vis = model.encoder_to_decoder(model.encoder.norm(x_vis))
    x = vk.decoder_input(x_vis, vis_ids, dec_ids, model.mask_token, dec_pos[0])  # vmae2_kernels: one launch
    for blk in model.decoder.blocks:
        x = blk(x)
    pred = model.decoder.head(model.decoder.norm(x[:, -num_decoded:]))
    loss = vk.recon_loss(pred, video, dec_ids, enc_mask, patch_size=patch_size, target="videomae",  # vmae2_kernels
                         mean=vk.IMAGENET_DEFAULT_MEAN, std=vk.IMAGENET_DEFAULT_STD)                # fused loss
    return pred, loss


def main() -> None:
    from vmae2 import masking
    from vmae2.models import create_model

    torch.manual_seed(0)
    model = create_model("pretrain_videomae_small_patch16_224", num_frames=4, img_size=64, attn_backend="math")
    enc_pos, dec_pos = model.encoder.pos_embed[None], model.decoder_pos_embed[None]
    video = torch.randn(2, 3, 4, 64, 64)
    enc_mask = masking.tube_mask(2, model.grid, 0.75)
    dec_mask = masking.running_cell_mask(2, model.grid, 0.5)
    pred_o, loss_o = official_step(model, enc_pos, dec_pos, video, enc_mask, dec_mask, 16)
    pred_k, loss_k = kernel_step(model, enc_pos, dec_pos, video, enc_mask, dec_mask, 16, num_visible=8,
                                 num_decoded=16)
    print(f"loss official {loss_o.item():.6f}  kernels {loss_k.item():.6f}  "
          f"max |pred diff| {(pred_o - pred_k).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
