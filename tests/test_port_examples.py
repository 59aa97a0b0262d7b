"""The porting guide's recipes (docs/porting.md, examples/port_*.py) against independent restatements.

Each recipe is restated here from its paper's algorithm, one sample at a time (patches by reshape and a matmul with
the patch embedding's weight, tokens picked by index lists, the decoder sequence assembled in token order), not from
the examples' ``original_step``. Loss, predictions and the gradient of every parameter of the example's
``kernel_step`` and ``original_step`` must match it on the same weights, noise and inputs, on every kernel backend
(Triton through its interpreter on CPU). The guide's code must be the examples' marked lines."""
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch
from oracle.tolerances import assert_close_fp

import vmae2_kernels as vk
from vmae2_kernels import dispatch

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "porting.md"
RECIPES = ("port_image_mae", "port_spatiotemporal_mae", "port_videomae_v1")
OPS = ("tubelet_gather", "decoder_input", "token_gather", "recon_loss")


def _backends():
    out = ["torch"]
    for name in ("triton", "cpp"):  # triton: under TRITON_INTERPRET=1 (tests/conftest.py)
        if not any(dispatch.not_supported_reasons(name, op, "cpu", torch.float32) for op in OPS):
            out.append(name)
    return out


BACKENDS = _backends()


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, request.param)
    dispatch.reset()
    yield request.param
    dispatch.reset()


def _perturbed(model):
    """Every weight moved off its initial value (LayerNorm 1/0, zero biases), so no gradient is trivially zero."""
    g = torch.Generator().manual_seed(7)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _run(model, fn):
    """``(pred, loss, grads)`` of ``fn(model)``, the gradients of every parameter in ``model.parameters()`` order."""
    pred, loss = fn(model)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return pred, loss, grads


def _assert_same(model, got, want):
    pred, loss, grads = got
    assert_close_fp(loss, want[1])
    assert_close_fp(pred, want[0])
    for (name, _), a, b in zip(model.named_parameters(), grads, want[2]):
        assert b.abs().max() > 0, f"{name}: zero gradient in the restatement"
        assert_close_fp(a, b, msg=lambda m, name=name: f"{name}: {m}")


def _normalise_per_patch(rows):
    """MAE's norm_pix target: each row by its mean and unbiased variance over all its values, eps 1e-6 inside."""
    mean = rows.sum(-1, keepdim=True) / rows.shape[-1]
    var = ((rows - mean) ** 2).sum(-1, keepdim=True) / (rows.shape[-1] - 1)
    return (rows - mean) / torch.sqrt(var + 1e-6)


def _tubelets(clip, t, p, order):
    """One clip ``[3, F, H, W]`` as rows ``[N, 3*t*p*p]``, tokens ``(t, h, w)``; ``order`` "cpq" (channel slowest, a
    conv weight's) or "pqc" (channel fastest, the prediction's)."""
    C, F, H, W = clip.shape
    cells = clip.reshape(C, F // t, t, H // p, p, W // p, p)
    perm = (1, 3, 5, 0, 2, 4, 6) if order == "cpq" else (1, 3, 5, 2, 4, 6, 0)
    return cells.permute(*perm).reshape((F // t) * (H // p) * (W // p), -1)


def _blocks(blocks, x):
    for blk in blocks:
        x = blk(x[None])[0]
    return x


def _in_token_order(kept, rows, filler, n):
    """``[n, D]``: ``rows[k]`` at token ``kept[k]``, ``filler`` everywhere else (no in-place writes)."""
    hit = torch.zeros(n, 1).index_fill(0, kept, 1.0)
    return torch.zeros(n, rows.shape[1]).index_add(0, kept, rows) + (1 - hit) * filler


# -- recipe 1: image MAE --------------------------------------------------------------------------------------

def image_mae(model, imgs, noise, ratio):
    """MAE on images: keep the ``int(N (1 - r))`` lowest-noise patches (+ their table rows), cls (+ its row) first;
    decoder over ``[cls | all N tokens in order]``, mask token at the removed ones, + table; norm_pix MSE averaged
    over the removed patches."""
    B, N = noise.shape
    p, keep = model.patch_size, int(N * (1 - ratio))
    w, bias = model.patch_embed.weight.flatten(1), model.patch_embed.bias
    preds, total = [], 0.0
    for b in range(B):
        rank = noise[b].argsort()
        kept, removed = rank[:keep], rank[keep:]
        cols = _tubelets(imgs[b][:, None], 1, p, "cpq")
        enc = torch.cat([model.cls_token[0] + model.pos_embed[0, :1],
                         cols[kept] @ w.T + bias + model.pos_embed[0, 1:][kept]])
        dec = model.decoder_embed(model.norm(_blocks(model.blocks, enc)))
        seq = torch.cat([dec[:1], _in_token_order(kept, dec[1:], model.mask_token[0], N)]) + model.decoder_pos_embed[0]
        pred = model.decoder_pred(model.decoder_norm(_blocks(model.decoder_blocks, seq)))[1:]
        target = _normalise_per_patch(_tubelets(imgs[b][:, None], 1, p, "pqc"))
        total = total + ((pred[removed] - target[removed]) ** 2).mean(-1).sum()
        preds.append(pred)
    return torch.stack(preds), total / (B * (N - keep))


# -- recipe 2: spatiotemporal MAE -----------------------------------------------------------------------------

def spatiotemporal_mae(model, video, noise, ratio):
    """Spatiotemporal MAE: token ``n = t * HW + s`` has position ``spatial[s] + temporal[t]`` (encoder and decoder
    tables alike), cls its own row; agnostic random masking as MAE; the decoder's joint blocks over ``[cls | N in
    order]``, then attention within each frame; norm_pix MSE per tubelet over the removed ones."""
    B, N = noise.shape
    T, HW = model.grid[0], model.grid[1] * model.grid[2]
    t, p, keep = model.tubelet_size, model.patch_size, int(N * (1 - ratio))
    frame, place = torch.arange(N) // HW, torch.arange(N) % HW
    pos = model.pos_embed_spatial[0, place] + model.pos_embed_temporal[0, frame]
    dec_pos = model.decoder_pos_embed_spatial[0, place] + model.decoder_pos_embed_temporal[0, frame]
    w, bias = model.patch_embed.weight.flatten(1), model.patch_embed.bias
    preds, total = [], 0.0
    for b in range(B):
        rank = noise[b].argsort()
        kept, removed = rank[:keep], rank[keep:]
        rows = _tubelets(video[b], t, p, "cpq")[kept] @ w.T + bias + pos[kept]
        enc = torch.cat([model.cls_token[0] + model.pos_embed_class[0], rows])
        dec = model.decoder_embed(model.norm(_blocks(model.blocks, enc)))
        grid = _in_token_order(kept, dec[1:], model.mask_token[0], N) + dec_pos
        seq = _blocks(model.decoder_blocks, torch.cat([dec[:1] + model.decoder_pos_embed_class[0], grid]))
        frames = torch.cat([model.frame_block(seq[1 + f * HW:1 + (f + 1) * HW][None])[0] for f in range(T)])
        pred = model.decoder_pred(model.decoder_norm(torch.cat([seq[:1], frames])))[1:]
        target = _normalise_per_patch(_tubelets(video[b], t, p, "pqc"))
        total = total + ((pred[removed] - target[removed]) ** 2).mean(-1).sum()
        preds.append(pred)
    return torch.stack(preds), total / (B * (N - keep))


# -- recipe 3: VideoMAE v1 ------------------------------------------------------------------------------------

def tube_mask(B, grid, ratio, generator):
    """Per sample ``int(ratio * HW)`` spatial positions drawn without replacement, masked in every frame slice."""
    T, H, W = grid
    rows = []
    for _ in range(B):
        row = torch.zeros(H * W, dtype=torch.bool)
        row[torch.randperm(H * W, generator=generator)[:int(ratio * H * W)]] = True
        rows.append(row.repeat(T))
    return torch.stack(rows)


def videomae_v1(model, video, mask):
    """VideoMAE v1: visible tokens (+ fixed table) through the encoder; decoder over ``[visible | mask tokens at
    the masked tokens, ascending]`` (+ fixed table); targets from un-normalised pixels, each tubelet and channel by
    its mean and unbiased std (+ 1e-6); MSE over every masked row and value."""
    B, N = mask.shape
    t, p = model.tubelet_size, model.patch_size
    w, bias = model.patch_embed.weight.flatten(1), model.patch_embed.bias
    mean = torch.tensor(vk.IMAGENET_DEFAULT_MEAN)[:, None, None, None]
    std = torch.tensor(vk.IMAGENET_DEFAULT_STD)[:, None, None, None]
    preds, total, count = [], 0.0, 0
    for b in range(B):
        vis, hid = (~mask[b]).nonzero()[:, 0], mask[b].nonzero()[:, 0]
        enc = _tubelets(video[b], t, p, "cpq")[vis] @ w.T + bias + model.pos_embed[0, vis]
        dec = model.encoder_to_decoder(model.norm(_blocks(model.blocks, enc)))
        seq = torch.cat([dec + model.decoder_pos_embed[0, vis], model.mask_token[0] + model.decoder_pos_embed[0, hid]])
        pred = model.head(model.decoder_norm(_blocks(model.decoder_blocks, seq)[len(vis):]))
        pixels = _tubelets(video[b] * std + mean, t, p, "pqc")[hid].reshape(len(hid), -1, 3)
        target = (pixels - pixels.mean(1, keepdim=True)) / (pixels.std(1, keepdim=True) + 1e-6)
        total, count = total + ((pred - target.flatten(1)) ** 2).sum(), count + pred.numel()
        preds.append(pred)
    return torch.stack(preds), total / count


# -- the tests ------------------------------------------------------------------------------------------------

def _case(example: str, cls: str, model_kw: dict, seed: int, batch: int, input_shape: tuple, make_mask):
    """``(example module, its seeded tiny model with perturbed weights, the step's arguments)``: a random batch of
    ``input_shape`` and ``make_mask(model, batch, generator)``'s mask arguments."""
    ex = _load(example)
    torch.manual_seed(0)
    model = _perturbed(getattr(ex, cls)(**model_kw))
    g = torch.Generator().manual_seed(seed)
    return ex, model, (torch.randn(batch, *input_shape, generator=g), *make_mask(model, batch, g))


def _image_case():
    ex, model, args = _case("port_image_mae", "TinyImageMAE", dict(img_size=32, patch_size=8, dim=32, dec_dim=32),
                            1, 3, (3, 32, 32), lambda m, b, g: (torch.rand(b, 16, generator=g), 0.75))
    return ex, model, args, image_mae


def _spatiotemporal_case():
    ex, model, args = _case("port_spatiotemporal_mae", "TinySpatiotemporalMAE",
                            dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2), 2, 2, (3, 4, 32, 32),
                            lambda m, b, g: (torch.rand(b, 32, generator=g), 0.9))
    return ex, model, args, spatiotemporal_mae


def _videomae_case():
    ex, model, args = _case("port_videomae_v1", "TinyVideoMAE",
                            dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2), 3, 2, (3, 4, 32, 32),
                            lambda m, b, g: (tube_mask(b, m.grid, 0.9, g),))
    return ex, model, args, videomae_v1


CASES = {"image_mae": _image_case, "spatiotemporal_mae": _spatiotemporal_case, "videomae_v1": _videomae_case}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("recipe", CASES)
def test_kernel_step_is_the_recipe(backend, recipe):
    ex, model, args, restated = CASES[recipe]()
    want = _run(model, lambda m: restated(m, *args))
    if recipe == "videomae_v1":
        num_visible = int((~args[1][0]).sum())
        assert num_visible == vk.keep_count(16, 0.9, "videomae") * model.grid[0] == 4
        got = _run(model, lambda m: ex.kernel_step(m, *args, num_visible))
    else:
        got = _run(model, lambda m: ex.kernel_step(m, *args))
    _assert_same(model, got, want)


@pytest.mark.parametrize("recipe", CASES)
def test_original_step_is_the_recipe(recipe):
    ex, model, args, restated = CASES[recipe]()
    _assert_same(model, _run(model, lambda m: ex.original_step(m, *args)), _run(model, lambda m: restated(m, *args)))


def test_the_restatements_can_fail(monkeypatch):
    """The checks see a wrong port: the concat layout feeds the frame-wise block rows out of token order, and
    VideoMAE's target in place of MAE's changes the loss."""
    ex, model, args, restated = _spatiotemporal_case()
    pred, loss = restated(model, *args)
    decoder_input = vk.decoder_input
    monkeypatch.setattr(vk, "decoder_input", lambda *a, **k: decoder_input(*a, **{**k, "layout": "concat"}))
    with pytest.raises(AssertionError):
        assert_close_fp(ex.kernel_step(model, *args)[0], pred)
    monkeypatch.undo()
    recon_loss = vk.recon_loss
    monkeypatch.setattr(vk, "recon_loss", lambda *a, **k: recon_loss(*a, **{**k, "target": "videomae"}))
    with pytest.raises(AssertionError):
        assert_close_fp(ex.kernel_step(model, *args)[1], loss)


def _body(fn):
    """The stripped source lines of ``fn`` after its docstring."""
    source = inspect.getsource(fn)
    return [line.strip() for line in source.split('"""')[2].splitlines() if line.strip()]


def _marked_lines(module):
    return [line for line in _body(module.kernel_step) if "# vmae2_kernels" in line]


@pytest.mark.parametrize("name", RECIPES)
def test_every_changed_line_is_marked(name):
    """Each unmarked line of ``kernel_step`` is a line of ``original_step``: the marks show the whole port."""
    module = _load(name)
    original = set(_body(module.original_step))
    unmarked = [line for line in _body(module.kernel_step) if "# vmae2_kernels" not in line]
    assert [line for line in unmarked if line not in original] == []


def _guide_blocks():
    return [[line.strip() for line in block.strip().splitlines()]
            for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)]


@pytest.mark.parametrize("name", RECIPES)
def test_the_guide_shows_each_examples_marked_lines(name):
    marked = _marked_lines(_load(name))
    assert len(marked) >= 4
    assert marked in _guide_blocks(), f"docs/porting.md has no python block equal to {name}'s marked lines"
    assert f"examples/{name}.py" in GUIDE.read_text()


def test_the_guide_says_where_the_gains_are():
    text = " ".join(GUIDE.read_text().split())
    assert "On CPU the ported steps run at the same speed as the originals" in text
    assert "PREDICTED" in text and "39" in text and "40" in text
    readme = (ROOT / "README.md").read_text()
    assert "docs/porting.md" in readme.split("### Using the ops in your own MAE code")[1].split("\n## ")[0]


def test_port_steps_tally_runs_and_every_port_moves_fewer_bytes(capsys):
    from benchmarks import port_steps

    assert port_steps.main(["--no-time"]) == 0
    assert capsys.readouterr().out.count("PREDICTED saving") == 3
    assert all(kernel < original for original, kernel in port_steps.forward_bytes().values())
