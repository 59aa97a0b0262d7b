"""Tests for ``vmae2.weights``: loading official VideoMAE V2 checkpoints, refusing files that are not checkpoints
and loads that would leave weights at their initialisation, and atomic safetensors saving.

Every checkpoint file is generated here, in ``tmp_path``, in the layouts the official code writes
(reference §4.3-4.5): ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` from ``utils.save_model``,
``_orig_mod.`` prefixes from ``torch.compile``, ``module.`` prefixes from DDP, v1's ``'module'`` wrapper key.

Speed (the file must run in seconds on 2 CPU cores):
* the official small models at ``img_size=32, num_frames=4`` (token grid ``(2, 2, 2)``) are used where the
  real key layout matters; fine-tuning ``create_model`` is slow on CPU (truncated-normal init), so load
  *targets* are built on the meta device and materialised with ``to_empty`` (``blank``) -- fine for checking
  state dicts, never used for a forward pass;
* the many wrapper/prefix/error combinations use a *tiny* configuration of the same classes (2 blocks,
  width 64): same key names, kilobytes instead of 90 MB per file;
* the command-line tests (``train``/``finetune --init``) run at most one step of the tiny models on two generated
  videos.
"""
from __future__ import annotations

import argparse
import functools
import os
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from vmae2.masking import running_cell_ids, tube_ids
from vmae2.models import PretrainVisionTransformer, VisionTransformer, ViTConfig, create_model
from vmae2.weights import LoadReport, load_state_dict, load_weights, save_safetensors

PRETRAIN_S = "pretrain_videomae_small_patch16_224"
PRETRAIN_B = "pretrain_videomae_base_patch16_224"
FINETUNE_S = "vit_small_patch16_224"
GEOM = dict(num_frames=4, img_size=32)
NUM_CLASSES = 7
TINY = ViTConfig(patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0, decoder_embed_dim=32,
                 decoder_num_heads=2)


# -- helpers ------------------------------------------------------------------------------------------

def _seeded(build, seed: int, kw: dict) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(**GEOM, **kw).eval()


def make_pretrain(seed: int, **kw) -> torch.nn.Module:
    return _seeded(functools.partial(create_model, PRETRAIN_S), seed, kw)


def make_finetune(seed: int, **kw) -> torch.nn.Module:
    return _seeded(functools.partial(create_model, FINETUNE_S), seed, {"num_classes": NUM_CLASSES, **kw})


def tiny_pretrain(seed: int, **kw) -> torch.nn.Module:
    return _seeded(functools.partial(PretrainVisionTransformer, TINY), seed, kw)


def tiny_finetune(seed: int, **kw) -> torch.nn.Module:
    return _seeded(functools.partial(VisionTransformer, TINY), seed, {"num_classes": NUM_CLASSES, **kw})


def blank(name: str, **kw) -> torch.nn.Module:
    """An official-size model with deterministic placeholder weights (no forward: buffers are not valid)."""
    with torch.device("meta"):
        model = create_model(name, **GEOM, **kw)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for i, t in enumerate(model.state_dict().values()):
            t.fill_(-1.0 - i)
    return model.eval()


def clone_sd(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k  # save / load / rename: pure data movement


def assert_model_holds(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in expected.items():
        assert torch.equal(own[k], v), k


def prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def official_args() -> argparse.Namespace:
    """The kind of ``args`` the official ``run_mae_pretraining.py`` stores in every checkpoint."""
    return argparse.Namespace(
        batch_size=32, epochs=800, save_ckpt_freq=50, model="pretrain_videomae_small_patch16_224",
        tubelet_size=2, with_checkpoint=False, decoder_depth=4, mask_type="tube", decoder_mask_type="run_cell",
        mask_ratio=0.9, decoder_mask_ratio=0.5, input_size=224, drop_path=0.0, normlize_target=True,
        opt="adamw", opt_eps=1e-8, opt_betas=[0.9, 0.95], clip_grad=None, momentum=0.9, weight_decay=0.05,
        weight_decay_end=None, lr=1.5e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=40, warmup_steps=-1,
        color_jitter=0.0, train_interpolation="bicubic", data_path="/data/k710.csv", data_root="",
        imagenet_default_mean_and_std=True, num_frames=16, sampling_rate=4, num_sample=4, output_dir="out",
        log_dir="out", device="cuda", seed=0, resume="", auto_resume=True, start_epoch=0, num_workers=10,
        pin_mem=True, world_size=8, local_rank=-1, dist_on_itp=False, dist_url="env://", distributed=True,
        rank=0, gpu=0, dist_backend="nccl", window_size=(8, 14, 14), patch_size=(16, 16))


def official_checkpoint(model: torch.nn.Module, *, prefix: str = "", wrapper: str = "model",
                        with_optimizer: bool = False) -> dict:
    """A checkpoint as ``utils.save_model`` writes it (``model_without_ddp.state_dict()`` under ``wrapper``)."""
    out = {}
    if with_optimizer:  # one step first (it changes the weights), so the state holds exp_avg / exp_avg_sq
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        for p in model.parameters():
            p.grad = None
        out["optimizer"] = opt.state_dict()
    out.update({wrapper: prefixed(model.state_dict(), prefix), "epoch": 799,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 17},
                "args": official_args()})
    return out


def official_pretrain_shapes(D=384, depth=12, Hm=1536, Dd=192, dec_depth=4, Hmd=768, out=1536, p=16, t=2):
    """Pre-training ``state_dict`` keys and shapes exactly as listed in reference §4.3 (small by default)."""
    shapes = {"encoder.patch_embed.proj.weight": (D, 3, t, p, p), "encoder.patch_embed.proj.bias": (D,)}

    def block(prefix, dim, hidden):
        return {f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,),
                f"{prefix}.attn.q_bias": (dim,), f"{prefix}.attn.v_bias": (dim,),
                f"{prefix}.attn.qkv.weight": (3 * dim, dim),
                f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
                f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,),
                f"{prefix}.mlp.fc1.weight": (hidden, dim), f"{prefix}.mlp.fc1.bias": (hidden,),
                f"{prefix}.mlp.fc2.weight": (dim, hidden), f"{prefix}.mlp.fc2.bias": (dim,)}

    for i in range(depth):
        shapes.update(block(f"encoder.blocks.{i}", D, Hm))
    shapes.update({"encoder.norm.weight": (D,), "encoder.norm.bias": (D,)})
    for j in range(dec_depth):
        shapes.update(block(f"decoder.blocks.{j}", Dd, Hmd))
    shapes.update({"decoder.norm.weight": (Dd,), "decoder.norm.bias": (Dd,),
                   "decoder.head.weight": (out, Dd), "decoder.head.bias": (out,),
                   "encoder_to_decoder.weight": (Dd, D), "mask_token": (1, 1, Dd)})
    return shapes


def official_finetune_shapes(num_classes=NUM_CLASSES, D=384, depth=12, Hm=1536, p=16, t=2):
    """Fine-tuning ``VisionTransformer`` keys and shapes as listed in reference §4.4."""
    enc = official_pretrain_shapes(D=D, depth=depth, Hm=Hm, p=p, t=t)
    shapes = {k[len("encoder."):]: v for k, v in enc.items()
              if k.startswith("encoder.") and not k.startswith("encoder.norm.")}
    shapes.update({"fc_norm.weight": (D,), "fc_norm.bias": (D,), "head.weight": (num_classes, D),
                   "head.bias": (num_classes,)})
    return shapes


def constant_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A state dict with one distinct value per key (so a weight landing under the wrong name is caught).

    The tensors are expanded scalars: the full official shapes, but a few bytes of storage on disk.
    """
    return {k: torch.tensor(0.5 + i, dtype=torch.float32).expand(s) for i, (k, s) in enumerate(shapes.items())}


def video_and_masks(model, batch=2, seed=123):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, 3, GEOM["num_frames"], GEOM["img_size"], GEOM["img_size"], generator=g)
    vis = tube_ids(batch, model.grid, 0.5, generator=g)
    dec = running_cell_ids(batch, model.grid, 0.5, generator=g)
    return video, vis, dec


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n not in keep)


def no_change(report: LoadReport) -> bool:
    return (report.missing, report.unexpected, report.dropped) == ([], [], [])


@pytest.fixture(scope="module")
def tiny_ft_sd() -> dict[str, torch.Tensor]:
    return clone_sd(tiny_finetune(1))


# -- key layout matches the official one --------------------------------------------------------------

def test_pretrain_state_dict_has_official_keys_and_shapes():
    with torch.device("meta"):
        sd = create_model(PRETRAIN_S, **GEOM).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == official_pretrain_shapes()


def test_finetune_state_dict_has_official_keys_and_shapes():
    with torch.device("meta"):
        sd = create_model(FINETUNE_S, **GEOM, num_classes=NUM_CLASSES).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == official_finetune_shapes()


@pytest.mark.parametrize("name, shapes", [(PRETRAIN_S, official_pretrain_shapes()),
                                          (FINETUNE_S, official_finetune_shapes())], ids=["pretrain", "finetune"])
def test_checkpoint_built_from_the_official_key_list_loads_strictly(tmp_path, name, shapes):
    """Direction official -> ours: a file whose keys come from the reference (not from our model) loads strictly."""
    sd = constant_state_dict(shapes)
    path = tmp_path / "official.pth"
    torch.save({"model": prefixed(sd, "_orig_mod."), "epoch": 3, "args": official_args()}, path)
    kw = {"num_classes": NUM_CLASSES} if name == FINETUNE_S else {}
    model = blank(name, **kw)
    assert no_change(load_weights(model, path, strict=True))
    assert_same_tensors(model.state_dict(), sd)


# -- round trips --------------------------------------------------------------------------------------

def test_save_safetensors_then_load_is_bit_identical(tmp_path):
    source = tiny_pretrain(1)
    expected = clone_sd(source)
    path = save_safetensors(source, tmp_path / "sub" / "dir" / "w.safetensors", metadata={"epoch": "799"})
    assert path == tmp_path / "sub" / "dir" / "w.safetensors" and path.is_file()
    assert leftovers(path.parent, {"w.safetensors"}) == []
    assert_same_tensors(load_state_dict(path), expected)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"epoch": "799"}

    fresh = tiny_pretrain(2)
    assert not torch.equal(fresh.state_dict()["encoder_to_decoder.weight"], expected["encoder_to_decoder.weight"])
    assert no_change(load_weights(fresh, path))
    assert_same_tensors(fresh.state_dict(), expected)


def test_save_safetensors_keeps_dtypes_and_values_of_a_plain_dict(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    sd = {"a.fp32": torch.randn(3, 4, generator=g), "b.fp16": torch.randn(7, generator=g).half(),
          "c.bf16": torch.randn(2, 2, generator=g).bfloat16(), "d.int64": torch.arange(10),
          "e.noncontig": base.t(), "f.bool": torch.tensor([True, False, True]),
          "g.param": torch.nn.Parameter(torch.randn(4, generator=g))}
    path = save_safetensors(sd, str(tmp_path / "mixed.safetensors"))  # str path accepted, Path returned
    assert isinstance(path, Path)
    loaded = load_state_dict(str(path))
    assert_same_tensors(loaded, {k: v.detach() for k, v in sd.items()})
    assert not loaded["g.param"].requires_grad


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module.", "module._orig_mod."])
def test_safetensors_with_prefixed_keys_is_stripped(tmp_path, tiny_ft_sd, prefix):
    path = tmp_path / "compiled.safetensors"
    safetensors.torch.save_file(prefixed(tiny_ft_sd, prefix), str(path))
    assert_same_tensors(load_state_dict(path), tiny_ft_sd)


@pytest.mark.parametrize("prefix", ["", "_orig_mod.", "module.", "module._orig_mod.", "_orig_mod.module."])
@pytest.mark.parametrize("wrapper", ["model", "module", "state_dict", None])
def test_pth_wrappers_and_prefixes_round_trip(tmp_path, tiny_ft_sd, wrapper, prefix):
    sd = prefixed(tiny_ft_sd, prefix)
    path = tmp_path / "ckpt.pth"
    torch.save(sd if wrapper is None else {wrapper: sd, "epoch": 4, "args": argparse.Namespace(lr=1e-3)}, path)
    assert_same_tensors(load_state_dict(path), tiny_ft_sd)

    model = tiny_finetune(2)
    assert not torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], tiny_ft_sd["blocks.0.attn.qkv.weight"])
    assert no_change(load_weights(model, path, strict=True))
    assert_same_tensors(model.state_dict(), tiny_ft_sd)


@pytest.mark.parametrize("prefix", ["", "_orig_mod.", "module._orig_mod."])
def test_in_memory_state_dict_source(tiny_ft_sd, prefix):
    model = tiny_finetune(3)
    assert no_change(load_weights(model, {"model": prefixed(tiny_ft_sd, prefix), "epoch": 1}))
    assert_same_tensors(model.state_dict(), tiny_ft_sd)


def test_official_style_checkpoint_with_namespace_optimizer_and_scaler_loads_safely(tmp_path):
    source = tiny_pretrain(1)
    ck = official_checkpoint(source, prefix="_orig_mod.", with_optimizer=True)
    expected = clone_sd(source)
    assert isinstance(ck["args"], argparse.Namespace) and ck["optimizer"]["state"]
    path = tmp_path / "checkpoint-799.pth"
    torch.save(ck, path)
    # The file really needs the Namespace allowance: plain weights_only loading refuses it.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    loaded = load_state_dict(path)
    assert_same_tensors(loaded, expected)  # only the model weights, none of the optimizer tensors
    # The allowance is scoped to the call, not left in torch's global allow-list.
    assert argparse.Namespace not in torch.serialization.get_safe_globals()

    model = tiny_pretrain(2)
    report = load_weights(model, path, strict=True)
    assert isinstance(report, LoadReport) and no_change(report)
    assert_same_tensors(model.state_dict(), expected)


# -- strict loading reproduces the model ----------------------------------------------------------------

def test_pretrain_official_pth_reproduces_outputs_and_back_to_safetensors(tmp_path):
    """Our small pre-training model -> official-style .pth -> a freshly built model: same outputs, same masks."""
    source = make_pretrain(1)
    video, vis, dec = video_and_masks(source)
    with torch.no_grad():
        ref = source(video, vis, dec)
    path = tmp_path / "checkpoint-799.pth"
    torch.save(official_checkpoint(source, prefix="_orig_mod."), path)
    expected = clone_sd(source)
    del source

    fresh = make_pretrain(2)
    assert not torch.equal(fresh.state_dict()["encoder.blocks.0.attn.qkv.weight"],
                           expected["encoder.blocks.0.attn.qkv.weight"])  # the output check below can fail
    assert no_change(load_weights(fresh, path, strict=True))
    with torch.no_grad():
        out = fresh(video, vis, dec)
    assert out.shape == (2, 4, 1536)
    assert torch.equal(out, ref)  # the same weights through the same kernels: bit-exact

    # and back: our weights -> safetensors -> another model, bit-identical weights
    st = save_safetensors(fresh, tmp_path / "w.safetensors")
    again = blank(PRETRAIN_S)
    assert no_change(load_weights(again, st, strict=True))
    assert_same_tensors(again.state_dict(), expected)


def test_finetune_official_pth_reproduces_logits(tmp_path):
    source = tiny_finetune(1)
    video = torch.randn(2, 3, GEOM["num_frames"], GEOM["img_size"], GEOM["img_size"],
                        generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = source(video)
    path = tmp_path / "checkpoint-best.pth"
    torch.save(official_checkpoint(source, prefix="module.", wrapper="module"), path)
    fresh = tiny_finetune(2)
    with torch.no_grad():
        assert not torch.allclose(fresh(video), ref)
    assert no_change(load_weights(fresh, path, strict=True))
    with torch.no_grad():
        assert torch.equal(fresh(video), ref)  # the same weights through the same kernels: bit-exact


# -- pretrain -> finetune --------------------------------------------------------------------------------

def test_pretrain_checkpoint_into_classifier(tmp_path):
    # Official small pre-training keys/shapes (reference §4.3), a distinct value per key; encoder.norm is not
    # the LayerNorm init, so copying it into fc_norm would be visible.
    sd = constant_state_dict(official_pretrain_shapes())
    path = tmp_path / "mae-s.pth"
    torch.save({"model": prefixed(sd, "_orig_mod."), "epoch": 799, "args": official_args()}, path)
    model = blank(FINETUNE_S, num_classes=NUM_CLASSES)
    before = clone_sd(model)

    # strict: refused, naming the classifier keys, model untouched
    with pytest.raises(ValueError) as info:
        load_weights(model, path, strict=True)
    for k in ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"):
        assert k in str(info.value)
    assert_same_tensors(model.state_dict(), before)

    report = load_weights(model, path, strict=False)
    assert report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report.unexpected == []
    expected_dropped = {k for k in sd if not k.startswith("encoder.")} | {"encoder.norm.weight", "encoder.norm.bias"}
    assert {"encoder_to_decoder.weight", "mask_token", "decoder.head.weight", "decoder.head.bias",
            "decoder.norm.weight", "decoder.norm.bias", "decoder.blocks.3.mlp.fc2.bias"} <= expected_dropped
    assert len(expected_dropped) == 4 * 13 + 4 + 2 + 2
    assert sorted(report.dropped) == sorted(expected_dropped)
    assert "fc_norm" in str(report) and "dropped" in str(report)

    after = model.state_dict()
    n_copied = 0
    for k, v in sd.items():
        if k.startswith("encoder.") and not k.startswith("encoder.norm."):
            assert torch.equal(after[k[len("encoder."):]], v), k
            n_copied += 1
    assert n_copied == 2 + 12 * 13
    for k in report.missing:  # the fresh classifier parts are untouched (fc_norm did not get encoder.norm)
        assert torch.equal(after[k], before[k]), k


def test_pretrain_checkpoint_into_classifier_from_memory(tiny_ft_sd):
    pre = clone_sd(tiny_pretrain(4))
    model = tiny_finetune(4)
    report = load_weights(model, {"module": prefixed(pre, "module.")}, strict=False)
    assert report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report.unexpected == []
    assert set(report.dropped) == {k for k in pre if not k.startswith("encoder.") or k.startswith("encoder.norm.")}
    assert torch.equal(model.state_dict()["blocks.1.attn.v_bias"], pre["encoder.blocks.1.attn.v_bias"])


# -- precise errors ---------------------------------------------------------------------------------------

def test_base_checkpoint_into_small_model_names_key_and_both_shapes(tmp_path):
    # A base-size checkpoint with the real key list and shapes; expanded scalars keep the file tiny.
    base_shapes = official_pretrain_shapes(D=768, Hm=3072, Dd=384, Hmd=1536)
    base_sd = {k: torch.zeros(()).expand(s) for k, s in base_shapes.items()}
    path = tmp_path / "mae-b.pth"
    torch.save({"model": base_sd, "epoch": 1}, path)
    assert path.stat().st_size < 10_000_000
    with torch.device("meta"):
        assert {k: tuple(v.shape) for k, v in create_model(PRETRAIN_B, **GEOM).state_dict().items()} == base_shapes

    model = blank(PRETRAIN_S)
    before = clone_sd(model)
    small_shapes = official_pretrain_shapes()
    n_bad = sum(1 for k in base_shapes if base_shapes[k] != small_shapes[k])
    assert n_bad == len(base_shapes) - 1  # only decoder.head.bias [1536] agrees

    for strict in (True, False):
        with pytest.raises(ValueError) as info:
            load_weights(model, path, strict=strict)
        msg = str(info.value)
        assert "encoder.patch_embed.proj.weight: checkpoint (768, 3, 2, 16, 16) vs model (384, 3, 2, 16, 16)" in msg
        assert f"{n_bad} weights have the wrong shape" in msg
        assert f"and {n_bad - 8} more" in msg
        assert "decoder.head.bias" not in msg  # same shape in both sizes: not reported
    assert_same_tensors(model.state_dict(), before)


def test_head_size_mismatch_raises_even_when_not_strict(tmp_path):
    other = tiny_finetune(0, num_classes=400)
    path = tmp_path / "k400.pth"
    torch.save({"module": clone_sd(other)}, path)
    model = tiny_finetune(1)
    before = clone_sd(model)
    with pytest.raises(ValueError) as info:
        load_weights(model, path, strict=False)
    msg = str(info.value)
    assert "2 weights have the wrong shape" in msg
    assert "head.weight: checkpoint (400, 64) vs model (7, 64)" in msg
    assert "head.bias: checkpoint (400,) vs model (7,)" in msg
    assert "more" not in msg
    assert_same_tensors(model.state_dict(), before)


def test_decoder_depth_mismatch_reports_exact_keys(tmp_path):
    """A different decoder depth changes the key set, not shapes: missing / unexpected keys, listed (whole blocks
    as ``decoder.blocks.2-3.*``). Extra keys are ignored by a non-strict load; missing ones need ``partial``."""
    deep = tiny_pretrain(0, decoder_depth=4)
    shallow = tiny_pretrain(1, decoder_depth=2)
    extra = sorted(k for k in deep.state_dict() if k.startswith(("decoder.blocks.2.", "decoder.blocks.3.")))
    assert len(extra) == 26

    deep_path, shallow_path = tmp_path / "deep.pth", tmp_path / "shallow.pth"
    torch.save({"model": clone_sd(deep)}, deep_path)
    torch.save({"model": clone_sd(shallow)}, shallow_path)

    # 4-block checkpoint into a 2-block model: unexpected keys
    target = tiny_pretrain(2, decoder_depth=2)
    before = clone_sd(target)
    with pytest.raises(ValueError) as info:
        load_weights(target, deep_path, strict=True)
    assert "unexpected 26: decoder.blocks.2-3.* (26)" in str(info.value) and "missing 0" in str(info.value)
    assert_same_tensors(target.state_dict(), before)
    report = load_weights(target, deep_path, strict=False)
    assert (report.missing, report.unexpected) == ([], extra)
    assert_model_holds(target, {k: v for k, v in deep.state_dict().items() if k not in extra})

    # 2-block checkpoint into a 4-block model: missing keys
    target = tiny_pretrain(2, decoder_depth=4)
    before = clone_sd(target)
    for strict in (True, False):
        with pytest.raises(ValueError) as info:
            load_weights(target, shallow_path, strict=strict)
        assert "missing 26: decoder.blocks.2-3.* (26)" in str(info.value) and "unexpected 0" in str(info.value)
    assert "--init_partial" in str(info.value)
    assert_same_tensors(target.state_dict(), before)
    report = load_weights(target, shallow_path, strict=False, partial=True)
    assert (report.missing, report.unexpected) == (extra, [])
    assert "missing 26: decoder.blocks.2-3.* (26) (left at their initialisation)" in str(report)


def test_missing_and_unexpected_keys_in_strict_mode(tmp_path, tiny_ft_sd):
    sd = dict(tiny_ft_sd)
    del sd["blocks.1.attn.q_bias"], sd["head.bias"]
    sd["blocks.1.attn.qkv.bias"] = torch.zeros(3 * 64)
    sd["cls_token"] = torch.zeros(1, 1, 64)
    path = tmp_path / "odd.pth"
    torch.save({"model": sd}, path)

    model = tiny_finetune(5)
    before = clone_sd(model)
    with pytest.raises(ValueError) as info:
        load_weights(model, path)  # strict is the default
    msg = str(info.value)
    assert "VisionTransformer" in msg
    for k in ("blocks.1.attn.q_bias", "head.bias", "blocks.1.attn.qkv.bias", "cls_token"):
        assert k in msg
    assert "missing 2" in msg and "unexpected 2" in msg
    assert_same_tensors(model.state_dict(), before)

    with pytest.raises(ValueError, match="would leave 2 of the"):
        load_weights(model, path, strict=False)
    assert_same_tensors(model.state_dict(), before)
    report = load_weights(model, path, strict=False, partial=True)
    assert report.missing == ["blocks.1.attn.q_bias", "head.bias"]
    assert report.unexpected == ["blocks.1.attn.qkv.bias", "cls_token"]
    assert report.dropped == []
    assert_model_holds(model, {k: v for k, v in sd.items() if k in tiny_ft_sd})
    assert torch.equal(model.state_dict()["head.bias"], before["head.bias"])


class _SystemPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _ExecPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("layout", ["top_level", "inside_model", "inside_args_namespace", "raw_pickle"])
@pytest.mark.parametrize("payload", [_SystemPayload, _ExecPayload])
def test_malicious_pickle_is_refused_without_running(tmp_path, tiny_ft_sd, layout, payload):
    marker = tmp_path / "pwned"
    evil = payload(marker)
    path = tmp_path / "evil.pth"
    sd = dict(tiny_ft_sd)
    if layout == "top_level":
        torch.save({"model": sd, "epoch": 1, "hook": evil}, path)
    elif layout == "inside_model":
        torch.save({"model": {**sd, "blocks.0.attn.q_bias": evil}}, path)
    elif layout == "inside_args_namespace":  # Namespace is allowed; what it holds must still be checked
        torch.save({"model": sd, "args": argparse.Namespace(lr=1e-3, hook=evil)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"model": sd, "hook": evil}, f, protocol=2)

    model = tiny_finetune(6)
    before = clone_sd(model)
    with pytest.raises(ValueError) as info:
        load_weights(model, path, strict=False)
    assert "refuses" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists(), "the pickled payload ran during loading"
    with pytest.raises(ValueError):
        load_state_dict(path)
    assert not marker.exists(), "the pickled payload ran during loading"
    assert_same_tensors(model.state_dict(), before)

    # Sanity: the payload is real -- an unsafe load runs it.
    with open(path, "rb") as f:
        if layout == "raw_pickle":
            pickle.load(f)
        else:
            torch.load(f, weights_only=False)
    assert marker.exists()


def test_missing_path_raises_file_not_found(tmp_path):
    model = tiny_finetune(0)
    for name in ("nope.pth", "nope.safetensors", "nope.bin"):
        with pytest.raises(FileNotFoundError, match="nope"):
            load_state_dict(tmp_path / name)
        with pytest.raises(FileNotFoundError):
            load_weights(model, str(tmp_path / name))
    (tmp_path / "a_dir.pth").mkdir()
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "a_dir.pth")


@pytest.mark.parametrize("content", [
    {"epoch": 3, "args": argparse.Namespace(lr=1.0), "scaler": {"scale": 1.0}},
    {"model": {}, "epoch": 3},
    {"model": {"note": "no tensors here"}},
    {},
    [torch.zeros(3)],
    torch.zeros(3),
], ids=["metadata_only", "empty_model", "model_without_tensors", "empty_dict", "list", "bare_tensor"])
def test_file_without_tensors_raises_value_error(tmp_path, content):
    path = tmp_path / "empty.pth"
    torch.save(content, path)
    with pytest.raises(ValueError, match=str(path)):
        load_state_dict(path)
    model = tiny_finetune(0)
    before = clone_sd(model)
    with pytest.raises(ValueError):
        load_weights(model, path, strict=False)
    assert_same_tensors(model.state_dict(), before)


def test_in_memory_dict_without_tensors_raises_value_error():
    with pytest.raises(ValueError, match="no tensors"):
        load_weights(tiny_finetune(0), {"epoch": 1, "model": {}}, strict=False)


def test_safetensors_file_without_tensors_raises_value_error(tmp_path):
    path = tmp_path / "empty.safetensors"
    safetensors.torch.save_file({}, str(path), metadata={"note": "empty"})
    with pytest.raises(ValueError):
        load_state_dict(path)


# -- atomic saving ----------------------------------------------------------------------------------------

def test_save_safetensors_leaves_no_temp_files(tmp_path, tiny_ft_sd):
    path = tmp_path / "w.safetensors"
    save_safetensors(tiny_ft_sd, path)
    assert leftovers(tmp_path, {"w.safetensors"}) == []
    other = tiny_finetune(2)
    save_safetensors(other, path)  # overwrite in place
    assert leftovers(tmp_path, {"w.safetensors"}) == []
    assert_same_tensors(load_state_dict(path), clone_sd(other))


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_failed_save_keeps_previous_file_and_cleans_up(tmp_path, monkeypatch, tiny_ft_sd, error):
    path = tmp_path / "w.safetensors"
    save_safetensors(tiny_ft_sd, path)
    original = path.read_bytes()
    inode = path.stat().st_ino
    written_to = []

    def broken_save_file(tensors, filename, metadata=None):
        written_to.append(Path(filename))
        with open(filename, "wb") as f:
            f.write(original[: len(original) // 3])  # a partial file
        raise error

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(type(error)):
        save_safetensors(clone_sd(tiny_finetune(2)), path)

    assert len(written_to) == 1
    assert written_to[0] != path and written_to[0].parent == path.parent  # wrote a temp file, not the target
    assert not written_to[0].exists()
    assert path.read_bytes() == original and path.stat().st_ino == inode
    assert leftovers(tmp_path, {"w.safetensors"}) == []
    monkeypatch.undo()
    assert_same_tensors(load_state_dict(path), tiny_ft_sd)


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise OSError("no space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(OSError, match="no space"):
        save_safetensors({"a": torch.zeros(4)}, tmp_path / "new.safetensors")
    assert os.listdir(tmp_path) == []


def test_saved_file_permissions_follow_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    if (0o666 & ~umask) == 0o600:
        pytest.skip("with this umask a normal write is owner-only too")
    reference = tmp_path / "plain.pth"
    torch.save({"a": torch.zeros(2)}, reference)  # a plain write follows the umask
    path = save_safetensors({"a": torch.zeros(2)}, tmp_path / "atomic.safetensors")
    assert (path.stat().st_mode & 0o777) == (reference.stat().st_mode & 0o777) == (0o666 & ~umask)


# -- files that are not checkpoints, damaged files ----------------------------------------------------------

NOT_A_CHECKPOINT = "is not a checkpoint (expected a .pth/.pt saved by torch or a .safetensors file)"
MP4_START = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom\x00\x00\x00\x08free"  # an MP4's first boxes


def _npz_bytes() -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, weight=np.zeros(3))
    return buffer.getvalue()


def every_reader(path: Path) -> list[str]:
    """The message each command's reader gives for ``path``: train --init, finetune --init, evaluate/predict
    --weights (with their position-grid look-up), extract --weights."""
    from vmae2.weights import load_classifier_weights, load_feature_weights, stored_pos_grid

    readers = [lambda: load_state_dict(path),
               lambda: load_weights(tiny_pretrain(0), path, strict=False),
               lambda: load_classifier_weights(tiny_finetune(0), path),
               lambda: (stored_pos_grid(path), load_classifier_weights(tiny_finetune(0), path, strict=True)),
               lambda: load_feature_weights(tiny_finetune(0, num_classes=0), path)]
    messages = []
    for read in readers:
        with pytest.raises(ValueError) as info:
            read()
        messages.append(str(info.value))
    return messages


@pytest.mark.parametrize("name, payload", [
    ("notes.pth", b"hello world\nthese are my notes\n"),
    ("notes.safetensors", b"hello world\nthese are my notes\n"),
    ("clip.pth", MP4_START + bytes(range(256)) * 4),
    ("clip.safetensors", MP4_START + bytes(range(256)) * 4),
    ("random.pt", bytes((i * 97 + 13) % 251 for i in range(4096))),
    ("empty.pth", b""),
    ("empty.safetensors", b""),
    ("numpy.pth", _npz_bytes()),  # a zip archive, but not one torch.save wrote
], ids=["text_pth", "text_safetensors", "video_pth", "video_safetensors", "random_bytes", "empty_pth",
        "empty_safetensors", "npz_as_pth"])
def test_a_file_that_is_not_a_checkpoint_is_one_line_without_unpickling_advice(tmp_path, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    for message in every_reader(path):
        assert message == f"{path} {NOT_A_CHECKPOINT}"


@pytest.mark.parametrize("cut", [12, 40, -1], ids=["in_header_length", "in_header", "in_data"])
def test_a_damaged_safetensors_file_is_one_line_naming_it(tmp_path, tiny_ft_sd, cut):
    whole = tmp_path / "whole.safetensors"
    save_safetensors(tiny_ft_sd, whole)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(whole.read_bytes()[:cut])
    messages = every_reader(path)
    assert len(set(messages)) == 1  # the same message from every command
    assert messages[0].startswith(f"{path} is a damaged or truncated .safetensors file (")
    assert messages[0].endswith("save or download it again") and "\n" not in messages[0]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_truncated_torch_checkpoint_is_one_line_naming_it(tmp_path, tiny_ft_sd, legacy):
    whole = tmp_path / "whole.pth"
    torch.save({"model": tiny_ft_sd}, whole, _use_new_zipfile_serialization=not legacy)
    for cut in (100, len(whole.read_bytes()) // 2, len(whole.read_bytes()) - 1):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(whole.read_bytes()[:cut])
        messages = every_reader(path)
        assert len(set(messages)) == 1
        assert messages[0].startswith(f"{path} is a damaged or truncated torch checkpoint (")
        assert "\n" not in messages[0] and "weights_only" not in messages[0]


def test_a_torch_file_under_a_safetensors_name_and_back_loads(tmp_path, tiny_ft_sd):
    """The format is read from the file, not from its name."""
    as_st, as_pth = tmp_path / "torch.safetensors", tmp_path / "st.pth"
    torch.save({"model": tiny_ft_sd}, as_st)
    save_safetensors(tiny_ft_sd, as_pth)
    assert_same_tensors(load_state_dict(as_st), tiny_ft_sd)
    assert_same_tensors(load_state_dict(as_pth), tiny_ft_sd)


# -- weights load fully or not at all ------------------------------------------------------------------------

def test_a_checkpoint_matching_no_key_is_refused_unless_partial(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"backbone.stem.weight": torch.zeros(3)}}, path)
    model = tiny_pretrain(0)
    before = clone_sd(model)
    with pytest.raises(ValueError) as info:
        load_weights(model, path, strict=False)
    msg = str(info.value)
    n = len(before)
    assert msg.startswith(f"{path} would leave {n} of the {n} tensors of PretrainVisionTransformer at their "
                          f"initialisation (missing {n}: ")
    assert "encoder.blocks.0-1.* (26)" in msg and "unexpected 1: backbone.stem.weight" in msg
    assert "--init_partial" in msg and "\n" not in msg and len(msg) < 600
    assert_same_tensors(model.state_dict(), before)

    report = load_weights(model, path, strict=False, partial=True)
    assert report.missing == sorted(before) and report.unexpected == ["backbone.stem.weight"]
    assert f"missing {n}: " in str(report) and "(left at their initialisation)" in str(report)
    assert_same_tensors(model.state_dict(), before)


def test_classifier_rules_keep_a_fresh_head_and_fc_norm_but_nothing_else(tmp_path, tiny_ft_sd):
    from vmae2.weights import load_classifier_weights

    # classes changing: the head of another class count starts fresh, every other tensor is loaded
    other = clone_sd(tiny_finetune(1, num_classes=400))
    torch.save({"model": other}, tmp_path / "k400.pth")
    model = tiny_finetune(2)
    head = model.head.weight.detach().clone()
    report = load_classifier_weights(model, tmp_path / "k400.pth")
    assert report.missing == ["head.bias", "head.weight"] and report.dropped == ["head.weight", "head.bias"]
    assert torch.equal(model.head.weight, head)
    assert_model_holds(model, {k: v for k, v in other.items() if not k.startswith("head.")})

    # from a pretraining checkpoint: fc_norm and head fresh, the encoder loaded
    torch.save({"model": clone_sd(tiny_pretrain(3))}, tmp_path / "pre.pth")
    report = load_classifier_weights(tiny_finetune(2), tmp_path / "pre.pth")
    assert report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]

    # anything else missing is refused, in both layouts, unless partial
    for name, state in (("ft_gap.pth", other), ("pre_gap.pth", clone_sd(tiny_pretrain(3)))):
        gap = {k: v for k, v in state.items() if ".blocks.1." not in f".{k}"}
        torch.save({"model": gap}, tmp_path / name)
        model = tiny_finetune(4)
        before = clone_sd(model)
        with pytest.raises(ValueError, match=r"would leave 13 of the .* \(missing 13: blocks\.1\.\* \(13\); "):
            load_classifier_weights(model, tmp_path / name)
        assert_same_tensors(model.state_dict(), before)
        report = load_classifier_weights(model, tmp_path / name, partial=True)
        assert [k for k in report.missing if k.startswith("blocks.")] == sorted(k for k in before
                                                                                if k.startswith("blocks.1."))


def test_summarize_keys_merges_whole_blocks_and_caps_the_list():
    from vmae2.weights import summarize_keys

    keys = [f"blocks.{i}.{p}" for i in (0, 1, 2, 5, 10) for p in ("a", "b")] + ["norm.weight", "blocks.7.x"]
    assert summarize_keys(keys) == "blocks.0-2.* (6), blocks.5.* (2), blocks.7.x, blocks.10.* (2), norm.weight"
    assert summarize_keys([f"k{i}" for i in range(12)], limit=3) == "k0, k1, k10, ... and 9 more"


# -- the command lines: train --init and finetune --init ---------------------------------------------------------

TRAIN_ARGS = ["--preset", "demo", "--num_frames", "4", "--input_size", "64", "--batch_size", "2", "--num_sample", "1",
              "--num_workers", "0", "--max_steps", "1", "--log_every", "1"]
FINETUNE_ARGS = ["--preset", "demo", "--model", "vit_tiny_patch16_224", "--nb_classes", "2", "--num_frames", "4",
                 "--sampling_rate", "2", "--input_size", "32", "--short_side_size", "32", "--batch_size", "2",
                 "--num_sample", "1", "--num_workers", "0", "--max_steps", "1", "--log_every", "1"]


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    """The training lists of ``vmae2.train`` and ``vmae2.finetune``, and a checkpoint none of whose keys fit."""
    pytest.importorskip("av", reason="PyAV makes the training videos")
    from vmae2.data.synthetic import make_labeled_videos, make_videos

    root = tmp_path_factory.mktemp("cli")
    make_videos(root / "pre", 2, seed=0, sizes=((80, 64),), num_frames=(16,))
    labeled = make_labeled_videos(root / "ft", {"train": 1}, size=(48, 40), num_frames=16, motions=("still", "right"))
    foreign = root / "foreign.pth"
    torch.save({"model": {"backbone.stem.weight": torch.zeros(3)}}, foreign)
    return {"train": (["--data_path", str(root / "pre" / "train.csv")], "vmae2.train"),
            "finetune": (["--data_path", str(labeled["train"])], "vmae2.finetune"), "foreign": foreign}


def _main(command: str, args: list[str], cli_data) -> int:
    import importlib

    data, module = cli_data[command]
    base = TRAIN_ARGS if command == "train" else FINETUNE_ARGS
    return importlib.import_module(module).main(base + data + args)


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_cli_init_refuses_a_checkpoint_matching_no_key(cli_data, command, tmp_path, capsys):
    out = tmp_path / "out"
    assert _main(command, ["--init", str(cli_data["foreign"]), "--output_dir", str(out)], cli_data) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {cli_data['foreign']} would leave ")
    assert "unexpected 1: backbone.stem.weight" in err[0] and "--init_partial" in err[0]
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_cli_init_partial_accepts_it_and_lists_what_stayed_initialised(cli_data, command, tmp_path, capsys):
    assert _main(command, ["--init", str(cli_data["foreign"]), "--init_partial", "true", "--output_dir",
                           str(tmp_path / "out")], cli_data) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("initialised from"))
    assert "(left at their initialisation); unexpected 1: backbone.stem.weight (ignored)" in line


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_cli_init_with_a_text_file_is_one_line(cli_data, command, tmp_path, capsys):
    text = tmp_path / "weights.safetensors"
    text.write_text("not weights\n")
    assert _main(command, ["--init", str(text), "--output_dir", str(tmp_path / "out")], cli_data) == 2
    assert capsys.readouterr().err.strip() == f"error: {text} {NOT_A_CHECKPOINT}"


def test_init_partial_needs_init():
    from vmae2.cli import parse_config
    from vmae2.train import PRETRAIN

    with pytest.raises(ValueError, match="--init_partial True is invalid: accepts a partial load of --init; give "
                                         "--init too"):
        parse_config(["--init_partial", "true"], PRETRAIN)
