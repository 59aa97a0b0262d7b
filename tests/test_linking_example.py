"""The README/docs worked example (examples/link_official_mae.py) against the independent official oracle."""
import importlib.util
from pathlib import Path

import oracle as O
import pytest
import torch
from oracle.tolerances import assert_close_fp

from vmae2 import masking
from vmae2.models import create_model
from vmae2_kernels import dispatch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "link_official_mae.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("link_official_mae", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_example_matches_official_oracle(monkeypatch, backend):
    if backend == "triton":
        pytest.importorskip("vmae2_kernels.triton_ops", reason="triton is not installed")
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    dispatch.reset()
    example = _load_example()
    torch.manual_seed(0)
    model = create_model("pretrain_videomae_small_patch16_224", num_frames=4, img_size=64, attn_backend="math")
    for p in model.parameters():  # move every weight off its init so nothing is trivially zero
        p.data.add_(0.01 * torch.randn_like(p))
    video = torch.randn(3, 3, 4, 64, 64)
    g = torch.Generator().manual_seed(1)
    enc_mask = masking.tube_mask(3, model.grid, 0.75, generator=g)
    dec_mask = masking.running_cell_mask(3, model.grid, 0.5, generator=g)
    enc_pos, dec_pos = model.encoder.pos_embed[None], model.decoder_pos_embed[None]

    pred_k, loss_k = example.kernel_step(model, enc_pos, dec_pos, video, enc_mask, dec_mask, 16, 8, 16)
    pred_e, loss_e = example.official_step(model, enc_pos, dec_pos, video, enc_mask, dec_mask, 16)
    oracle = O.OfficialPretrainOracle(dict(model.state_dict()), 6, 3)
    pred_o = oracle(video, enc_mask, dec_mask)
    loss_o = O.official_loss(pred_o, video, enc_mask, dec_mask, 16)

    assert_close_fp(pred_k, pred_o)
    assert_close_fp(pred_e, pred_o)
    assert_close_fp(loss_k, loss_o)
    assert_close_fp(loss_e, loss_o)
    dispatch.reset()
