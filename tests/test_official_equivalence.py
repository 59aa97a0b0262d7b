"""vmae2 versus an independent re-statement of the official VideoMAE V2 pretraining code.

The oracle (``oracle/``) is written from the behaviour documented in
the project's reference notes on the official VideoMAE V2 code; vmae2's model and loss are only called, never mirrored.
Masks for the model tests come from the oracle's numpy generators, so they do not depend on vmae2.masking.
"""
from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import numpy as np
import oracle as O
import pytest
import torch

from vmae2 import masking
from vmae2.loss import reconstruction_loss
from vmae2.models import SIZES, PretrainVisionTransformer, ViTConfig, create_model

SHAPES_JSON = Path(__file__).parent / "data" / "official_state_dict_shapes.json"
BACKENDS = ["math", "sdpa"]
PRED_ATOL = 1e-5
PRED_RTOL = 1e-5
LOSS_RTOL = 1e-5


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------

def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its init (zero biases, unit LN weights, zero q/v bias, tiny
    mask token) so each one visibly influences the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                p.copy_(1.0 + 0.2 * noise)
            elif name == "mask_token":
                p.copy_(0.5 * noise)
            else:
                p.add_(0.05 * noise)
    return model


def oracle_for(model, num_heads, decoder_num_heads, variant=None, requires_grad=False):
    """Oracle on a snapshot of ``model``'s weights (independent leaf copies when ``requires_grad``)."""
    if requires_grad:
        params = {k: v.detach().clone().requires_grad_() for k, v in model.state_dict().items()}
    else:
        params = {k: v.detach() for k, v in model.state_dict().items()}
    return O.OfficialPretrainOracle(params, num_heads, decoder_num_heads, variant=variant), params


def official_masks(grid, batch, enc_ratio, dec_ratio, seed, rows=None):
    """(encoder mask, decoder mask) as the official engine would build them, ``[B, N]`` bool."""
    rng = np.random.default_rng(seed)
    tube = O.TubeGenerator(grid, enc_ratio)
    enc = O.batch_masks([tube.from_frame(tube.shuffled_frame(rng)) for _ in range(batch)])
    cell = O.RunningCellGenerator(grid, dec_ratio)
    rows = [int(r) for r in rng.integers(0, 4, batch)] if rows is None else rows
    dec = O.batch_masks([cell.row(r) for r in rows])
    return enc, dec


def video_for(batch, frames, size, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, size, size, generator=g, dtype=dtype)


def rel_diff(a, b):
    a, b = float(a.detach()) if torch.is_tensor(a) else a, float(b.detach()) if torch.is_tensor(b) else b
    return abs(a - b) / abs(b)


def assert_pred_close(actual, expected, atol=PRED_ATOL, rtol=PRED_RTOL):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def load_official_shapes():
    with open(SHAPES_JSON) as f:
        return json.load(f)


# Small official config used by most tests: ViT-S/16, 6 frames at 96x96 -> grid (3, 6, 6) = 108 tokens.
# T' = 3 (not a multiple of the running-cell period 4) makes the supervised-token count differ
# between samples, so a per-sample-mean reduction would be noticed.
SMALL = "pretrain_videomae_small_patch16_224"
SMALL_FRAMES, SMALL_SIZE, SMALL_GRID = 6, 96, (3, 6, 6)
SMALL_HEADS = O.OFFICIAL_SIZES[SMALL][3], O.OFFICIAL_SIZES[SMALL][6]


@functools.lru_cache(maxsize=None)
def small_model(backend, seed=0):
    """Built once per (backend, seed) and shared: tests must not modify it (deep-copy first)."""
    torch.manual_seed(seed)
    model = create_model(SMALL, num_frames=SMALL_FRAMES, img_size=SMALL_SIZE, attn_backend=backend)
    return perturb_(model, seed).eval()


def small_case(batch=3, seed=0):
    enc, dec = official_masks(SMALL_GRID, batch, 0.75, 0.5, seed=seed, rows=[0, 1, 3][:batch])
    video = video_for(batch, SMALL_FRAMES, SMALL_SIZE, seed)
    return video, enc, dec


# ---------------------------------------------------------------------------------------------------
# the oracle checked against the reference document itself
# ---------------------------------------------------------------------------------------------------

def test_oracle_sinusoid_table_matches_reference_formula():
    n, d = 50, 10
    table = O.sinusoid_table(n, d)
    assert table.shape == (1, n, d) and table.dtype == torch.float32
    assert torch.equal(table[0, 0], torch.tensor([0.0, 1.0] * (d // 2)))
    for pos in (1, 7, 49):
        for i in range(d):
            angle = pos / 10000 ** (2 * (i // 2) / d)
            expect = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(float(table[0, pos, i]) - expect) < 1e-7


def test_oracle_patch_layout_matches_reference_index_formula():
    b, t, h, w, p = 2, 4, 6, 9, 3
    video = torch.arange(b * 3 * t * h * w, dtype=torch.float64).reshape(b, 3, t, h, w)
    patches = O.to_patches(video, p, 2)
    hp, wp = h // p, w // p
    assert patches.shape == (b, (t // 2) * hp * wp, 2 * p * p, 3)
    flat = patches.reshape(b, patches.shape[1], -1)
    rng = np.random.default_rng(0)
    for _ in range(200):
        bi, n, f = int(rng.integers(b)), int(rng.integers(flat.shape[1])), int(rng.integers(flat.shape[2]))
        ti, rem = divmod(n, hp * wp)
        hi, wi = divmod(rem, wp)
        c = f % 3
        p2 = (f // 3) % p
        p1 = (f // (3 * p)) % p
        p0 = f // (3 * p * p)
        assert flat[bi, n, f] == video[bi, c, 2 * ti + p0, p * hi + p1, p * wi + p2]


def test_oracle_running_cell_procedure_matches_reference_patterns():
    # reference 1.3: rho=0.5, row 0, decoder-visible slots: t0 {TR,BL}, t1 {TL,TR}, t2 {TL,BR}, t3 {BL,BR}
    gen = O.RunningCellGenerator((8, 2, 2), 0.5)
    visible = [set(np.flatnonzero(gen.all_mask_maps[0, t] == 0)) for t in range(5)]
    assert visible[:4] == [{1, 2}, {0, 1}, {0, 3}, {2, 3}] and visible[4] == visible[0]
    # rho=0.25, row 0: masked slot BR, BL, TR, TL, BR, ...
    gen = O.RunningCellGenerator((5, 2, 2), 0.25)
    assert [int(np.flatnonzero(gen.all_mask_maps[0, t])[0]) for t in range(5)] == [3, 2, 1, 0, 3]
    # the stated closed form, all rows/ratios
    for ratio in (0.25, 0.5, 0.75):
        gen = O.RunningCellGenerator((8, 14, 14), ratio)
        assert gen.all_mask_maps.shape == (4, 8, 196) and gen.all_mask_maps.dtype == np.float64
        m = int(4 * ratio)
        hh, ww = np.meshgrid(np.arange(14), np.arange(14), indexing="ij")
        j = (2 * (hh % 2) + (ww % 2)).ravel()
        for p in range(4):
            for t in range(8):
                assert np.array_equal(gen.all_mask_maps[p, t], ((j + p + t + 1) % 4 < m).astype(np.float64))
    with pytest.raises(AssertionError):
        O.RunningCellGenerator((8, 14, 14), 0.2)


def test_official_key_sets_match_reference_json():
    shapes = load_official_shapes()
    for name, (_, _, depth, *_rest) in O.OFFICIAL_SIZES.items():
        assert set(shapes[name]) == O.official_key_set(depth, 4), name


# ---------------------------------------------------------------------------------------------------
# state_dict layout
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(O.OFFICIAL_SIZES))
def test_state_dict_keys_and_shapes_equal_official(name):
    shapes = load_official_shapes()[name]
    with torch.device("meta"):
        model = create_model(name)
    sd = model.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == shapes
    # every official key is a parameter (so optimisers / grads see all of them), nothing else is
    assert {k for k, _ in model.named_parameters()} == set(shapes)


# ---------------------------------------------------------------------------------------------------
# forward + loss equivalence
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_form", ["bool", "ids"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_small_forward_and_loss_match_oracle(backend, mask_form):
    model = small_model(backend)
    video, enc, dec = small_case()
    b = video.shape[0]
    # preconditions that make the comparison sharp
    both_visible = (~enc & ~dec).sum(1)
    assert (both_visible > 0).all(), "need encoder-visible positions that the decoder also reconstructs"
    weights = enc[~dec].reshape(b, -1).sum(1)
    assert len(set(weights.tolist())) > 1, "need different supervised counts per sample"

    oracle, _ = oracle_for(model, *SMALL_HEADS)
    with torch.no_grad():
        expected = oracle(video, enc, dec)
        loss_expected = O.official_loss(expected, video, enc, dec, 16)
        if mask_form == "bool":
            e_arg, d_arg = enc, dec
        else:
            e_arg, d_arg = O.visible_ids(enc), O.visible_ids(dec)
        pred = model(video, e_arg, d_arg)
        loss = reconstruction_loss(pred, video, e_arg, d_arg, patch_size=16, tubelet_size=2)
    assert expected.shape == (b, int((~dec).sum(1)[0]), 1536)
    assert_pred_close(pred, expected)
    assert loss.dim() == 0
    assert rel_diff(loss, loss_expected) <= LOSS_RTOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_forward_random_encoder_masks(backend):
    """Non-tube encoder masks (equal count per sample) go through the same gather semantics."""
    model = small_model(backend)
    b, n = 2, math.prod(SMALL_GRID)
    g = torch.Generator().manual_seed(5)
    enc = torch.zeros(b, n, dtype=torch.bool)
    for i in range(b):
        enc[i, torch.randperm(n, generator=g)[: n - 30]] = True
    _, dec = official_masks(SMALL_GRID, b, 0.5, 0.25, seed=3, rows=[2, 1])
    video = video_for(b, SMALL_FRAMES, SMALL_SIZE, seed=9)
    oracle, _ = oracle_for(model, *SMALL_HEADS)
    with torch.no_grad():
        expected = oracle(video, enc, dec)
        pred = model(video, enc, dec)
        loss = reconstruction_loss(pred, video, enc, dec, patch_size=16)
    assert_pred_close(pred, expected)
    assert rel_diff(loss, O.official_loss(expected, video, enc, dec, 16)) <= LOSS_RTOL


def test_default_geometry_small_16x224_matches_oracle():
    """The real 16x224 geometry: 160 encoder tokens, 784 decoder outputs, decoder length 944."""
    torch.manual_seed(0)
    model = perturb_(create_model(SMALL, attn_backend="math")).eval()
    grid = (8, 14, 14)
    enc, dec = official_masks(grid, 2, 0.9, 0.5, seed=11, rows=[0, 2])
    assert ((~enc).sum(1) == 160).all() and ((~dec).sum(1) == 784).all()
    video = video_for(2, 16, 224, seed=2)
    oracle, _ = oracle_for(model, *SMALL_HEADS)
    with torch.no_grad():
        expected = oracle(video, enc, dec)
        pred = model(video, O.visible_ids(enc), O.visible_ids(dec))
        loss = reconstruction_loss(pred, video, enc, dec, patch_size=16)
    assert pred.shape == (2, 784, 1536)
    assert_pred_close(pred, expected)
    assert rel_diff(loss, O.official_loss(expected, video, enc, dec, 16)) <= LOSS_RTOL


@pytest.mark.parametrize("mask_form", ["bool", "ids"])
def test_v1_decoder_mask_none_equals_oracle_with_complement(mask_form):
    model = small_model("math")
    video, enc, _ = small_case(batch=2, seed=4)
    dec_v1 = ~enc  # official: decode_vis = mask when decode_mask is None
    oracle, _ = oracle_for(model, *SMALL_HEADS)
    e_arg = enc if mask_form == "bool" else O.visible_ids(enc)
    with torch.no_grad():
        expected = oracle(video, enc, dec_v1)
        pred = model(video, e_arg, None)
        loss = reconstruction_loss(pred, video, e_arg, None, patch_size=16)
    assert pred.shape == (2, int(enc.sum(1)[0]), 1536)
    assert_pred_close(pred, expected)
    loss_expected = O.official_loss(expected, video, enc, dec_v1, 16)
    assert rel_diff(loss, loss_expected) <= LOSS_RTOL
    # with every weight 1 this is v1's plain MSE over the encoder-masked tokens
    labels = O.official_targets(video, 16)
    v1 = torch.nn.functional.mse_loss(expected, labels[enc].reshape(2, -1, 1536))
    assert rel_diff(loss, v1) <= LOSS_RTOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_giant_geometry_reduced_depth_matches_oracle(backend):
    """Giant dims (patch 14, D 1408, 16 heads of 88, mlp 48/11, head 1176) with 2+2 blocks."""
    g = SIZES["giant"]
    assert (g.patch_size, g.embed_dim, g.num_heads, g.decoder_embed_dim, g.decoder_num_heads) == \
        (14, 1408, 16, 512, 8)
    cfg = ViTConfig(g.patch_size, g.embed_dim, 2, g.num_heads, g.mlp_ratio, g.decoder_embed_dim,
                    g.decoder_num_heads)
    torch.manual_seed(0)
    model = perturb_(PretrainVisionTransformer(cfg, img_size=112, num_frames=6, decoder_depth=2,
                                               attn_backend=backend), seed=3).eval()
    official = load_official_shapes()["pretrain_videomae_giant_patch14_224"]
    sd = model.state_dict()
    assert set(sd) == O.official_key_set(2, 2)
    assert all(list(v.shape) == official[k] for k, v in sd.items())

    grid = (3, 8, 8)
    enc, dec = official_masks(grid, 2, 0.9, 0.5, seed=6, rows=[1, 2])
    video = video_for(2, 6, 112, seed=6)
    oracle, _ = oracle_for(model, 16, 8)
    with torch.no_grad():
        expected = oracle(video, enc, dec)
        pred = model(video, enc, dec)
        loss = reconstruction_loss(pred, video, enc, dec, patch_size=14)
    assert pred.shape == (2, int((~dec).sum(1)[0]), 1176)
    assert_pred_close(pred, expected)
    assert rel_diff(loss, O.official_loss(expected, video, enc, dec, 14)) <= LOSS_RTOL


def test_float64_forward_is_tight_and_catches_layernorm_eps():
    """In float64 the forward must agree to ~1e-10; this resolves differences (LN eps 1e-5 vs 1e-6)
    that are too small to see at fp32 tolerances."""
    model = copy.deepcopy(small_model("math")).double()
    video, enc, dec = small_case(batch=2, seed=8)
    video = video.double()
    oracle, _ = oracle_for(model, *SMALL_HEADS)
    wrong_eps, _ = oracle_for(model, *SMALL_HEADS, variant=O.Variant(ln_eps=1e-5))
    with torch.no_grad():
        expected = oracle(video, enc, dec)
        pred = model(video, enc, dec)
        wrong = wrong_eps(video, enc, dec)
    assert pred.dtype == torch.float64
    torch.testing.assert_close(pred, expected, atol=1e-10, rtol=1e-10)
    assert (wrong - expected).abs().max() > 1e-8


# ---------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------

TINY_CFG = ViTConfig(16, 64, 2, 4, 4.0, 32, 2)  # head dim 16 / 16


@pytest.mark.parametrize("embed_tokens", ["visible", "all"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_oracle_tiny(backend, embed_tokens):
    torch.manual_seed(0)
    model = perturb_(PretrainVisionTransformer(TINY_CFG, img_size=64, num_frames=6, decoder_depth=2,
                                               attn_backend=backend, embed_tokens=embed_tokens), seed=5)
    grid = (3, 4, 4)
    enc, dec = official_masks(grid, 3, 0.5, 0.5, seed=1, rows=[0, 1, 2])
    video = video_for(3, 6, 64, seed=1)

    oracle, params = oracle_for(model, 4, 2, requires_grad=True)
    loss_o = O.official_loss(oracle(video, enc, dec), video, enc, dec, 16)
    names = sorted(params)
    grads_o = dict(zip(names, torch.autograd.grad(loss_o, [params[k] for k in names])))

    model.zero_grad(set_to_none=True)
    loss_v = reconstruction_loss(model(video, enc, dec), video, enc, dec, patch_size=16)
    loss_v.backward()
    assert rel_diff(loss_v, loss_o) <= LOSS_RTOL

    got = dict(model.named_parameters())
    assert set(got) == set(names)
    for k in names:
        go, gv = grads_o[k], got[k].grad
        assert gv is not None, f"no gradient for {k}"
        assert go.abs().max() > 0, f"oracle gradient of {k} is zero; the check would be vacuous"
        scale = float(go.abs().max())
        torch.testing.assert_close(gv, go, atol=1e-5 * scale, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def test_loss_gradient_wrt_predictions_matches_oracle():
    video, enc, dec = small_case(batch=3, seed=12)
    n_dv = int((~dec).sum(1)[0])
    g = torch.Generator().manual_seed(3)
    pred_o = torch.randn(3, n_dv, 1536, generator=g).requires_grad_()
    pred_v = pred_o.detach().clone().requires_grad_()
    lo = O.official_loss(pred_o, video, enc, dec, 16)
    lv = reconstruction_loss(pred_v, video, enc, dec, patch_size=16)
    lo.backward()
    lv.backward()
    assert rel_diff(lv, lo) <= LOSS_RTOL
    torch.testing.assert_close(pred_v.grad, pred_o.grad, atol=1e-9, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# the comparisons above can fail: deliberately wrong oracles are told apart
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [O.Variant(pos_layout="halves"), O.Variant(gelu="tanh")],
                         ids=["pos-halves", "gelu-tanh"])
def test_forward_comparison_rejects_wrong_variants(variant):
    model = small_model("math")
    video, enc, dec = small_case()
    wrong, _ = oracle_for(model, *SMALL_HEADS, variant=variant)
    with torch.no_grad():
        pred = model(video, enc, dec)
        bad = wrong(video, enc, dec)
    assert not torch.allclose(pred, bad, atol=PRED_ATOL, rtol=PRED_RTOL)


def _low_variance_video(batch, seed):
    """Random clip in which some 2x16x16 patches are nearly flat (std ~1e-2 in normalised units), where
    the placement of the 1e-6 epsilon and the Bessel correction matter."""
    video = video_for(batch, SMALL_FRAMES, SMALL_SIZE, seed)
    g = torch.Generator().manual_seed(seed + 100)
    for t0 in range(0, SMALL_FRAMES, 2):
        for h0 in range(0, SMALL_SIZE, 32):
            sl = video[:, :, t0:t0 + 2, h0:h0 + 16, :16]
            sl.mul_(1e-3).add_(torch.randn(batch, 3, 1, 1, 1, generator=g))
    return video


@pytest.mark.parametrize("wrong", [dict(unbiased=False), dict(eps_in_sqrt=True), dict(reduction="per_sample"),
                                   dict(weights="all")], ids=lambda d: next(iter(d)))
def test_loss_matches_oracle_and_rejects_wrong_variants(wrong):
    video = _low_variance_video(3, seed=21)
    _, enc, dec = small_case(batch=3, seed=21)
    n_dv = int((~dec).sum(1)[0])
    # per-sample scales make the per-sample losses differ (so the reduction order matters)
    scale = torch.tensor([0.3, 1.0, 3.0])[:, None, None]
    pred = scale * torch.randn(3, n_dv, 1536, generator=torch.Generator().manual_seed(4))
    assert len(set(enc[~dec].reshape(3, -1).sum(1).tolist())) > 1
    loss = reconstruction_loss(pred, video, enc, dec, patch_size=16)
    right = O.official_loss(pred, video, enc, dec, 16)
    bad = O.official_loss(pred, video, enc, dec, 16, **wrong)
    assert rel_diff(loss, right) <= LOSS_RTOL
    assert rel_diff(bad, right) > 10 * LOSS_RTOL, "the variant is not distinguishable on this input"
    assert rel_diff(loss, bad) > LOSS_RTOL


# ---------------------------------------------------------------------------------------------------
# masking
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [(8, 14, 14), (8, 16, 16), (3, 4, 6), (1, 2, 2)])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_running_cell_equals_literal_procedure(grid, ratio):
    maps = O.RunningCellGenerator(grid, ratio).all_mask_maps
    expected_rows = torch.from_numpy(maps.reshape(4, -1)).to(torch.bool)
    for p in range(4):
        got = masking.running_cell_mask(2, grid, ratio, phase=p)
        assert got.dtype == torch.bool and got.shape == (2, math.prod(grid))
        assert torch.equal(got, expected_rows[p].expand(2, -1)), f"phase {p}"
    # per-sample phases
    phases = torch.tensor([3, 0, 2, 1, 1])
    got = masking.running_cell_mask(5, grid, ratio, phase=phases)
    assert torch.equal(got, expected_rows[phases])
    # ids form: ascending decoder-visible positions
    ids = masking.running_cell_ids(5, grid, ratio, phase=phases)
    assert torch.equal(ids, O.visible_ids(expected_rows[phases]))
    assert masking.running_cell_num_kept(grid, ratio) == int((~expected_rows[0]).sum())


@pytest.mark.parametrize("grid,n_vis,n_dv", [((8, 14, 14), 160, 784), ((8, 16, 16), 208, 1024)])
def test_official_mask_counts(grid, n_vis, n_dv):
    t, h, w = grid
    # the re-typed official generators
    tube = O.TubeGenerator(grid, 0.9)
    rng = np.random.default_rng(0)
    assert int((tube.from_frame(tube.shuffled_frame(rng)) == 0).sum()) == n_vis
    assert all(int((O.RunningCellGenerator(grid, 0.5).row(r) == 0).sum()) == n_dv for r in range(4))
    # vmae2
    gen = torch.Generator().manual_seed(0)
    enc = masking.tube_mask(4, grid, 0.9, generator=gen)
    assert enc.dtype == torch.bool and enc.shape == (4, t * h * w)
    assert ((~enc).sum(1) == n_vis).all()
    assert masking.tube_ids(4, grid, 0.9, generator=gen).shape == (4, n_vis)
    dec = masking.running_cell_mask(4, grid, 0.5, generator=gen)
    assert ((~dec).sum(1) == n_dv).all()
    assert masking.running_cell_ids(4, grid, 0.5, generator=gen).shape == (4, n_dv)
    assert masking.running_cell_num_kept(grid, 0.5) == n_dv


@pytest.mark.parametrize("grid,ratio", [((8, 14, 14), 0.9), ((8, 14, 14), 0.75), ((8, 16, 16), 0.9),
                                        ((3, 4, 6), 0.5)])
def test_tube_mask_is_official_tube_of_its_frame_vector(grid, ratio):
    t, h, w = grid
    tube = O.TubeGenerator(grid, ratio)
    gen = torch.Generator().manual_seed(7)
    masks = masking.tube_mask(6, grid, ratio, generator=gen)
    for b in range(6):
        frame = masks[b, : h * w].double().numpy()
        # a permutation of the official unshuffled frame vector (same number of ones)...
        assert np.array_equal(np.sort(frame), np.sort(tube.unshuffled_frame()))
        # ...tiled through time exactly like the official generator
        expected = O.batch_masks([tube.from_frame(frame)])[0]
        assert torch.equal(masks[b], expected)
    # masks differ between samples (independent per-sample shuffles)
    assert len({tuple(m.tolist()) for m in masks}) > 1
    # ids are the ascending visible positions
    gen = torch.Generator().manual_seed(7)
    ids = masking.tube_ids(6, grid, ratio, generator=gen)
    assert torch.equal(ids, O.visible_ids(masks))


def test_running_cell_random_phase_is_an_official_row():
    grid = (8, 14, 14)
    rows = torch.from_numpy(O.RunningCellGenerator(grid, 0.5).all_mask_maps.reshape(4, -1)).to(torch.bool)
    got = masking.running_cell_mask(64, grid, 0.5, generator=torch.Generator().manual_seed(1))
    matched = [[bool(torch.equal(m, rows[p])) for p in range(4)] for m in got]
    assert all(sum(r) == 1 for r in matched)
    assert len({r.index(True) for r in matched}) == 4  # all four rows occur in 64 draws
