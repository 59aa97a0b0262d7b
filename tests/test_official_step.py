"""The two arms of the step benchmark compute the same thing.

``benchmarks/test_step_benchmarks.py`` times the official step (``oracle``) against vmae2's
(``benchmarks/official_step.py``); these checks make sure it compares like with like: with identical weights, masks
and inputs (small config) both give the same predictions, loss, gradients, gradient norm and AdamW update, in fp32.
"""
from __future__ import annotations

import pytest
import torch

import oracle as O
from benchmarks.official_step import Vmae2Step, vmae2_optimizer
from oracle.tolerances import FP_TOL
from vmae2 import masking
from vmae2.models import create_model
from vmae2.training.optim import frees_grads_before_backward, param_groups

MODEL = "pretrain_videomae_small_patch16_224"
FRAMES, SIZE, BATCH = 4, 64, 3
REL = FP_TOL[torch.float32][0]  # two fp32 computations of the same math (oracle/tolerances.py)


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial q/v biases, LayerNorm affines and biases (zero at init) so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def make_pair(attn_backend: str = "auto", seed: int = 0):
    torch.manual_seed(seed)
    model = perturb_(create_model(MODEL, num_frames=FRAMES, img_size=SIZE, attn_backend=attn_backend), seed)
    return model, O.official_from_vmae2(model)


def make_inputs(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    enc_ids = masking.tube_ids(BATCH, model.grid, 0.75, generator=g)
    dec_ids = masking.running_cell_ids(BATCH, model.grid, 0.5, generator=g)
    video = torch.randn(BATCH, 3, FRAMES, SIZE, SIZE, generator=g)
    n = model.num_patches
    return video, enc_ids, dec_ids, masking.ids_to_mask(enc_ids, n), masking.ids_to_mask(dec_ids, n)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL, what: str = "") -> None:
    """``max|a - e| <= rel * max|e|`` (elementwise closeness scaled by the tensor's magnitude)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, what
    err, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert err <= rel * max(scale, 1e-30), f"{what}: max abs diff {err:.3e} vs max abs {scale:.3e}"


def test_vmae2_state_dict_loads_strict_and_keys_are_equal():
    model, official = make_pair()
    ours, theirs = model.state_dict(), official.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k]) for k in ours)  # copied
    # the position tables are plain CPU attributes, as in the official code: not part of the state_dict
    assert not any("pos_embed" in k for k in theirs)
    assert official.encoder.pos_embed.device.type == "cpu" and official.pos_embed.shape[1] == model.num_patches
    assert torch.equal(official.encoder.pos_embed[0], model.encoder.pos_embed)
    assert torch.equal(official.pos_embed[0], model.decoder_pos_embed)


def test_official_param_groups_equal_vmae2_param_groups():
    model, official = make_pair()
    names = {id(p): n for n, p in official.named_parameters()}
    names_v = {id(p): n for n, p in model.named_parameters()}
    theirs = [sorted(names[id(p)] for p in g["params"]) for g in O.official_param_groups(official, 0.05)]
    ours = [sorted(names_v[id(p)] for p in g["params"]) for g in param_groups(model, 0.05)]
    assert theirs == ours
    assert "mask_token" in theirs[1] and "encoder.blocks.0.attn.q_bias" in theirs[1]
    assert "encoder.patch_embed.proj.weight" in theirs[0]


@pytest.mark.parametrize("attn_backend", ["auto", "math"])
def test_predictions_loss_and_gradients_match(attn_backend):
    """vmae2's benchmarked configuration (``auto``: SDPA on CPU) and the bit-faithful ``math`` backend."""
    model, official = make_pair(attn_backend)
    video, enc_ids, dec_ids, enc_mask, dec_mask = make_inputs(model)
    ours = Vmae2Step(model, vmae2_optimizer(model, 1e-3), video, enc_ids, dec_ids)
    theirs = O.OfficialStep(official, O.official_optimizer(official, 1e-3), video, enc_mask, dec_mask)
    pred, loss = ours.forward_loss()
    out, ref_loss = theirs.forward_loss()
    assert pred.shape == out.shape == (BATCH, dec_ids.shape[1], 3 * 2 * 16 * 16)
    assert_rel_close(pred, out, what="predictions")
    assert_rel_close(loss, ref_loss, what="loss")
    loss.backward()
    ref_loss.backward()
    theirs_params = dict(official.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and theirs_params[name].grad is not None, name
        assert_rel_close(p.grad, theirs_params[name].grad, what=f"grad of {name}")
    # the gradient norm each engine computes (vmae2: clip_grad_norm_(inf); official: norm of per-tensor norms)
    assert_rel_close(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]),
                     O.total_grad_norm(official.parameters()), what="grad norm")


def test_v1_decoder_mask_none_matches():
    """Without decoder masking (VideoMAE v1): vmae2 ``decoder_mask=None`` vs the engine's ``dec = ~enc``."""
    model, official = make_pair()
    video, enc_ids, _, enc_mask, _ = make_inputs(model)
    pred, loss = Vmae2Step(model, None, video, enc_ids, None).forward_loss()
    out, ref_loss = O.OfficialStep(official, None, video, enc_mask, None).forward_loss()
    assert pred.shape[1] == model.num_patches - enc_ids.shape[1]
    assert_rel_close(pred, out, what="predictions")
    assert_rel_close(loss, ref_loss, what="loss")


def test_full_step_updates_weights_identically():
    """forward + backward + grad norm + AdamW (official groups) twice: same losses, same weights after."""
    lr = 1e-3
    model, official = make_pair()
    video, enc_ids, dec_ids, enc_mask, dec_mask = make_inputs(model)
    ours = Vmae2Step(model, vmae2_optimizer(model, lr), video, enc_ids, dec_ids, norm_every=1)
    theirs = O.OfficialStep(official, O.official_optimizer(official, lr), video, enc_mask, dec_mask)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        value = float(ours.step())
        ref_value = theirs.step()
        assert abs(value - ref_value) <= REL * abs(ref_value)
        assert_rel_close(ours.last_grad_norm, theirs.last_grad_norm, what="grad norm")
    theirs_state = official.state_dict()
    far, total = 0, 0
    for name, p in model.state_dict().items():
        assert not torch.equal(p, before[name]), f"{name} was not updated"
        # AdamW moves a weight by about lr per step whatever its gradient's size, so a gradient within rounding of
        # zero may move either way: nearly every weight must agree to 1e-3 lr, none may be off by 0.1 lr a step.
        diff = (p - theirs_state[name]).abs()
        assert diff.max().item() <= 0.1 * lr * 2, f"{name}: weights differ by {diff.max().item():.2e}"
        far += int((diff > 1e-3 * lr).sum())
        total += diff.numel()
    assert far <= 1e-4 * total, f"{far} of {total} weights differ by more than 1e-3 lr"
    # vmae2 frees gradients (set_to_none): on a CPU just before the next backward, elsewhere right after the step
    assert (model.mask_token.grad is None) != frees_grads_before_backward(video.device)
