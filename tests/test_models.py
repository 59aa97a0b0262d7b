import json
import math
from pathlib import Path

import pytest
import torch

from vmae2 import masking
from vmae2.loss import reconstruction_loss
from vmae2.models import count_parameters, create_model, list_models

# Official state-dict shapes (name -> key -> shape), taken from the official model definitions; kept in the repo.
SHAPES = Path(__file__).parent / "data" / "official_state_dict_shapes.json"
# Official parameter counts (millions, two decimals) from the VideoMAE V2 model definitions.
PARAMS_M = {
    "pretrain_videomae_small_patch16_224": 24.03, "pretrain_videomae_base_patch16_224": 94.21,
    "pretrain_videomae_large_patch16_224": 317.78, "pretrain_videomae_huge_patch16_224": 645.66,
    "pretrain_videomae_giant_patch14_224": 1026.31, "vit_small_patch16_224": 22.03,
    "vit_base_patch16_224": 86.53, "vit_large_patch16_224": 304.27, "vit_huge_patch16_224": 632.12,
    "vit_giant_patch14_224": 1012.17,
}


def _tiny(**kw):
    return create_model("pretrain_videomae_small_patch16_224", num_frames=4, img_size=32, **kw)


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_config_parameter_count_and_keys(name):
    with torch.device("meta"):
        model = create_model(name)
    assert round(count_parameters(model) / 1e6, 2) == PARAMS_M[name]
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert keys == json.loads(SHAPES.read_text())[name]
    assert not any("pos_embed" in k for k in keys)


def test_exact_base_counts():
    with torch.device("meta"):
        assert count_parameters(create_model("vit_base_patch16_224")) == 86_534_800  # as the official log prints
        assert count_parameters(create_model("pretrain_videomae_base_patch16_224")) == 94_210_944


def test_list_and_overrides():
    assert len(list_models()) == 12 and set(PARAMS_M) <= set(list_models())  # + the vmae2-only tiny pair
    with torch.device("meta"):
        m = create_model("vit_huge_patch16_224", num_classes=710, num_frames=8, img_size=160, drop_path_rate=0.2)
        assert m.head.weight.shape == (710, 1280) and m.patch_embed.num_patches == 4 * 10 * 10
        assert m.blocks[-1].drop_path.drop_prob == pytest.approx(0.2) and m.blocks[0].drop_path.drop_prob == 0.0
        g = create_model("pretrain_videomae_giant_patch14_224", decoder_depth=2)
        assert len(g.decoder.blocks) == 2 and g.grid == (8, 16, 16)
        assert g.encoder.blocks[0].attn.head_dim == 88 and g.decoder.blocks[0].attn.head_dim == 64
    with pytest.raises(ValueError, match="unknown model 'vit_tiny'"):
        create_model("vit_tiny")
    with pytest.raises(TypeError, match="decoder_depth"):
        create_model("vit_base_patch16_224", decoder_depth=4)
    with pytest.raises(ValueError, match="num_frames 15"):
        create_model("vit_base_patch16_224", num_frames=15)
    with pytest.raises(ValueError, match="img_size 100"):
        create_model("vit_base_patch16_224", img_size=100)


def test_official_initialisation():
    model = _tiny()
    assert model.mask_token.abs().max() <= 0.02 and model.mask_token.std() > 0.005
    attn = model.encoder.blocks[0].attn
    assert torch.equal(attn.q_bias, torch.zeros_like(attn.q_bias))
    assert torch.equal(model.encoder.blocks[0].mlp.fc1.bias, torch.zeros(1536))
    bound = (6 / (384 + 3 * 384)) ** 0.5  # xavier-uniform of the fused [3D, D] qkv matrix
    assert attn.qkv.weight.abs().max() <= bound and attn.qkv.weight.abs().max() > 0.9 * bound
    ft = create_model("vit_small_patch16_224", num_frames=4, img_size=32, num_classes=5)
    assert 1.5e-5 < ft.head.weight.std() < 2.5e-5  # normal(std 0.02) * init_scale 0.001
    assert not any(k.startswith("norm.") for k in ft.state_dict())


def test_pos_embed_is_official_sinusoid():
    model = _tiny()
    table = model.encoder.pos_embed
    angle = 5 / 10000 ** (6 / 384)  # token 5, dims 6 (sin) and 7 (cos) share the frequency 2*floor(i/2)/d
    assert table[5, 6].item() == pytest.approx(math.sin(angle), abs=1e-7)
    assert table[5, 7].item() == pytest.approx(math.cos(angle), abs=1e-7)
    assert model.decoder_pos_embed.shape == (model.num_patches, 192)


def test_forward_shapes_dual_and_v1():
    model = _tiny().eval()
    B, grid = 3, model.grid  # (2, 2, 2) tokens
    video = torch.randn(B, 3, 4, 32, 32)
    enc = masking.tube_ids(B, grid, 0.5)
    dec = masking.running_cell_ids(B, grid, 0.5)
    assert model(video, enc, dec).shape == (B, 4, 1536)
    assert model(video, enc, None).shape == (B, 4, 1536)  # v1: every encoder-masked token
    enc75 = masking.tube_ids(B, grid, 0.75)
    assert model(video, enc75, None).shape == (B, 6, 1536)


def test_masks_and_ids_give_identical_outputs():
    model = _tiny().eval()
    video = torch.randn(2, 3, 4, 32, 32)
    enc = masking.tube_mask(2, model.grid, 0.5, generator=torch.Generator().manual_seed(1))
    dec = masking.running_cell_mask(2, model.grid, 0.5, phase=1)
    out_masks = model(video, enc, dec)
    out_ids = model(video, masking.mask_to_ids(enc), masking.mask_to_ids(dec))
    assert torch.equal(out_masks, out_ids)  # masks become the same ids, then the same kernels run: bit-exact


def test_mask_tokens_at_encoder_visible_positions():
    """Official quirk: a decoder-visible position the encoder saw still gets a mask token and a prediction."""
    model = _tiny().eval()
    video = torch.randn(1, 3, 4, 32, 32)
    enc = torch.tensor([[0, 1, 2, 3]])
    dec = torch.tensor([[0, 1, 4, 5]])  # 0 and 1 are encoder-visible too
    out = model(video, enc, dec)
    assert out.shape == (1, 4, 1536)
    # The prediction at an encoder-visible position depends on the mask token, not on a copy of the input.
    with torch.no_grad():
        model.mask_token.add_(1.0)
    assert not torch.allclose(out[:, :2], model(video, enc, dec)[:, :2])


@pytest.mark.parametrize("bad,match", [
    (torch.randn(2, 3, 6, 32, 32), "frames"),
    (torch.randn(2, 3, 4, 64, 64), r"\[B, 3, 4, 32, 32\]"),
    (torch.randn(2, 4, 32, 32), "shape"),
])
def test_wrong_video_shape(bad, match):
    model = _tiny()
    enc = masking.tube_ids(2, model.grid, 0.5)
    with pytest.raises(ValueError, match=match):
        model(bad, enc, None)


def test_bad_masks():
    model = _tiny()
    video = torch.randn(2, 3, 4, 32, 32)
    mask = masking.tube_mask(2, model.grid, 0.5)
    uneven = mask.clone()
    uneven[0, uneven[0].nonzero()[0]] = False
    with pytest.raises(ValueError, match="same number"):
        model(video, uneven, None)
    with pytest.raises(ValueError, match="9 tokens per sample"):
        model(video, torch.zeros(2, 9, dtype=torch.bool), None)
    with pytest.raises(ValueError, match="batch"):
        model(video, mask[:1], None)
    with pytest.raises(ValueError, match="a bool or float 0/1 mask, or int64 ids, got dtype torch.uint8"):
        model(video, mask.to(torch.uint8), None)
    torch.manual_seed(0)
    as_bool = model(video, mask, None)
    torch.manual_seed(0)
    assert torch.equal(model(video, mask.float(), None), as_bool)  # a float 0/1 mask (MAE's kind) is the same mask


def test_bf16_autocast_step_runs():
    model = _tiny()
    video = torch.randn(2, 3, 4, 32, 32)
    enc, dec = masking.tube_ids(2, model.grid, 0.5), masking.running_cell_ids(2, model.grid, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(video, enc, dec)
        loss = reconstruction_loss(pred, video, enc, dec, patch_size=16)
    assert pred.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("mode", [True, "attn", "mlp", "every:2", "every:3"])
def test_activation_checkpointing_matches(mode):
    """Every checkpointing mode gives the gradients of the model without it; drop path (random) included: the
    recomputed branches draw the same masks."""
    from oracle.tolerances import assert_close_fp

    torch.manual_seed(0)
    model = create_model("pretrain_videomae_tiny_patch16_224", num_frames=4, img_size=32, drop_path_rate=0.3)
    ckpt = create_model("pretrain_videomae_tiny_patch16_224", num_frames=4, img_size=32, drop_path_rate=0.3,
                        use_checkpoint=mode)
    ckpt.load_state_dict(model.state_dict())
    video = torch.randn(2, 3, 4, 32, 32)
    enc, dec = masking.tube_ids(2, model.grid, 0.5), masking.running_cell_ids(2, model.grid, 0.5)
    grads = []
    for m in (model, ckpt):
        torch.manual_seed(1)
        reconstruction_loss(m(video, enc, dec), video, enc, dec, patch_size=16).backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert_close_fp(a, b)  # recomputed forward, but gradients may accumulate in another order


def test_checkpoint_mode_spellings():
    from vmae2.models.configs import checkpoint_mode

    assert [checkpoint_mode(v) for v in (False, "false", True, "TRUE", "every:1", "every:04", "attn")] == \
        ["none", "none", "full", "full", "full", "every:4", "attn"]
    assert checkpoint_mode("auto", allow_auto=True) == "auto"
    for bad in ("auto", "every:0", "every:x", "attention"):
        with pytest.raises(ValueError, match="choose one of false, true"):
            checkpoint_mode(bad)
    assert _tiny(use_checkpoint="every:2").encoder.use_checkpoint == "every:2"


def test_drop_path_only_in_training():
    model = _tiny(drop_path_rate=0.5)
    video = torch.randn(4, 3, 4, 32, 32)
    enc, dec = masking.tube_ids(4, model.grid, 0.5), masking.running_cell_ids(4, model.grid, 0.5)
    model.eval()
    assert torch.equal(model(video, enc, dec), model(video, enc, dec))  # same kernels rerun: bit-exact
    model.train()
    torch.manual_seed(1)
    a = model(video, enc, dec)
    torch.manual_seed(2)
    assert not torch.equal(a, model(video, enc, dec))


def test_finetune_forward():
    """Logits are the head of ``fc_norm(mean token)``; head dropout acts in training only; ``num_classes=0`` gives
    those features (the same weights, the same bits)."""
    model = create_model("vit_small_patch16_224", num_frames=4, img_size=32, num_classes=7, head_drop_rate=0.5)
    video = torch.randn(3, 3, 4, 32, 32)
    model.eval()
    logits = model(video)
    feats = model.forward_features(video)
    assert logits.shape == (3, 7) and feats.shape == (3, 384)
    assert torch.equal(logits, model.head(feats))  # same kernels on the same features: bit-exact
    # fc_norm output: zero mean, unit variance per clip (LayerNorm weight 1, bias 0 at init)
    torch.testing.assert_close(feats.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(video), logits)  # head dropout 0.5
    backbone = create_model("vit_small_patch16_224", num_frames=4, img_size=32, num_classes=0).eval()
    backbone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    assert torch.equal(backbone(video), feats)


def test_compile_ids_path_has_no_graph_break():
    """The ids path is sync-free: the whole forward+backward traces as one graph."""
    from oracle.tolerances import assert_close_fp

    model = _tiny()
    video = torch.randn(2, 3, 4, 32, 32)
    enc, dec = masking.tube_ids(2, model.grid, 0.5), masking.running_cell_ids(2, model.grid, 0.5)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(video, enc, dec)
    out.float().square().mean().backward()
    assert_close_fp(out, model(video, enc, dec))  # traced (decomposed) ops vs eager
