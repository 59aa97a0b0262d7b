"""What three public MAE codebases needed from vmae2_kernels, checked against plain-torch statements of
their own code (written here from the algorithms, not copied): prefix (cls) tokens and token-ordered decoder
sequences, MAE's random masking and ``ids_restore``, ``[1, N(+1), C]`` position tables, unsorted ids and 0/1 float
masks. Every op on every backend (Triton through the interpreter on CPU), forward and backward."""
import pytest
import torch
from oracle.tolerances import assert_close_fp

import vmae2_kernels as K
from vmae2 import masking
from vmae2_kernels import dispatch


def _backends():
    out = ["torch"]
    for name in ("cpp", "triton"):  # triton: under TRITON_INTERPRET=1 (tests/conftest.py)
        if not dispatch.not_supported_reasons(name, "decoder_input", "cpu", torch.float32):
            out.append(name)
    return out


BACKENDS = _backends()


@pytest.fixture(autouse=True)
def _fresh_dispatch():
    dispatch.reset()
    yield
    dispatch.reset()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mae_masking(noise, len_keep):
    """MAE's ``random_masking`` on ids: ``(ids_keep, ids_restore, mask)``; ids_keep in ascending-noise order."""
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], ids_restore, torch.gather(mask, 1, ids_restore)


def _rows(x, ids):
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


# -- 3: prefix tokens and token-ordered decoder sequences -------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_encoder_input_with_a_cls_token_is_maes(backend):
    """MAE's encoder: ``x + pos[:, 1:]``, gather at ``ids_keep`` (unsorted), then ``cat`` the cls token + ``pos[:, :1]``
    in front. One ``token_gather(..., num_prefix=1)`` over ``[cls | patches]`` with the learnable ``[1, 1 + N, C]``
    table; the gradients of the tokens, cls token and table follow."""
    B, N, C, keep = 3, 20, 8, 5
    patches = torch.randn(B, N, C, requires_grad=True)
    cls = torch.randn(1, 1, C, requires_grad=True)
    pos = torch.randn(1, 1 + N, C, requires_grad=True)
    ids_keep, _, _ = _mae_masking(torch.rand(B, N, generator=_gen(1)), keep)
    mae = torch.cat([(cls + pos[:, :1]).expand(B, -1, -1), _rows(patches + pos[:, 1:], ids_keep)], dim=1)
    x = torch.cat([cls.expand(B, -1, -1), patches], dim=1)
    got = K.token_gather(x, ids_keep, pos, num_prefix=1, backend=backend)
    assert got.shape == (B, 1 + keep, C) and torch.equal(got, mae)  # one fp32 add per element: the same bits
    up = torch.randn_like(mae)
    leaves = (patches, cls, pos)
    for a, b in zip(torch.autograd.grad(got, leaves, up), torch.autograd.grad(mae, leaves, up)):
        assert a.shape == b.shape
        assert_close_fp(a, b)  # sums over the batch: order may differ


def _mae_decoder_input(x, ids_restore, mask_token, pos):
    """MAE's decoder input: ``x [B, 1 + K, D]`` (cls first), mask tokens appended, un-shuffled, cls back, + pos."""
    B, L, D = x.shape
    tokens = torch.cat([x[:, 1:], mask_token.expand(B, ids_restore.shape[1] + 1 - L, -1)], dim=1)
    return torch.cat([x[:, :1], _rows(tokens, ids_restore)], dim=1) + pos


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ordered_full_decoder_input_is_maes_unshuffled_sequence(backend, dtype):
    """``dec_ids=None, layout="ordered", num_prefix=1`` is MAE's ``[B, 1 + N, D]`` decoder input: a mask token + its
    position at every masked token, in ``(t, h, w)`` order, so a decoder may reshape it to ``[B, T, HW, D]``."""
    B, N, D, keep = 2, 24, 16, 6
    ids_keep, ids_restore, _ = _mae_masking(torch.rand(B, N, generator=_gen(2)), keep)
    x = torch.randn(B, 1 + keep, D).to(dtype).requires_grad_()
    tok = torch.randn(1, 1, D).to(dtype).requires_grad_()
    pos = torch.randn(1, 1 + N, D, requires_grad=True)  # fp32, learnable
    mae = _mae_decoder_input(x, ids_restore, tok, pos)
    got = K.decoder_input(x, ids_keep, None, tok, pos, num_prefix=1, layout="ordered", backend=backend)
    assert got.shape == (B, 1 + N, D) and got.dtype == mae.dtype == torch.float32
    assert torch.equal(got, mae)  # fp32 result of one add of the same operands
    up = torch.randn_like(mae)
    for a, b in zip(torch.autograd.grad(got, (x, tok, pos), up), torch.autograd.grad(mae, (x, tok, pos), up)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close_fp(a.float(), b.float(), dtype)  # the mask-token and table gradients sum rows


def _subset_reference(x_vis, vis_ids, dec_ids, tok, pos):
    """The VideoMAE V2 rows ``[x_vis + pos[vis] | tok + pos[dec]]`` sorted by token id (visible row first on a tie)."""
    rows = torch.cat([x_vis + pos[vis_ids], tok.reshape(1, 1, -1) + pos[dec_ids]], dim=1)
    order = torch.argsort(torch.cat([vis_ids, dec_ids], 1), dim=1, stable=True)
    return _rows(rows, order)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ordered_subset_decoder_input_sorts_the_rows_by_token(backend):
    """VideoMAE V2's decoder sees a subset (running cell) that may share tokens with the encoder's: "ordered" is the
    concat rows sorted by token id; the mask-token rows are those with ``order >= Nv``."""
    B, grid, D = 3, (2, 4, 4), 12
    N = 32
    vis = masking.tube_ids(B, grid, 0.75, generator=_gen(3))
    dec = masking.running_cell_ids(B, grid, 0.5, generator=_gen(4))
    x = torch.randn(B, vis.shape[1], D, requires_grad=True)
    tok = torch.randn(D, requires_grad=True)
    pos = torch.randn(N, D, requires_grad=True)
    want = _subset_reference(x, vis, dec, tok, pos)
    got = K.decoder_input(x, vis, dec, tok, pos, layout="ordered", backend=backend)
    assert torch.equal(got, want)
    order = torch.argsort(torch.cat([vis, dec], 1), dim=1, stable=True)
    ids = torch.cat([vis, dec], 1).gather(1, order)
    assert (ids[:, 1:] >= ids[:, :-1]).all()  # token order
    decoded = got[order >= vis.shape[1]].reshape(B, dec.shape[1], D)  # the rows a V2 head predicts, in dec order
    assert torch.equal(decoded, tok + pos[dec])
    up = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (x, tok, pos), up), torch.autograd.grad(want, (x, tok, pos), up)):
        assert_close_fp(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_rows_come_first_in_the_concat_layout(backend):
    B, N, D = 2, 16, 8
    vis, dec = K.random_ids(B, N, 0.5, generator=_gen(5)), K.random_ids(B, N, 0.25, generator=_gen(6))
    x = torch.randn(B, 2 + vis.shape[1], D)  # two prefix (cls + register) rows
    tok, pos = torch.randn(D), torch.randn(2 + N, D)
    got = K.decoder_input(x, vis, dec, tok, pos, num_prefix=2, backend=backend)
    want = torch.cat([x[:, :2] + pos[:2], x[:, 2:] + pos[2:][vis], tok + pos[2:][dec]], dim=1)
    assert torch.equal(got, want)


def test_the_concat_layout_is_valid_for_a_permutation_equivariant_decoder():
    """Why the default ``[visible | decoded]`` layout is right for the official decoder: blocks with no position
    information but the added table commute with any permutation of the rows."""
    torch.manual_seed(0)
    block = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    vis, dec = K.random_ids(2, 20, 0.6, generator=_gen(7)), None
    x, tok, pos = torch.randn(2, vis.shape[1], 16), torch.randn(16), torch.randn(20, 16)
    concat = K.decoder_input(x, vis, dec, tok, pos)
    ordered = K.decoder_input(x, vis, dec, tok, pos, layout="ordered")
    restore = K.restore_ids(vis, 20)
    with torch.no_grad():
        assert_close_fp(_rows(block(concat), restore), block(ordered))


def test_ordered_prefixed_decoder_input_compiles_in_one_graph():
    from torch._dynamo.testing import CompileCounterWithBackend

    ids_keep, _, _ = _mae_masking(torch.rand(2, 12, generator=_gen(8)), 4)
    x, tok = torch.randn(2, 5, 8, requires_grad=True), torch.randn(1, 1, 8, requires_grad=True)
    pos = torch.randn(1, 13, 8)
    counter = CompileCounterWithBackend("aot_eager")
    fn = lambda *a: K.decoder_input(*a, num_prefix=1, layout="ordered").square().sum()
    loss = torch.compile(fn, backend=counter, fullgraph=True)(x, ids_keep, None, tok, pos)
    assert counter.frame_count == 1
    assert_close_fp(loss, fn(x, ids_keep, None, tok, pos))


# -- 4: MAE masking in vmae2_kernels -------------------------------------------------------------------------

def test_keep_rules_differ_where_the_issue_says():
    """N = 392, ratio 0.9: MAE keeps int(392 * 0.1) = 39, VideoMAE 392 - int(0.9 * 392) = 40."""
    assert K.random_ids(2, 392, 0.9, keep="mae", generator=_gen()).shape == (2, 39)
    assert K.random_ids(2, 392, 0.9, keep="videomae", generator=_gen()).shape == (2, 40)
    assert K.tube_ids(2, (1, 1, 392), 0.9, _gen(), keep="mae").shape == (2, 39)
    assert K.tube_ids(2, (1, 1, 392), 0.9, _gen()).shape == (2, 40)  # the tube generator's own rule by default
    assert masking.random_ids(2, (2, 14, 14), 0.9, generator=_gen()).shape == (2, 40)  # vmae2 keeps VideoMAE's


@pytest.mark.parametrize("N,ratio", [(196, 0.75), (392, 0.9), (7, 0.5)])
def test_random_ids_keep_maes_set_for_the_same_noise(N, ratio):
    noise = torch.rand(4, N, generator=_gen(9))
    len_keep = int(N * (1 - ratio))
    ids_keep, ids_restore, mask = _mae_masking(noise, len_keep)
    ids = K.random_ids(4, N, ratio, noise)
    assert torch.equal(ids, ids_keep.sort(1).values)  # the same set, ascending
    assert torch.equal(K.ids_to_mask(ids, N), mask.bool())  # MAE's mask, True = masked
    assert torch.equal(K.complement_ids(ids, N), ids_restore.argsort(1)[:, len_keep:].sort(1).values)
    x = torch.randn(4, len_keep, 3)  # the encoder's rows, in ids_keep order
    mae = _rows(torch.cat([x, torch.zeros(4, N - len_keep, 3)], 1), ids_restore)  # MAE's un-shuffled sequence
    for kept, rows in ((ids_keep, x), (ids, _rows(x, ids_keep.argsort(1)))):  # restore_ids takes either order
        restore = K.restore_ids(kept, N)
        assert torch.equal(_rows(torch.cat([rows, torch.zeros(4, N - len_keep, 3)], 1), restore), mae)


def test_random_ids_from_a_generator_are_reproducible_and_vmae2_uses_them():
    a = K.random_ids(3, 48, 0.6, keep="videomae", generator=_gen(10))
    assert torch.equal(a, masking.random_ids(3, (2, 4, 6), 0.6, generator=_gen(10)))  # one implementation
    assert (a[:, 1:] > a[:, :-1]).all()
    assert masking.complement_ids is K.complement_ids and masking.ids_to_mask is K.ids_to_mask


# -- 5: position tables as codebases store them ---------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_learnable_1_n_c_table_works_on_every_op_and_backend(backend):
    """Found: the torch backend raised IndexError, the native backward failed, decoder_input blamed the channels."""
    B, N, C = 2, 8, 6
    ids = torch.tensor([[6, 1, 3], [0, 7, 2]])
    x = torch.randn(B, N, C, requires_grad=True)
    table = torch.randn(1, N, C, requires_grad=True)
    flat = table.detach()[0].clone().requires_grad_()
    for op in (lambda p: K.token_gather(x, ids, p, backend=backend),
               lambda p: K.decoder_input(x[:, :3], ids, ids.flip(1), x[0, 0], p, backend=backend)):
        got, want = op(table), op(flat)
        assert torch.equal(got, want)
        up = torch.randn_like(got)
        (g3,), (g2,) = torch.autograd.grad(got, (table,), up), torch.autograd.grad(want, (flat,), up)
        assert g3.shape == (1, N, C) and torch.equal(g3[0], g2)
    video, weight = torch.randn(B, 3, 2, 32, 64), torch.randn(C, 3, 2, 16, 16)
    got = K.patch_embed(video, ids, weight, None, table, backend=backend)
    (g3,) = torch.autograd.grad(got.sum(), table)
    assert g3.shape == (1, N, C)
    assert torch.equal(got, K.patch_embed(video, ids, weight, None, flat, backend=backend))


# -- 6: the ids contract: unique and in range, any order; 0/1 masks ------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_unsorted_ids_give_the_reference_on_every_backend(backend):
    """Every op is row-independent: row k follows ids[:, k] whatever the order (MAE's ids_keep is unsorted)."""
    B, N, C = 3, 30, 10
    ids = torch.stack([torch.randperm(N, generator=_gen(b))[:9] for b in range(B)])  # unique, unsorted
    assert not (ids[:, 1:] > ids[:, :-1]).all()
    x, pos = torch.randn(B, N, C, requires_grad=True), torch.randn(N, C, requires_grad=True)
    got, want = K.token_gather(x, ids, pos, backend=backend), K.token_gather(x, ids, pos, backend="torch")
    assert torch.equal(got, want)
    up = torch.randn_like(want)
    gx, gp = torch.autograd.grad(got, (x, pos), up)
    rx, rp = torch.autograd.grad(want, (x, pos), up)
    assert torch.equal(gx, rx) and torch.equal(gx[torch.arange(B)[:, None], ids], up)  # scatter: data movement
    assert_close_fp(gp, rp)
    src = torch.randn(B, 9, C)
    assert torch.equal(K.token_scatter(src, ids, N, backend=backend), K.token_scatter(src, ids, N, backend="torch"))
    video = torch.randn(B, 3, 4, 48, 80)  # 2 x 3 x 5 = 30 tubelets
    assert torch.equal(K.tubelet_gather(video, ids, 16, 2, backend=backend), K.tubelet_gather(video, ids, 16, 2,
                                                                                            backend="torch"))
    dec = ids.flip(1)
    tok = torch.randn(C, requires_grad=True)
    got = K.decoder_input(x[:, :9], ids, dec, tok, pos, backend=backend)
    want = K.decoder_input(x[:, :9], ids, dec, tok, pos, backend="torch")
    assert torch.equal(got, want)
    for a, b in zip(torch.autograd.grad(got, (x, tok, pos), up.repeat(1, 2, 1)),
                    torch.autograd.grad(want, (x, tok, pos), up.repeat(1, 2, 1))):
        assert_close_fp(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.uint8])
def test_mask_to_ids_takes_0_1_masks(dtype):
    """MAE's mask is float 0/1 (1 = masked): nonzero = masked, as True."""
    mask = K.ids_to_mask(K.random_ids(3, 20, 0.75, generator=_gen(11)), 20)
    want = K.mask_to_ids(mask, 5)
    assert torch.equal(K.mask_to_ids(mask.to(dtype), 5), want)
    assert torch.equal(K.mask_to_ids(mask.to(dtype)), want)
