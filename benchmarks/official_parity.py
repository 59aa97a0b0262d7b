"""Worst relative difference of vmae2 against the official oracle (oracle/): ViT-S 16x224, batch 2,
fp32, dual masking (tube 0.9, running cell 0.5), perturbed weights; the loss and every parameter's gradient
(Frobenius norm of the difference over the oracle's), for the visible-only patch embedding (the default) and the
official Conv3d order. ``python -m benchmarks.official_parity`` (about a minute on 2 CPU cores)."""

import torch

import oracle as O
from tests.test_official_equivalence import SMALL, SMALL_HEADS, official_masks, oracle_for, perturb_, video_for
from vmae2.loss import reconstruction_loss
from vmae2.models import create_model


def main() -> None:
    torch.manual_seed(0)
    enc, dec = official_masks((8, 14, 14), 2, 0.9, 0.5, seed=11, rows=[0, 2])
    video = video_for(2, 16, 224, seed=2)
    for embed in ("visible", "all"):
        model = perturb_(create_model(SMALL, attn_backend="sdpa", embed_tokens=embed), seed=3)
        oracle, params = oracle_for(model, *SMALL_HEADS, requires_grad=True)
        loss_o = O.official_loss(oracle(video, enc, dec), video, enc, dec, 16)
        names = sorted(params)
        grads_o = dict(zip(names, torch.autograd.grad(loss_o, [params[k] for k in names])))
        loss_v = reconstruction_loss(model(video, enc, dec), video, enc, dec, patch_size=16)
        loss_v.backward()
        got = dict(model.named_parameters())
        rel = {k: ((got[k].grad - grads_o[k]).norm() / grads_o[k].norm()).item() for k in names}
        worst = max(rel, key=rel.get)
        print(f"embed_tokens={embed}: loss {abs(loss_v.item() - loss_o.item()) / abs(loss_o.item()):.2e}, "
              f"worst gradient {rel[worst]:.2e} ({worst}), patch embedding "
              f"{max(v for k, v in rel.items() if 'patch_embed' in k):.2e}")


if __name__ == "__main__":
    main()
