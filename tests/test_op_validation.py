"""One validation layer before dispatch: every backend refuses the same bad input
with the same message, and takes the same good input the same way. Id values (range, uniqueness) are checked on the
device under ``VMAE2_DEBUG=1``."""
import pytest
import torch

from vmae2_kernels import checks, dispatch, ops
from vmae2_kernels.decoder.checks import check_decoder_input
from vmae2_kernels.gather.checks import check_gather
from vmae2_kernels.loss.checks import check_loss
from vmae2_kernels.reference import running_cell_ids as reference_running_cell_ids

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _backends():
    out = ["torch"]
    if not dispatch.not_supported_reasons("cpp", "recon_loss", "cpu", torch.float32):
        out.append("cpp")
    if not dispatch.not_supported_reasons("triton", "recon_loss", "cpu", torch.float32):
        out.append("triton")  # under TRITON_INTERPRET=1 (tests/conftest.py)
    return out


BACKENDS = _backends()


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_and_large_phases_are_taken_modulo_4(backend):
    """A negative phase is taken modulo 4 on every backend (C's truncating % would give garbage)."""
    phase = torch.tensor([-2, 1, 7, -5])
    got = ops.running_cell_ids(phase, 2, 4, 4, 2, backend)
    assert torch.equal(got, reference_running_cell_ids(phase.remainder(4), (2, 4, 4), 2))  # ids: exact


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("args,match", [
    ((torch.tensor([0, 1]), 2, 3, 4, 2), "even spatial grid, got H'=3, W'=4"),
    ((torch.tensor([0.0, 1.0]), 2, 4, 4, 2), "phase must be a \\[B\\] integer tensor"),
    ((torch.tensor([[0, 1]]), 2, 4, 4, 2), "phase must be a \\[B\\] integer tensor"),
])
def test_running_cell_refusals_are_the_same_everywhere(backend, args, match):
    with pytest.raises(ValueError, match=match):
        ops.running_cell_ids(*args, backend)


def _loss_args(pred_width=1536, tokens=3, weights=None, patch=16):
    video = torch.randn(2, 3, 4, 2 * patch, 2 * patch)  # grid (2, 2, 2)
    dec = torch.tensor([[0, 2, 5], [1, 3, 7]])[:, :tokens]
    weights = torch.ones(2, tokens) if weights is None else weights
    return torch.randn(2, tokens, pred_width), video, dec, weights, patch, 2, 1, MEAN, STD


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,match", [
    (dict(pred_width=1536, patch=14), "pred has shape \\(2, 3, 1536\\); expected .* = \\[2, 3, 1176\\]"),  # wider
    (dict(pred_width=1000), "pred has shape \\(2, 3, 1000\\); expected .* = \\[2, 3, 1536\\]"),  # narrower
    (dict(weights=torch.ones(2, 16)), "weights has shape \\(2, 16\\); expected \\[B, Nd\\] = \\[2, 3\\]"),
])
def test_loss_refusals_are_the_same_everywhere_forward_and_backward(backend, kwargs, match):
    """A too-wide or too-narrow pred, or weights of the wrong shape, are refused before any kernel runs (a kernel
    would read or write past a row), forward and backward, with one message."""
    args = _loss_args(**kwargs)
    with pytest.raises(ValueError, match=match):
        ops.recon_loss(*args, backend)
    with pytest.raises(ValueError, match=match):
        ops.recon_loss_backward(torch.tensor(1.0), *args, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_backward_fake_matches_the_kernels_layout(backend):
    """Every backend, and the fake, return a contiguous gradient whatever pred's strides."""
    pred, *rest = _loss_args()
    pred = pred.transpose(1, 2).contiguous().transpose(1, 2)  # same shape, non-contiguous
    assert not pred.is_contiguous()
    real = ops.recon_loss_backward(torch.tensor(1.0), pred, *rest, backend)
    assert real.is_contiguous()
    torch.library.opcheck(ops.recon_loss_backward, (torch.tensor(1.0), pred, *rest, backend),
                          test_utils=("test_schema", "test_faketensor"))


# -- token ops: shapes, dtypes, devices ---------------------------------------------------------------------

X, IDS, POS = torch.randn(2, 8, 4), torch.tensor([[0, 3], [2, 7]]), torch.randn(8, 4)
VIDEO = torch.randn(2, 3, 2, 32, 64)  # 1 x 2 x 4 = 8 tubelets of 2 x 16 x 16, as X has 8 tokens
TOKEN_REFUSALS = [
    (lambda b: ops.token_gather(X[0], IDS, None, b), "x must be \\[B, N, C\\], got shape \\(8, 4\\)"),
    (lambda b: ops.token_gather(X, IDS.int(), None, b), "ids must be \\[B=2, K\\] int64, got \\(2, 2\\) torch.int32"),
    (lambda b: ops.token_gather(X, IDS[:1], None, b), "ids must be \\[B=2, K\\] int64, got \\(1, 2\\)"),
    (lambda b: ops.token_gather(X, IDS, POS[:5], b),
     "pos must be \\[8, 4\\] or \\[1, 8, 4\\] \\(N=8 token rows, C=4 channels\\), got \\(5, 4\\)"),
    # a per-sample table of N*C elements is not a shared one: refused on every backend
    (lambda b: ops.token_gather(X, IDS, POS.reshape(4, 8), b), "pos must be \\[8, 4\\] or .* got \\(4, 8\\)"),
    (lambda b: ops.token_gather(X, IDS, POS.expand(2, 8, 4), b), "pos must be .* got \\(2, 8, 4\\)"),
    (lambda b: ops.decoder_input(X[:, :2], IDS, IDS, torch.zeros(4), POS[None, :, :3], b),
     "pos must be \\[N, 4\\] or \\[1, N, 4\\] \\(N token rows, C=4 channels\\), got \\(1, 8, 3\\)"),
    (lambda b: ops.token_scatter(X[:, :2], IDS[:, :1], 8, b), "ids must be \\[B=2, 2\\] int64, got \\(2, 1\\)"),
    (lambda b: ops.decoder_input(X[:, :2], IDS, IDS, torch.zeros(3), POS, b), "mask_token must have D=4 elements"),
    (lambda b: ops.mask_token_grad(X, 9, b), "num_visible 9 is out of range \\[0, 8\\]"),
    (lambda b: ops.tube_ids(torch.rand(2, 4), 2, 5, b), "num_masked=5 in \\[0, 4\\]"),
    (lambda b: ops.tube_ids(torch.ones(2, 4, dtype=torch.long), 2, 1, b), "keys must be a \\[B, H'W'\\] float"),
    (lambda b: ops.tubelet_gather(VIDEO[:, :2], IDS, 16, 2, b),
     "video must be \\[B, 3, T, H, W\\] \\(RGB clips\\), got shape \\(2, 2, 2, 32, 64\\)"),
    (lambda b: ops.tubelet_gather(VIDEO, IDS, 16, 3, b),
     "video \\(2, 3, 2, 32, 64\\) does not tile into tubelets of 3 frames and 16x16 patches"),
    (lambda b: ops.tubelet_gather(VIDEO, IDS[:, 0], 16, 2, b), "ids must be \\[B=2, K\\] int64, got \\(2,\\)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,match", TOKEN_REFUSALS)
def test_token_op_refusals_are_the_same_everywhere(backend, call, match):
    with pytest.raises(ValueError, match=match):
        call(backend)


WEIGHT, BIAS = torch.randn(6, 3, 2, 16, 16), torch.randn(6)
PATCH_EMBED_REFUSALS = [
    (dict(weight=WEIGHT[:, :, 0]), "weight must be a Conv3d weight \\[C, 3, t, p, p\\], got shape \\(6, 3, 16, 16\\)"),
    (dict(weight=torch.randn(6, 4, 2, 16, 16)), "weight must be a Conv3d weight .* got shape \\(6, 4, 2, 16, 16\\)"),
    (dict(weight=WEIGHT[..., :8]), "weight must be a Conv3d weight .* got shape \\(6, 3, 2, 16, 8\\)"),
    (dict(weight=torch.randn(6, 3, 2, 24, 24)), "video \\(2, 3, 2, 32, 64\\) does not tile into tubelets of 2 frames "
                                                "and 24x24 patches"),
    (dict(bias=BIAS[:5]), "bias must be \\[C\\] = \\[6\\], got \\(5,\\)"),
    (dict(pos=torch.randn(12, 6)), "pos must be \\[8, 6\\] or \\[1, 8, 6\\] \\(N=8 token rows, C=6 channels\\), "
                                   "got \\(12, 6\\)"),
    (dict(ids=IDS.int()), "ids must be \\[B=2, K\\] int64, got \\(2, 2\\) torch.int32"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,match", PATCH_EMBED_REFUSALS)
def test_patch_embed_refusals_are_the_same_everywhere(backend, kwargs, match):
    import vmae2_kernels as K

    args = {"video": VIDEO, "ids": IDS, "weight": WEIGHT, "bias": BIAS, "pos": torch.randn(8, 6), **kwargs}
    with pytest.raises(ValueError, match=match):
        K.patch_embed(**args, backend=backend)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the native CPU build is not available")
@pytest.mark.parametrize("args,match", [
    ((VIDEO[0], IDS, 16, 2), "video must be \\[B, 3, T, H, W\\], got \\[3, 2, 32, 64\\]"),
    ((VIDEO, IDS, 16, 3), "video \\[2, 3, 2, 32, 64\\] does not tile into tubelets of 3 frames and 16x16 patches"),
    ((VIDEO, IDS[:1], 16, 2), "ids must be \\[B, K\\] with B = 2, got \\[1, 2\\]"),
    ((VIDEO, IDS + 1, 16, 2), "id 8 is out of range \\[0, 8\\)"),
])
def test_native_tubelet_gather_checks_its_own_arguments(args, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.vmae2_native.tubelet_gather(*args)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the native CPU build is not available")
@pytest.mark.parametrize("args,match", [
    ((X[:, :2], IDS[:, :1], IDS, torch.zeros(4), POS), "vis_ids must be \\[B, 2\\], got \\[2, 1\\]"),
    ((X[:, :2], IDS, IDS, torch.zeros(3), POS), "mask_token and pos must have 4 channels"),
    ((X[:, :2], IDS, IDS, torch.zeros(4), POS[0]), "mask_token and pos must have 4 channels"),
])
def test_native_decoder_input_checks_its_own_arguments(args, match):
    """Direct callers of ``torch.ops.vmae2_native`` skip the Python layer: the library's shared checks (the CPU
    kernels and the CUDA binding) refuse a short ``vis_ids`` before any row is read."""
    with pytest.raises(RuntimeError, match=match):
        torch.ops.vmae2_native.decoder_input(*args)


def test_inputs_on_two_devices_are_refused():
    """Checked in the layer itself: a custom op given a meta tensor dispatches to its fake, so no backend sees it."""
    with pytest.raises(ValueError, match="ids is on meta, expected cpu"):
        check_gather(X, IDS.to("meta"), None)
    with pytest.raises(ValueError, match="pos is on meta, expected cpu"):
        check_decoder_input(X[:, :2], IDS, IDS, torch.zeros(4), POS.to("meta"))
    with pytest.raises(ValueError, match="weights is on meta, expected cpu"):
        pred, video, dec, weights, patch, tub, _, mean, std = _loss_args()
        check_loss(pred, video, dec, weights.to("meta"), patch, tub, 1, mean, std)


# -- ids precondition: range and uniqueness, checked on the device in debug mode ----------

BAD_IDS = {"out of range": (torch.tensor([[0, 8], [2, 7]]), "ids has ids outside \\[0, 8\\)"),
           "negative": (torch.tensor([[0, -1], [2, 7]]), "ids has ids outside \\[0, 8\\)"),
           "repeated": (torch.tensor([[3, 3], [2, 7]]), "ids repeats an id within a row")}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(BAD_IDS))
def test_debug_mode_refuses_bad_ids_on_every_backend(backend, kind, monkeypatch):
    """Out-of-range ids (which GPU kernels would read silently) and repeated ids (scattered once on a GPU, added by
    the reference) stop every backend under VMAE2_DEBUG=1 with one message."""
    monkeypatch.setenv(checks.DEBUG_ENV, "1")
    ids, match = BAD_IDS[kind]
    x = X.clone().requires_grad_()
    with pytest.raises(RuntimeError, match=match):
        ops.token_gather(x, ids, None, backend)
    with pytest.raises(RuntimeError, match=match):
        ops.token_scatter(X[:, :2], ids, 8, backend)
    with pytest.raises(RuntimeError, match=match):
        ops.tubelet_gather(VIDEO, ids, 16, 2, backend)
    if kind == "repeated":  # the gradient path: gather forward with ids the backward scatter would mis-sum
        with pytest.raises(RuntimeError, match=match):
            ops.token_gather(x, ids, POS, backend).sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_debug_mode_checks_decoder_and_loss_ids(backend, monkeypatch):
    monkeypatch.setenv(checks.DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="dec_ids has ids outside \\[0, 8\\)"):
        ops.decoder_input(X[:, :2], IDS, torch.tensor([[1, 9], [0, 1]]), torch.zeros(4), POS, backend)
    pred, video, dec, *rest = _loss_args()
    with pytest.raises(RuntimeError, match="dec_ids repeats an id"):
        ops.recon_loss(pred, video, torch.tensor([[0, 2, 2], [1, 3, 7]]), *rest, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_debug_mode_passes_good_ids_and_changes_nothing(backend, monkeypatch):
    plain = ops.token_gather(X, IDS, POS, backend)
    monkeypatch.setenv(checks.DEBUG_ENV, "1")
    assert torch.equal(ops.token_gather(X, IDS, POS, backend), plain)  # same kernel rerun: exact


# -- prefix tokens, position-table shapes, layouts, keep rules (the public wrappers) -------------

WRAPPER_REFUSALS = [
    (lambda K, b: K.token_gather(X, IDS, POS[:7], num_prefix=1, backend=b),
     "pos must be \\[8, 4\\] or \\[1, 8, 4\\] \\(P=1 prefix rows, then N=7 token rows, C=4 channels\\), "
     "got \\(7, 4\\)"),
    (lambda K, b: K.token_gather(X, IDS, None, num_prefix=9, backend=b),
     "num_prefix=9 must be in \\[0, 8\\] \\(the leading cls/register rows of x\\)"),
    (lambda K, b: K.decoder_input(X[:, :3], IDS, None, torch.zeros(4), POS, num_prefix=2, backend=b),
     "vis_ids must be \\[B=2, 1\\] int64, got \\(2, 2\\)"),
    (lambda K, b: K.decoder_input(X[:, :2], IDS, None, torch.zeros(4), POS, layout="sorted", backend=b),
     "layout='sorted' is unknown; choose one of \\('concat', 'ordered'\\)"),
    (lambda K, b: K.decoder_input(X[:, :2], IDS, IDS, torch.zeros(4), POS.expand(2, 8, 4), backend=b),
     "pos must be \\[N, 4\\] or \\[1, N, 4\\] .* got \\(2, 8, 4\\)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,match", WRAPPER_REFUSALS)
def test_prefix_and_layout_refusals_are_the_same_everywhere(backend, call, match):
    import vmae2_kernels as K

    with pytest.raises(ValueError, match=match):
        call(K, backend)


@pytest.mark.parametrize("call,match", [
    (lambda K: K.random_ids(2, 8, 0.5, keep="timm"), "keep='timm' is unknown; choose one of \\('floor_kept', 'floor_masked'\\)"),
    (lambda K: K.random_ids(2, 8, 1.0), "ratio 1.0 is out of range; use a value in \\[0, 1\\)"),
    (lambda K: K.random_ids(2, 8, 0.5, torch.rand(2, 7)), "noise must be a \\[B, N\\] = \\[2, 8\\] float tensor, got "
                                                          "\\(2, 7\\)"),
    (lambda K: K.tube_ids(2, (1, 1, 8), 0.5, keep="timm"), "keep='timm' is unknown"),
    (lambda K: K.mask_to_ids(torch.zeros(8)), "mask must be \\[B, N\\] bool, or 0/1 int or float"),
])
def test_mask_builder_refusals(call, match):
    import vmae2_kernels as K

    with pytest.raises(ValueError, match=match):
        call(K)


@pytest.mark.parametrize("backend", BACKENDS)
def test_debug_mode_checks_prefixed_ids_against_the_non_prefix_tokens(backend, monkeypatch):
    """With a prefix the ids index the ``N`` non-prefix tokens: id ``N`` is out of range (not the last row)."""
    import vmae2_kernels as K

    monkeypatch.setenv(checks.DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="ids has ids outside \\[0, 7\\)"):
        K.token_gather(X, torch.tensor([[0, 7], [2, 6]]), None, num_prefix=1, backend=backend)
    with pytest.raises(RuntimeError, match="dec_ids has ids outside \\[0, 7\\)"):
        K.decoder_input(X[:, :3], IDS.clamp(max=6), torch.tensor([[1, 7], [0, 1]]), torch.zeros(4), POS, num_prefix=1,
                        backend=backend)
