"""Fine-tuning augmentations for video classification, following the official VideoMAE V2 training view.

Official per-view order (``dataset/datasets.py::_aug_frame``, reference §6.5), composed by
:class:`FinetuneAugment`::

    uint8 frames [T, H, W, C] -> RandAugment ``rand-m7-n4-mstd0.5-inc1`` (one draw per clip, bicubic, fill 128)
    -> float / 255 -> ImageNet normalise -> random resized crop (scale [0.08, 1], ratio [0.75, 1.3333],
    bilinear ``F.interpolate``) -> horizontal flip p=0.5 (not for SSv2) -> random erasing (p 0.25, pixel mode,
    one box shared by all frames)

and per batch :class:`Mixup` (mixup α 0.8 / cutmix α 1.0, switch 0.5, batch mode, label smoothing 0.1 folded into
soft targets) with :func:`soft_target_cross_entropy`.

Conventions
-----------
* A decoded clip is a uint8 tensor ``[T, H, W, C]`` (RGB); :class:`RandAugment` works on that layout.
* A normalised clip is float ``[C, T, H, W]``; :func:`random_resized_crop`, :func:`horizontal_flip` and
  :func:`random_erasing` work on that layout.
* A batch is ``[B, C, T, H, W]`` (any ``[B, ..., H, W]`` works for :class:`Mixup`).
* Every random choice comes from an explicit :class:`numpy.random.Generator` passed by the caller; nothing reads the
  global ``random`` / ``numpy.random`` / torch RNG, so a seed fixes the output. Per-sample draws happen on the host;
  the batch op (:class:`Mixup`) draws λ and the box on the host and applies them with slicing and arithmetic, so it
  never synchronises a device.

RandAugment runs Pillow frame by frame with the same arguments for every frame, as the official code does
(``ImageOps`` / ``ImageEnhance`` / ``Image.transform``); clips are decoded on CPU workers, where Pillow is the fast
path. The ops and their level-to-argument maps are tested against timm's ``auto_augment`` (the official copy's
origin) when timm is installed.

Why these are not timm's objects (the official code imports timm's ``Mixup`` and ``SoftTargetCrossEntropy``):

* ``import timm`` imports torchvision, which must match the installed torch build exactly (on a CPU-only machine
  PyPI offers only CUDA builds, which fail to import against CPU torch); vmae2 keeps its one torch requirement.
* timm's ``Mixup`` and ``RandAugment`` draw from the global ``numpy.random`` / ``random`` state; ours take an
  explicit Generator, so a resumed run and every worker draw the same values. The semantics are tested equal to
  timm's ``Mixup`` / ``SoftTargetCrossEntropy`` given the same draws (``tests/test_augment.py``).
* timm's ``RandomErasing`` erases one box per frame of a ``[T, C, H, W]`` clip; the official video code erases one
  box through all frames (its ``cube`` variant), which timm does not have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from vmae2_kernels import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN  # one definition (re-exported: __all__)
from vmae2_kernels import IMAGENET_DEFAULT_STD as IMAGENET_STD

OFFICIAL_RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"
MAX_LEVEL = 10.0
FILL = 128

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "OFFICIAL_RAND_AUGMENT", "RAND_OPS", "RAND_INCREASING_OPS",
    "RandAugmentConfig", "parse_rand_augment", "RandAugment", "AugOp",
    "sample_resized_crop_box", "random_resized_crop", "horizontal_flip", "sample_erase_boxes", "random_erasing",
    "MixParams", "Mixup", "rand_bbox", "smooth_one_hot", "mix_targets", "soft_target_cross_entropy",
    "FinetuneAugment",
]


# ------------------------------------------------------------------------------------------------------------------
# RandAugment
# ------------------------------------------------------------------------------------------------------------------

RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _negate(v: float, rng: np.random.Generator) -> float:
    return -v if rng.random() > 0.5 else v


# level -> op arguments (timm's ``LEVEL_TO_ARG``); ``m`` is the clipped magnitude in [0, 10]
_LEVELS: dict[str, Callable[[float, np.random.Generator, float], tuple]] = {
    "AutoContrast": lambda m, rng, tp: (),
    "Equalize": lambda m, rng, tp: (),
    "Invert": lambda m, rng, tp: (),
    "Rotate": lambda m, rng, tp: (_negate(m / MAX_LEVEL * 30.0, rng),),
    "Posterize": lambda m, rng, tp: (int(m / MAX_LEVEL * 4),),
    "PosterizeIncreasing": lambda m, rng, tp: (4 - int(m / MAX_LEVEL * 4),),
    "Solarize": lambda m, rng, tp: (int(m / MAX_LEVEL * 256),),
    "SolarizeIncreasing": lambda m, rng, tp: (256 - int(m / MAX_LEVEL * 256),),
    "SolarizeAdd": lambda m, rng, tp: (int(m / MAX_LEVEL * 110),),
    "ShearX": lambda m, rng, tp: (_negate(m / MAX_LEVEL * 0.3, rng),),
    "ShearY": lambda m, rng, tp: (_negate(m / MAX_LEVEL * 0.3, rng),),
    "TranslateXRel": lambda m, rng, tp: (_negate(m / MAX_LEVEL * tp, rng),),
    "TranslateYRel": lambda m, rng, tp: (_negate(m / MAX_LEVEL * tp, rng),),
}
for _name in ("Color", "Contrast", "Brightness", "Sharpness"):
    _LEVELS[_name] = lambda m, rng, tp: (m / MAX_LEVEL * 1.8 + 0.1,)
    _LEVELS[_name + "Increasing"] = lambda m, rng, tp: (1.0 + _negate(m / MAX_LEVEL * 0.9, rng),)

@dataclass(frozen=True)
class RandAugmentConfig:
    """Parsed ``rand-m{M}-n{N}-mstd{S}-inc{0|1}`` string (timm syntax; defaults M=10, N=2, S=0, inc0)."""

    magnitude: float = 10.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    increasing: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_INCREASING_OPS if self.increasing else RAND_OPS


def parse_rand_augment(config: str) -> RandAugmentConfig:
    """Parse a timm RandAugment string, e.g. the official ``rand-m7-n4-mstd0.5-inc1``.

    Keys: ``m`` magnitude (0..10), ``n`` ops per clip, ``mstd`` gaussian std on the magnitude, ``inc`` the
    "increasing" op set. Unknown keys (timm's ``w`` choice weights, ``mmax``, ``p``) raise ``ValueError``."""
    parts = config.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment config must start with 'rand', got {config!r}")
    kw: dict = {}
    for part in parts[1:]:
        if part.startswith("mstd"):
            kw["magnitude_std"] = float(part[4:])
        elif part.startswith("inc"):
            kw["increasing"] = bool(int(part[3:]))
        elif part.startswith("m") and part[1:2].isdigit():
            kw["magnitude"] = float(int(part[1:]))
        elif part.startswith("n") and part[1:].isdigit():
            kw["num_ops"] = int(part[1:])
        else:
            raise ValueError(f"unsupported RandAugment key {part!r} in {config!r}")
    return RandAugmentConfig(**kw)


@dataclass(frozen=True)
class AugOp:
    """One sampled op of a clip's plan: its name and the arguments every frame gets."""

    name: str
    args: tuple


def _check_clip(clip: torch.Tensor) -> None:
    if clip.dtype != torch.uint8 or clip.dim() != 4 or clip.shape[-1] not in (1, 3):
        raise ValueError(f"expected a uint8 clip [T, H, W, C] with C 1 or 3, got {tuple(clip.shape)} {clip.dtype}")


def _pil_op(img: Image.Image, op: AugOp, interpolation: str, fill) -> Image.Image:
    """One op on one frame, as the official ``rand_augment.py`` calls Pillow."""
    base = op.name[: -len("Increasing")] if op.name.endswith("Increasing") else op.name
    (arg,) = op.args or (None,)
    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    bands = len(img.getbands())
    fillcolor = (fill,) * bands if isinstance(fill, int) else tuple(fill)  # an int means only the first band
    if base == "AutoContrast":
        return ImageOps.autocontrast(img)
    if base == "Equalize":
        return ImageOps.equalize(img)
    if base == "Invert":
        return ImageOps.invert(img)
    if base == "Posterize":
        if arg >= 8:
            return img
        return ImageOps.posterize(img, arg) if arg > 0 else Image.new(img.mode, img.size, 0)
    if base == "Solarize":
        return ImageOps.solarize(img, arg)
    if base == "SolarizeAdd":
        lut = [min(255, i + arg) if i < 128 else i for i in range(256)]
        return img.point(lut * bands)
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, base)(img).enhance(arg)
    if base == "Rotate":
        return img.rotate(arg, resample=resample, fillcolor=fillcolor)
    w, h = img.size
    matrix = {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
              "TranslateXRel": (1, 0, arg * w, 0, 1, 0), "TranslateYRel": (1, 0, 0, 0, 1, arg * h)}[base]
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fillcolor)


class RandAugment:
    """timm/official RandAugment for a clip: uint8 ``[T, H, W, C]`` (C 3 or 1, CPU) in, the same layout out.

    Per clip, :meth:`sample` draws ``n`` ops uniformly with replacement; each is kept with probability ``prob``
    (0.5), gets a magnitude ``clip(N(m, mstd), 0, 10)`` and, for signed ops, a random sign; :meth:`apply` then
    runs the plan on every frame with the same arguments through Pillow (one draw per clip, as the official
    ``AugmentOp`` applied to the frame list). Draw order follows the official code: op indices, then per op keep /
    magnitude / sign.

    Geometric ops use ``interpolation`` (official fine-tuning: ``bicubic``) and ``fill`` 128.
    ``TranslateXRel``/``YRel`` shift by ``translate_pct·magnitude/10`` of the frame width/height (timm default
    ``translate_pct`` 0.45): the official code passes ``translate_const = int(224·0.45)`` but only the absolute
    ``TranslateX``/``Y`` ops read it and they are not in the RandAugment op sets, so it has no effect there.
    """

    def __init__(self, config: str | RandAugmentConfig = OFFICIAL_RAND_AUGMENT, *, prob: float = 0.5,
                 interpolation: str = "bicubic", fill: int | Sequence[int] = FILL, translate_pct: float = 0.45):
        self.config = parse_rand_augment(config) if isinstance(config, str) else config
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be bicubic or bilinear, got {interpolation!r}")
        self.prob = prob
        self.interpolation = interpolation
        self.fill = fill
        self.translate_pct = translate_pct

    def __repr__(self) -> str:
        return (f"RandAugment({self.config}, prob={self.prob}, interpolation={self.interpolation!r}, "
                f"fill={self.fill}, translate_pct={self.translate_pct})")

    def sample(self, rng: np.random.Generator) -> list[AugOp]:
        """The ops one clip gets (skipped ops left out)."""
        ops = self.config.ops
        cfg = self.config
        plan = []
        for i in rng.integers(0, len(ops), size=cfg.num_ops):
            name = ops[int(i)]
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            m = cfg.magnitude
            if cfg.magnitude_std > 0:
                m = rng.normal(m, cfg.magnitude_std)
            m = min(MAX_LEVEL, max(0.0, float(m)))
            plan.append(AugOp(name, _LEVELS[name](m, rng, self.translate_pct)))
        return plan

    def apply(self, clip: torch.Tensor, plan: Sequence[AugOp]) -> torch.Tensor:
        """Run ``plan`` on every frame of a uint8 ``[T, H, W, C]`` clip."""
        _check_clip(clip)
        if not plan:
            return clip
        out = []
        for frame in clip.cpu().numpy():
            img = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
            for op in plan:
                img = _pil_op(img, op, self.interpolation, self.fill)
            out.append(np.asarray(img).reshape(frame.shape))
        return torch.from_numpy(np.stack(out)).to(clip.device)

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return self.apply(clip, self.sample(rng))


# ------------------------------------------------------------------------------------------------------------------
# Random resized crop and flip (float [C, T, H, W])
# ------------------------------------------------------------------------------------------------------------------

def sample_resized_crop_box(height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (0.75, 4 / 3), *, rng: np.random.Generator,
                            attempts: int = 10) -> tuple[int, int, int, int]:
    """The official ``_get_param_spatial_crop`` (torchvision ``RandomResizedCrop`` algorithm): ``(top, left, h, w)``.

    Up to ``attempts`` tries of area ``U(scale)·H·W`` and log-uniform aspect ``w/h`` in ``ratio``, with
    ``w = round(√(area·r))``, ``h = round(√(area/r))``; accepted when it fits, then a uniform position. Otherwise the
    centre crop of the whole frame with its aspect clamped into ``ratio``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(clip: torch.Tensor, size: int | tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (0.75, 4 / 3), *, rng: np.random.Generator) -> torch.Tensor:
    """Crop one box (:func:`sample_resized_crop_box`) from every frame of a float ``[C, T, H, W]`` clip and resize
    it to ``size`` with ``F.interpolate(bilinear, align_corners=False)``, as the official code."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    top, left, h, w = sample_resized_crop_box(clip.shape[-2], clip.shape[-1], scale, ratio, rng=rng)
    crop = clip[..., top:top + h, left:left + w]
    return F.interpolate(crop, size=(out_h, out_w), mode="bilinear", align_corners=False)


def horizontal_flip(clip: torch.Tensor, *, rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip every frame of a ``[..., H, W]`` clip left-right with probability ``p`` (one draw per clip)."""
    return clip.flip(-1) if rng.random() < p else clip


# ------------------------------------------------------------------------------------------------------------------
# Random erasing (normalised float [C, T, H, W]; one box for all frames)
# ------------------------------------------------------------------------------------------------------------------

def sample_erase_boxes(height: int, width: int, *, rng: np.random.Generator, p: float = 0.25, count: int = 1,
                       area: tuple[float, float] = (0.02, 1 / 3), min_aspect: float = 0.3,
                       max_aspect: float | None = None, attempts: int = 100) -> list[tuple[int, int, int, int]]:
    """The boxes ``(top, left, h, w)`` the official cube ``RandomErasing._erase_cube`` picks for one clip.

    With probability ``1 − p`` none. Otherwise ``k`` boxes (``k = count`` if ``count == 1`` else uniform in
    ``1..count``); each takes up to ``attempts`` tries of area ``U(area)·H·W/k`` and log-uniform aspect ``h/w`` in
    ``[min_aspect, max_aspect or 1/min_aspect]`` with ``h = round(√(area·r))``, ``w = round(√(area/r))``, accepted
    when ``h < H`` and ``w < W``, then a uniform position; a box that finds no fit is dropped."""
    if rng.random() > p:
        return []
    max_aspect = max_aspect or 1 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    k = count if count == 1 else int(rng.integers(1, count + 1))
    total = height * width
    boxes = []
    for _ in range(k):
        for _ in range(attempts):
            target_area = rng.uniform(*area) * total / k
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                boxes.append((top, left, h, w))
                break
    return boxes


def random_erasing(clip: torch.Tensor, *, rng: np.random.Generator, p: float = 0.25, mode: str = "pixel",
                   count: int = 1, area: tuple[float, float] = (0.02, 1 / 3), min_aspect: float = 0.3,
                   max_aspect: float | None = None, attempts: int = 100) -> torch.Tensor:
    """Official video ``RandomErasing`` on a normalised float ``[C, T, H, W]`` clip (returns a new tensor).

    The box (:func:`sample_erase_boxes`) is shared by all frames; its content is replaced, per frame, by
    ``pixel``: i.i.d. N(0, 1) per element, ``rand``: one N(0, 1) per channel, ``const``: 0. Noise comes from
    ``rng`` (float32 standard normal)."""
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"mode must be pixel, rand or const, got {mode!r}")
    boxes = sample_erase_boxes(clip.shape[-2], clip.shape[-1], rng=rng, p=p, count=count, area=area,
                               min_aspect=min_aspect, max_aspect=max_aspect, attempts=attempts)
    if not boxes:
        return clip
    clip = clip.clone()
    c, t = clip.shape[:2]
    for top, left, h, w in boxes:
        if mode == "pixel":
            noise = rng.standard_normal((t, c, h, w), dtype=np.float32).transpose(1, 0, 2, 3)
        elif mode == "rand":
            noise = rng.standard_normal((t, c, 1, 1), dtype=np.float32).transpose(1, 0, 2, 3)
        else:
            noise = np.zeros((c, t, 1, 1), dtype=np.float32)
        clip[:, :, top:top + h, left:left + w] = torch.from_numpy(np.ascontiguousarray(noise)).to(clip)
    return clip


# ------------------------------------------------------------------------------------------------------------------
# Mixup / CutMix (batch mode) and the soft-target loss
# ------------------------------------------------------------------------------------------------------------------

def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``[B]`` int labels → ``[B, num_classes]`` float32 with ``off = s/K`` and ``on = 1 − s + off``."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.long().view(-1, 1), on)


def mix_targets(labels: torch.Tensor, num_classes: int, lam: float, smoothing: float = 0.0) -> torch.Tensor:
    """timm ``mixup_target``: ``λ·onehot_s(y) + (1 − λ)·onehot_s(y.flip(0))``, ``[B, num_classes]`` float32."""
    y1 = smooth_one_hot(labels, num_classes, smoothing)
    y2 = smooth_one_hot(labels.flip(0), num_classes, smoothing)
    return y1 * lam + y2 * (1.0 - lam)


def rand_bbox(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm ``rand_bbox``: a box with sides ``int(H·√(1−λ))``, ``int(W·√(1−λ))`` centred at a uniform pixel and
    clipped to the image; returns ``(y_lo, y_hi, x_lo, x_hi)`` (half-open)."""
    r = np.sqrt(1 - lam)
    cut_h, cut_w = int(height * r), int(width * r)
    cy = int(rng.integers(0, height))
    cx = int(rng.integers(0, width))
    yl, yh = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    xl, xh = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return yl, yh, xl, xh


@dataclass(frozen=True)
class MixParams:
    """One batch's draw: the label weight ``lam`` of the un-flipped sample and the cutmix box (None for mixup or no
    mixing). With a box, ``lam`` is already ``1 − box_area / (H·W)``."""

    lam: float
    box: tuple[int, int, int, int] | None = None


class Mixup:
    """timm ``Mixup`` in ``batch`` mode, as the official fine-tuning uses it.

    ``mix(video [B, ..., H, W], labels [B] int64) -> (video, soft_targets [B, num_classes] float32)``: one λ per
    batch; every sample is mixed with ``video.flip(0)``. With probability ``prob`` the batch is mixed: cutmix
    (probability ``switch_prob`` when both alphas are > 0) draws λ ~ Beta(cutmix_alpha), pastes the box of
    :func:`rand_bbox` from the flipped batch and corrects λ to the pasted area; otherwise mixup draws
    λ ~ Beta(mixup_alpha) and returns ``λ·x + (1 − λ)·x.flip(0)``. All dimensions between B and (H, W) share the
    box and λ (the official code views the video as ``[B, C·T, H, W]``). Label smoothing is folded into the
    targets (:func:`mix_targets`). Both alphas 0 (or ``prob`` 0) gives the unmixed video and smoothed one-hot.

    Randomness: a numpy Generator given as ``rng`` to the constructor (an int seeds one) or to each call; draws
    happen on the host, so a device batch is never synchronised. Draw order: mix?, cutmix?, λ, box centre (y, x).
    The input is not modified. Batch size must be even (the official assertion).
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, correct_lam: bool = True,
                 rng: np.random.Generator | int | None = None):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.correct_lam = correct_lam
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def sample(self, height: int, width: int, rng: np.random.Generator | None = None) -> MixParams:
        """Draw one batch's λ and box for frames of ``height × width``."""
        rng = self.rng if rng is None else rng
        if not self.enabled or not rng.random() < self.prob:
            return MixParams(1.0)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if lam == 1.0:
            return MixParams(1.0)
        if not use_cutmix:
            return MixParams(lam)
        box = rand_bbox(height, width, lam, rng)
        if self.correct_lam:
            yl, yh, xl, xh = box
            lam = 1.0 - (yh - yl) * (xh - xl) / float(height * width)
        return MixParams(lam, box)

    def apply(self, video: torch.Tensor, labels: torch.Tensor, params: MixParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``video`` with ``video.flip(0)`` according to ``params`` and build the soft targets."""
        if params.box is not None:
            yl, yh, xl, xh = params.box
            video = video.clone()
            video[..., yl:yh, xl:xh] = video.flip(0)[..., yl:yh, xl:xh]
        elif params.lam != 1.0:
            video = video * params.lam + video.flip(0) * (1.0 - params.lam)
        return video, mix_targets(labels, self.num_classes, params.lam, self.label_smoothing)

    def __call__(self, video: torch.Tensor, labels: torch.Tensor,
                 rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.enabled and video.shape[0] % 2 != 0:
            raise ValueError(f"Mixup batch mode needs an even batch size (it pairs x with x.flip(0)), "
                             f"got {video.shape[0]}")
        return self.apply(video, labels, self.sample(video.shape[-2], video.shape[-1], rng))

    mix = __call__


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm ``SoftTargetCrossEntropy``: ``mean_b Σ_k −t_bk · log_softmax(logits)_bk``."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


# ------------------------------------------------------------------------------------------------------------------
# The per-view training pipeline
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class FinetuneAugment:
    """The official fine-tuning training view: uint8 ``[T, H, W, C]`` (torch or numpy) → float32 ``[C, T, S, S]``.

    RandAugment (``auto_augment``, None to skip) → ``/255`` → ImageNet normalise → random resized crop to
    ``input_size`` → horizontal flip (``flip=False`` for SSv2) → random erasing (``reprob`` 0 to skip). All draws come
    from the ``rng`` passed per call, in that order. Defaults are the official ones (note ``ratio`` upper bound
    1.3333, as the official code writes it)."""

    input_size: int = 224
    auto_augment: str | None = OFFICIAL_RAND_AUGMENT
    interpolation: str = "bicubic"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333)
    flip: bool = True
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        self.rand_augment = RandAugment(self.auto_augment, interpolation=self.interpolation) \
            if self.auto_augment else None

    def __call__(self, frames: torch.Tensor | np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        clip = torch.as_tensor(frames)
        _check_clip(clip)
        if self.rand_augment is not None:
            clip = self.rand_augment(clip, rng)
        x = clip.to(torch.float32).div(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)
        x = ((x - mean) / std).permute(3, 0, 1, 2)
        x = random_resized_crop(x, self.input_size, self.scale, self.ratio, rng=rng)
        if self.flip:
            x = horizontal_flip(x, rng=rng)
        if self.reprob > 0:
            x = random_erasing(x, rng=rng, p=self.reprob, mode=self.remode, count=self.recount)
        return x.contiguous()
