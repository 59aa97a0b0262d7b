"""Fine-tuning augmentations (vmae2.data.classification.augment): RandAugment levels and ops, Mixup/CutMix and the
soft-target loss against timm 0.4.12 (the official pin); one draw per clip, crop / erase boxes, batch-mode mixing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from oracle.augmentations import timm_module
from oracle.tolerances import assert_close_fp

from vmae2.data.classification import augment as A

FILL_RGB = (128, 128, 128)


def _clip(t: int = 3, h: int = 37, w: int = 53, seed: int = 0) -> torch.Tensor:
    """Structured frames (gradients, stripes) plus noise, different per frame: uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for k in range(t):
        base = np.stack([(xx * 4 + yy * 2 + 17 * k) % 256, (yy * 7 + 5 * k) % 256, (xx * yy + k) % 256], -1)
        frames.append(np.clip(base + rng.integers(-30, 30, base.shape), 0, 255))
    return torch.from_numpy(np.stack(frames).astype(np.uint8))


class _FixedDraw:
    """Stands in for ``random`` (timm) and a numpy Generator (ours): every ``random()`` returns ``value``."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


# ---------------------------------------------------------------------------------------------------------------
# RandAugment
# ---------------------------------------------------------------------------------------------------------------

def test_parse_official_config():
    cfg = A.parse_rand_augment("rand-m7-n4-mstd0.5-inc1")
    assert (cfg.magnitude, cfg.num_ops, cfg.magnitude_std, cfg.increasing) == (7.0, 4, 0.5, True)
    assert cfg.ops == A.RAND_INCREASING_OPS and len(cfg.ops) == 15
    assert A.parse_rand_augment("rand-m9").ops == A.RAND_OPS and A.parse_rand_augment("rand-m9").num_ops == 2
    for bad in ("auto-m7", "rand-m7-w0", "rand-m7-x1"):
        with pytest.raises(ValueError):
            A.parse_rand_augment(bad)


def test_rand_augment_sampling_statistics():
    ra = A.RandAugment("rand-m7-n4-mstd0.5-inc1")
    rng = np.random.default_rng(0)
    plans = [ra.sample(rng) for _ in range(2000)]
    kept = np.array([len(p) for p in plans])
    assert abs(kept.mean() - 2.0) < 0.1  # 4 ops, each kept with p = 0.5
    names = [op.name for p in plans for op in p]
    counts = np.array([names.count(n) for n in A.RAND_INCREASING_OPS])
    assert counts.min() > 0.6 * counts.mean()  # uniform over the 15 ops
    rot = np.array([op.args[0] for p in plans for op in p if op.name == "Rotate"])
    assert np.all(np.abs(rot) <= 30) and (rot > 0).mean() == pytest.approx(0.5, abs=0.1)
    assert np.abs(np.abs(rot).mean() - 21.0) < 1.0  # magnitude 7 → 21 degrees, N(7, 0.5) noise averages out
    post = {op.args[0] for p in plans for op in p if op.name == "PosterizeIncreasing"}
    assert post <= {1, 2, 3}  # 4 − int(m·0.4) for m ≈ 7 ± 1.5


def test_rand_augment_same_params_for_every_frame():
    frame = _clip(1, seed=3)
    clip = frame.expand(5, -1, -1, -1).contiguous()
    ra = A.RandAugment()
    for seed in range(12):
        out = ra(clip, np.random.default_rng(seed))
        assert all(torch.equal(out[0], out[k]) for k in range(1, 5)), seed
        # and each frame gets what the same plan does to that frame alone
        assert torch.equal(out[:1], ra(frame, np.random.default_rng(seed)))


def test_rand_augment_is_deterministic_and_keeps_the_layout():
    clip = _clip(2, 29, 41, seed=1)
    ra = A.RandAugment()
    a = ra(clip, np.random.default_rng(7))
    assert a.shape == clip.shape and a.dtype == torch.uint8
    assert torch.equal(a, ra(clip, np.random.default_rng(7)))
    assert any(not torch.equal(a, ra(clip, np.random.default_rng(s))) for s in range(8, 12))
    grey = clip[..., :1].contiguous()  # single-channel clips keep their channel axis
    assert ra.apply(grey, [A.AugOp("Rotate", (13.0,))]).shape == grey.shape
    with pytest.raises(ValueError, match="uint8 clip"):
        ra(clip.float(), np.random.default_rng(0))


def test_rand_augment_op_sets_and_levels_match_official_timm(monkeypatch):
    aa = timm_module("data/auto_augment.py")
    assert list(A.RAND_OPS) == aa._RAND_TRANSFORMS and list(A.RAND_INCREASING_OPS) == aa._RAND_INCREASING_TRANSFORMS
    hparams = {"translate_pct": 0.45, "img_mean": A.FILL}
    for draw in (0.2, 0.8):  # both signs of the signed ops
        monkeypatch.setattr(aa, "random", _FixedDraw(draw))
        for name in set(A.RAND_OPS + A.RAND_INCREASING_OPS):
            level = aa.LEVEL_TO_ARG[name]
            for m in (0.0, 3.3, 7.0, 10.0):
                official = tuple(level(m, hparams)) if level else ()
                assert A._LEVELS[name](m, _FixedDraw(draw), 0.45) == official, (name, m, draw)


@pytest.mark.parametrize("interpolation,resample", [("bicubic", Image.Resampling.BICUBIC),
                                                    ("bilinear", Image.Resampling.BILINEAR)])
def test_rand_augment_ops_match_official_timm(interpolation, resample):
    """Each op at three magnitudes, both signs: our plan through Pillow against timm's op functions, frame by
    frame (the official ``AugmentOp`` with ``fillcolor`` 128 and the given resampling): the same pixels."""
    aa = timm_module("data/auto_augment.py")
    clip = _clip(2, 23, 31, seed=2)
    ra = A.RandAugment(interpolation=interpolation)
    for name in set(A.RAND_OPS + A.RAND_INCREASING_OPS):
        for m in (0.0, 7.0, 10.0):
            for draw in (0.2, 0.8):
                op = A.AugOp(name, A._LEVELS[name](m, _FixedDraw(draw), 0.45))
                if name.startswith("Posterize") and op.args == (0,):
                    # Pillow >= 10 refuses 0 bits; the official era's Pillow (< 10) gave black, as we do
                    assert torch.equal(ra.apply(clip, [op]), torch.zeros_like(clip))
                    continue
                official = torch.from_numpy(np.stack([
                    np.asarray(aa.NAME_TO_OP[name](Image.fromarray(f), *op.args, fillcolor=FILL_RGB,
                                                   resample=resample)) for f in clip.numpy()]))
                assert torch.equal(ra.apply(clip, [op]), official), op


# ---------------------------------------------------------------------------------------------------------------
# Random resized crop, flip
# ---------------------------------------------------------------------------------------------------------------

def test_resized_crop_box_bounds():
    rng = np.random.default_rng(0)
    scale, ratio = (0.08, 1.0), (0.75, 4 / 3)
    for _ in range(3000):
        height, width = int(rng.integers(20, 400)), int(rng.integers(20, 400))
        top, left, h, w = A.sample_resized_crop_box(height, width, scale, ratio, rng=rng)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
        if (h, w) != (height, width) and min(h, w) >= 20:  # not a fallback; rounding is ±0.5 px per side
            assert ratio[0] * (h - 0.5) / (h + 0.5) <= w / h <= ratio[1] * (h + 0.5) / (h - 0.5)
            area = h * w / (height * width)
            assert scale[0] * 0.85 <= area <= scale[1]


def test_resized_crop_box_fallback_is_clamped_centre_crop():
    rng = np.random.default_rng(0)
    # scale > 1 never fits → centre crop with the aspect clamped into ratio
    assert A.sample_resized_crop_box(100, 300, (2.0, 3.0), (0.75, 4 / 3), rng=rng) == (0, 83, 100, 133)
    assert A.sample_resized_crop_box(300, 100, (2.0, 3.0), (0.75, 4 / 3), rng=rng) == (83, 0, 133, 100)
    assert A.sample_resized_crop_box(100, 110, (2.0, 3.0), (0.75, 4 / 3), rng=rng) == (0, 0, 100, 110)


def test_random_resized_crop_same_box_all_frames():
    clip = torch.randn(3, 4, 40, 60, generator=torch.Generator().manual_seed(0))
    out = A.random_resized_crop(clip, 16, rng=np.random.default_rng(5))
    top, left, h, w = A.sample_resized_crop_box(40, 60, rng=np.random.default_rng(5))
    ref = F.interpolate(clip[:, :, top:top + h, left:left + w], size=(16, 16), mode="bilinear", align_corners=False)
    assert out.shape == (3, 4, 16, 16) and torch.equal(out, ref)  # the same interpolate call: bit-exact
    same = clip[:, :1].expand(-1, 4, -1, -1).contiguous()
    out = A.random_resized_crop(same, (16, 24), rng=np.random.default_rng(9))
    assert out.shape == (3, 4, 16, 24) and all(torch.equal(out[:, 0], out[:, k]) for k in range(4))


def test_horizontal_flip():
    clip = torch.randn(3, 2, 5, 7)
    assert torch.equal(A.horizontal_flip(clip, rng=np.random.default_rng(0), p=1.0), clip.flip(-1))
    assert torch.equal(A.horizontal_flip(clip, rng=np.random.default_rng(0), p=0.0), clip)
    flips = [not torch.equal(A.horizontal_flip(clip, rng=np.random.default_rng(s)), clip) for s in range(400)]
    assert abs(np.mean(flips) - 0.5) < 0.1


# ---------------------------------------------------------------------------------------------------------------
# Random erasing
# ---------------------------------------------------------------------------------------------------------------

def test_random_erasing_box_shared_by_frames():
    clip = torch.full((3, 4, 32, 48), 7.0)  # 7 is never drawn from N(0, 1) to float32 precision in practice
    for seed in range(50):
        out = A.random_erasing(clip, rng=np.random.default_rng(seed), p=1.0)
        changed = out != 7.0
        mask = changed[0, 0]
        assert torch.equal(changed, mask.expand_as(changed))  # same box for every frame and channel
        ys, xs = mask.nonzero(as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert mask.sum() == h * w  # a rectangle
        frac = h * w / (32 * 48)
        assert 0.02 * 0.7 <= frac <= 1 / 3 * 1.3  # area in [0.02, 1/3] up to rounding of h and w
        assert not torch.equal(out[:, 0][:, mask], out[:, 1][:, mask])  # pixel noise drawn per frame
        vals = out[changed]
        assert abs(float(vals.mean())) < 0.5 and 0.6 < float(vals.std()) < 1.5
    assert torch.equal(A.random_erasing(clip, rng=np.random.default_rng(0), p=0.0), clip)
    const = A.random_erasing(clip, rng=np.random.default_rng(0), p=1.0, mode="const")
    assert set(const.unique().tolist()) == {0.0, 7.0}


def test_random_erasing_probability_and_determinism():
    clip = torch.zeros(3, 2, 16, 16)
    hits = [bool(A.sample_erase_boxes(16, 16, rng=np.random.default_rng(s))) for s in range(800)]
    assert abs(np.mean(hits) - 0.25) < 0.05
    a = A.random_erasing(clip, rng=np.random.default_rng(3), p=1.0)
    assert torch.equal(a, A.random_erasing(clip, rng=np.random.default_rng(3), p=1.0))


# ---------------------------------------------------------------------------------------------------------------
# Mixup / CutMix and the loss
# ---------------------------------------------------------------------------------------------------------------

def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 4, 16, 20, generator=g), torch.randint(0, 10, (b,), generator=g)


def _recover_lam(targets, labels, smoothing=0.1, k=10):
    off = smoothing / k
    t = targets[torch.arange(len(labels)), labels]  # λ·on + (1−λ)·(on or off)
    same = labels == labels.flip(0)
    lam = (t[~same] - off) / (1 - smoothing)
    return float(lam[0]) if len(lam) else None


def test_mixup_only_is_exact_blend_with_flipped_batch():
    x, y = _batch()
    y = torch.tensor([0, 1, 2, 3])
    mix = A.Mixup(10, mixup_alpha=0.8, cutmix_alpha=0.0, rng=0)
    for seed in range(20):
        params = mix.sample(16, 20, np.random.default_rng(seed))
        out, t = mix(x, y, rng=np.random.default_rng(seed))
        lam = params.lam
        assert params.box is None and 0.0 <= lam <= 1.0
        assert torch.equal(out, x * lam + x.flip(0) * (1.0 - lam))  # the same elementwise ops: bit-exact
        assert_close_fp(t.sum(1), torch.ones(4))
        assert _recover_lam(t, y) == pytest.approx(lam, abs=1e-6)
    assert torch.equal(x, _batch()[0])  # input untouched


def test_cutmix_box_shared_by_all_frames_and_lam_is_true_area():
    x, _ = _batch(6)
    y = torch.arange(6)
    mix = A.Mixup(10, mixup_alpha=0.0, cutmix_alpha=1.0)
    seen_box = 0
    for seed in range(30):
        out, t = mix(x, y, rng=np.random.default_rng(seed))
        params = mix.sample(16, 20, np.random.default_rng(seed))
        pasted = (out != x).any(0).any(0)  # [T, H, W] over batch and channels
        box = pasted[0]
        assert torch.equal(pasted, box.expand_as(pasted))  # identical box on every frame
        assert torch.equal(out[..., ~box], x[..., ~box]) and torch.equal(out[..., box], x.flip(0)[..., box])
        if params.box is not None:
            yl, yh, xl, xh = params.box
            assert int(box.sum()) == (yh - yl) * (xh - xl)
            assert params.lam == pytest.approx(1 - int(box.sum()) / (16 * 20), abs=1e-12)
            seen_box += int(box.sum()) > 0
        assert _recover_lam(t, y) == pytest.approx(params.lam, abs=1e-6)
        assert_close_fp(t.sum(1), torch.ones(6))
    assert seen_box > 20


def test_mixup_switch_lambda_range_and_determinism():
    x, y = _batch()
    mix = A.Mixup(10, rng=np.random.default_rng(1))
    kinds = []
    for _ in range(300):
        p = mix.sample(16, 20)
        assert 0.0 <= p.lam <= 1.0
        kinds.append(p.box is not None)
    assert 0.4 < np.mean(kinds) < 0.6  # switch_prob 0.5
    a = A.Mixup(10, rng=5)(x, y)
    b = A.Mixup(10, rng=5)(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="even"):
        mix(x[:3], y[:3])


def test_mixup_disabled_gives_smoothed_one_hot():
    x, y = _batch()
    out, t = A.Mixup(10, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)(x, y)
    assert torch.equal(out, x)
    ref = torch.full((4, 10), 0.01).scatter_(1, y.view(-1, 1), 0.91)
    assert torch.equal(t, ref)  # λ = 1: the smoothing constants scattered by label, nothing summed


def test_soft_target_ce_equals_label_smoothing_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    _, t = A.Mixup(10, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)(torch.zeros(8, 1, 1, 1), y)
    ours = A.soft_target_cross_entropy(logits, t.double())
    assert_close_fp(ours, F.cross_entropy(logits, y, label_smoothing=0.1), torch.float32)  # t holds fp32 values
    hard = A.soft_target_cross_entropy(logits, F.one_hot(y, 10).double())
    assert_close_fp(hard, F.cross_entropy(logits, y))


class _LegacyStream:
    """Our Generator calls answered from numpy's global legacy stream, the one timm's Mixup draws from."""

    random = staticmethod(lambda: np.random.rand())
    beta = staticmethod(lambda a, b: np.random.beta(a, b))
    integers = staticmethod(lambda lo, hi: np.random.randint(lo, hi))


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mixup_matches_official_timm_given_the_same_stream(mixup_alpha, cutmix_alpha):
    """timm 0.4.12 ``Mixup`` (batch mode) on the official ``[B, C·T, H, W]`` view: same draws in the same order,
    the same video bits and soft targets (its ``mixup_target`` is called with ``device="cpu"``: 0.4.12 defaults to
    CUDA)."""
    official = timm_module("data/mixup.py")
    mix = official.Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=0.9, switch_prob=0.5,
                         mode="batch", label_smoothing=0.1, num_classes=10)
    ours = A.Mixup(10, mixup_alpha, cutmix_alpha, prob=0.9, switch_prob=0.5, label_smoothing=0.1)
    kinds = set()
    for seed in range(40):
        video, labels = _batch(4, seed)
        np.random.seed(seed)
        got_video, got_targets = ours(video, labels, rng=_LegacyStream())
        np.random.seed(seed)
        x = video.flatten(1, 2).clone()
        lam = mix._mix_batch(x)
        kinds.add("unmixed" if lam == 1.0 else "mixed")
        assert torch.equal(got_video, x.view_as(video)), seed
        assert torch.equal(got_targets, official.mixup_target(labels, 10, lam, 0.1, device="cpu")), seed
    assert kinds == {"unmixed", "mixed"}  # prob 0.9: both kinds of batch were compared


def test_soft_target_ce_matches_official_timm():
    official = timm_module("loss/cross_entropy.py")
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(6, 10, generator=g), torch.rand(6, 10, generator=g).softmax(-1)
    assert torch.equal(A.soft_target_cross_entropy(logits, targets),
                       official.SoftTargetCrossEntropy()(logits, targets))


# ---------------------------------------------------------------------------------------------------------------
# The composed training view
# ---------------------------------------------------------------------------------------------------------------

def test_finetune_augment_pipeline():
    frames = _clip(4, 40, 56, seed=4)
    aug = A.FinetuneAugment(input_size=24)
    out = aug(frames, np.random.default_rng(0))
    assert out.shape == (3, 4, 24, 24) and out.dtype == torch.float32
    assert torch.equal(out, aug(frames.numpy(), np.random.default_rng(0)))  # numpy input, deterministic
    assert not torch.equal(out, aug(frames, np.random.default_rng(1)))
    # the official order, re-composed by hand from the same generator state
    rng = np.random.default_rng(11)
    ref = A.RandAugment()(frames, rng).float() / 255
    ref = ((ref - torch.tensor(A.IMAGENET_MEAN)) / torch.tensor(A.IMAGENET_STD)).permute(3, 0, 1, 2)
    ref = A.random_resized_crop(ref, 24, (0.08, 1.0), (0.75, 1.3333), rng=rng)
    ref = A.horizontal_flip(ref, rng=rng)
    ref = A.random_erasing(ref, rng=rng, p=0.25)
    assert torch.equal(aug(frames, np.random.default_rng(11)), ref)
    # no RandAugment, no erasing, SSv2 (no flip): a plain normalised crop; identical frames stay identical
    same = frames[:1].expand(4, -1, -1, -1).contiguous()
    plain = A.FinetuneAugment(input_size=24, flip=False, reprob=0.0)(same, np.random.default_rng(2))
    assert all(torch.equal(plain[:, 0], plain[:, k]) for k in range(4))
