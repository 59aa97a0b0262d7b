"""``python -m vmae2.finetune``: supervised post-pre-training and fine-tuning of VideoMAE V2 classifiers.

Progressive training: pretrain (``python -m vmae2.train``), then post-pre-train on a mixed labeled set (K710:
``--data_path k400.csv,k600.csv,k700.csv --label_maps k400.txt,k600.txt,k700.txt``), then fine-tune on the
target set (``--init`` the K710 checkpoint, ``--init_head_index label_710to400.json``). Official recipe:
layer-wise lr decay, AdamW, warm-up + cosine, RandAugment, random erasing, mixup/cutmix with label smoothing,
repeated sampling, gradient accumulation; per-epoch validation (best weights kept) and multi-view testing.

With no arguments (``demo`` preset) it runs progressive training in miniature on generated still/moving videos:
MAE pretraining of the tiny model on the training clips, then fine-tuning and multi-view testing (a few minutes
on a CPU). Checkpoints are atomic and step-exact (``--resume auto``), like pretraining. The run itself is
:func:`vmae2.runs.finetune.run`.

The options: the classification fields on top of :mod:`vmae2.cli`'s shared ones, the released fine-tune scripts
as presets. Same precedence and validation as pretraining: defaults < ``--preset`` < ``--config`` < flags. Defaults
are the official ``run_class_finetuning.py`` ones; flag names follow it where sensible (``--nb_classes``,
``--layer_decay``, ``--smoothing``, ``--reprob``, ``--test_num_segment`` ...).
"""
from __future__ import annotations

from dataclasses import dataclass

from vmae2.cli import Command, CommonConfig, TrainingConfig, count, entry, like, opt, refuse
from vmae2.models.configs import POOLS
from vmae2.training import rundir

DATASET_CLASSES = {"k400": 400, "k600": 600, "k700": 700, "k710": 710, "ssv2": 174, "ucf101": 101, "hmdb51": 51}


@dataclass
class ClassifierConfig(CommonConfig):
    """The fields of the two classification entry points (fine-tuning, evaluation)."""

    KIND = "vit_"
    model: str | None = like("vit_base_patch16_224", "classification model (vit_*_patch*_224)")
    nb_classes: int = count(400, "number of classes of the head")
    class_names: str | None = opt(None, "class-name file for reports", path=True)
    sparse_sample: bool = opt(False, "TSN sampling, one frame per segment (SSv2)")
    short_side_size: int = count(224, "evaluation: short side resized to this before cropping")
    init_num_frames: int | None = count(None, "frames the encoder was pretrained on (default: --num_frames); the "
                                              "position table is resampled from that grid")
    init_input_size: int | None = count(None, "input size the encoder was pretrained on (default: --input_size)")
    test_num_segment: int = count(10, "test views: temporal windows per video (released scripts: 5, SSv2 2)")
    test_num_crop: int = count(3, "test views: spatial crops per window")
    pool: str = opt("mean", "how the classifier pools the last block's tokens: " + "; ".join(
        f"{k}: {v}" for k, v in POOLS.items()), choices=tuple(POOLS))

    def validate(self):
        super().validate()
        if self.pool == "mean_motion" and self.num_frames // self.tubelet_size < 2:
            refuse("pool", self.pool, f"needs at least 2 time slots: --num_frames {self.num_frames} / --tubelet_size "
                                      f"{self.tubelet_size} gives 1; use more frames or --pool mean")
        if self.init_num_frames is not None and self.init_num_frames % self.tubelet_size:
            refuse("init_num_frames", self.init_num_frames, "must be a positive multiple of --tubelet_size")
        if self.init_input_size is not None and self.init_input_size % self.patch_size:
            refuse("init_input_size", self.init_input_size, f"must be a positive multiple of the patch {self.patch_size}")
        if self.short_side_size < self.input_size:
            refuse("short_side_size", self.short_side_size, f"must be >= --input_size {self.input_size}")
        return self

    def pretrain_grid(self) -> tuple[int, int, int] | None:
        """The token grid the encoder was pretrained on, when ``--init_num_frames/--init_input_size`` name it (its
        position table is then resampled onto this model's grid); else ``None``."""
        if self.init_num_frames is None and self.init_input_size is None:
            return None
        frames = self.init_num_frames or self.num_frames
        size = self.init_input_size or self.input_size
        return frames // self.tubelet_size, size // self.patch_size, size // self.patch_size


@dataclass
class FinetuneConfig(ClassifierConfig, TrainingConfig):
    """Fine-tuning / post-pre-training (``python -m vmae2.finetune``)."""

    # model
    init: str | None = like(None, "initial weights: a pretraining checkpoint (encoder kept, decoder dropped, fc_norm "
                                  "and head new) or a fine-tuned one (.pth or .safetensors; a head of another class "
                                  "count is new); every other tensor must come from it (see --init_partial); the "
                                  "model and clip geometry of the run that wrote it (its config.json) are the "
                                  "defaults")
    init_head_index: str | None = opt(None, "official label_710to{400,600,700}.json: re-index the head rows of a "
                                            "710-class --init checkpoint to this model's classes", path=True)
    drop_path: float = like(0.1)
    head_drop: float = opt(0.0, "dropout before the head", "[0, 1]")
    init_scale: float = opt(0.001, "scale of the fresh head's initial weights", "> 0")
    # data
    data_path: str | None = like(None, "training list(s) (official fine-tune CSV `path label`, label a class id or, "
                                       "with --class_names, a class name), comma-separated; default: generated "
                                       "still/moving videos (demo)")
    label_maps: str | None = opt(None, "class-name files of the lists in --data_path, comma-separated: the lists are "
                                       "merged by class name and de-duplicated by video id (the K710 construction)",
                                 path=True)
    val_data_path: str | None = opt(None, "validation list (single centred view, after every epoch)", path=True)
    test_data_path: str | None = opt(None, "test list (multi-view testing at the end of training)", path=True)
    num_sample: int = like(2)
    crop_scale: tuple[float, float] = opt((0.08, 1.0), "random resized crop: area range (official 0.08 1.0)")
    aa: str = opt("rand-m7-n4-mstd0.5-inc1", "RandAugment policy (timm syntax), or none")
    flip: bool = opt(True, "random horizontal flip (official: off for SSv2)")
    reprob: float = opt(0.25, "random erasing probability", "[0, 1]")
    mixup: float = opt(0.8, "mixup alpha (0: off)", ">= 0")
    cutmix: float = opt(1.0, "cutmix alpha (0: off)", ">= 0")
    mixup_prob: float = opt(1.0, "probability of mixing a batch", "[0, 1]")
    mixup_switch_prob: float = opt(0.5, "probability of cutmix instead of mixup when both are on", "[0, 1]")
    smoothing: float = opt(0.1, "label smoothing", "[0, 1]")
    # optimisation
    epochs: int = like(30)
    lr: float = like(1e-3)
    min_lr: float = like(1e-6)
    warmup_epochs: float = like(5.0)
    layer_decay: float = opt(0.75, "layer-wise lr decay: block k gets lr * decay^(depth - k)", "(0, 1]")
    opt_betas: tuple[float, float] = like((0.9, 0.999))
    eval_batch_size: int | None = count(None, "videos per evaluation batch (default: 1.5 x --batch_size, official)")
    # run
    output_dir: str = like("output/finetune")

    def validate(self):
        if self.label_maps is not None and self.data_path is None:  # before the files are looked for
            refuse("label_maps", self.label_maps, "needs --data_path (one class-name file per list)")
        super().validate()
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            refuse("crop_scale", self.crop_scale, "need 0 < min <= max <= 1")
        if self.init_head_index is not None and self.init is None:
            refuse("init_head_index", self.init_head_index, "re-indexes the head of --init; give --init too")
        mixing = (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0
        if mixing and (self.batch_size * self.num_sample) % 2:
            refuse("batch_size", self.batch_size, f"mixup/cutmix pair each clip with the batch reversed: --batch_size x "
                                                f"--num_sample ({self.batch_size} x {self.num_sample}) must be even")
        if self.label_maps is not None and len(self.label_maps.split(",")) != len(self.data_path.split(",")):
            refuse("label_maps", self.label_maps, f"give one file per list in --data_path ({self.data_path})")
        return self


@dataclass
class WeightsConfig(ClassifierConfig):
    """The fields of the two entry points that apply fine-tuned weights (evaluation, prediction)."""

    REQUIRED = ("model", "weights", "nb_classes")
    REQUIRED_HINT = " (or --run DIR: a fine-tuning output folder gives it)"
    MAX_WORKERS = 4
    run: str | None = opt(None, "a python -m vmae2.finetune output folder: its config.json gives the model, classes, "
                                "clip geometry, test views, weights (model.safetensors) and test list; flags still "
                                "override (with a warning)")
    model: str | None = like(None)
    nb_classes: int | None = like(None)
    weights: str | None = opt(None, "fine-tuned checkpoint (.pth official or ours, .safetensors, a transformers "
                                    "VideoMAE folder or its Hub id); a config.json beside it (a vmae2 run) gives the "
                                    "model, classes and clip geometry", path=True, hub=True)
    test_num_segment: int = like(5)
    batch_size: int = like(4, "videos per batch (each gives all its views)")
    num_workers: int | None = like(None, "data workers (default: min(4, CPU cores); 0: load in the main process)")


def _script(model: str, dataset: str, **kw) -> dict:
    """A released fine-tune script (official table, §7.2): 16 frames, rate 4, 2 repeated views, betas
    (0.9, 0.999); SSv2 uses TSN sampling, no flip and 2x3 test views, the others 5x3."""
    ssv2 = dataset == "ssv2"
    return {"model": model, "nb_classes": DATASET_CLASSES[dataset], "num_frames": 16, "sampling_rate": 4,
            "num_sample": 2, "opt_betas": (0.9, 0.999), "warmup_epochs": 5, "weight_decay": 0.05,
            "sparse_sample": ssv2, "flip": not ssv2, "test_num_segment": 2 if ssv2 else 5, "test_num_crop": 3,
            **kw}


_B, _L, _H, _G = (f"vit_{s}_patch{p}_224" for s, p in (("base", 16), ("large", 16), ("huge", 16), ("giant", 14)))
FINETUNE_PRESETS = {
    # The embedded default: progressive training in miniature on generated videos of a still vs. a moving
    # texture (2 classes that only time tells apart; no flips, as for SSv2). Without --init the tiny model is
    # first MAE-pretrained on the training clips for 100 steps (from scratch, with the official head init
    # scale 0.001, it stays at chance for this many steps: measured). A few minutes on a CPU. No RandAugment,
    # erasing or mixup, which slow a tiny model on a few dozen clips too much; the official augmentation stays
    # available: --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 --mixup 0.8 --cutmix 1.0.
    "demo": dict(model="vit_tiny_patch16_224", nb_classes=2, num_frames=8, sampling_rate=2, input_size=64,
                 short_side_size=64, batch_size=8, num_sample=2, epochs=10, lr=0.032, warmup_epochs=1,
                 layer_decay=0.9, drop_path=0.0, flip=False, crop_scale=(0.5, 1.0), aa="none",
                 reprob=0.0, mixup=0.0, cutmix=0.0, num_workers=2, test_num_segment=2, test_num_crop=2,
                 output_dir="output/finetune_demo", log_every=10, save_every_steps=100),
    "official_defaults": {},
    "vit_b_k400": _script(_B, "k400", batch_size=16, lr=7e-4, layer_decay=0.75, epochs=90),
    "vit_b_k710": _script(_B, "k710", batch_size=16, lr=7e-4, layer_decay=0.75, epochs=90),
    "vit_b_ssv2": _script(_B, "ssv2", batch_size=16, lr=2e-3, layer_decay=0.65, epochs=25),
    "vit_l_k400": _script(_L, "k400", batch_size=6, lr=2e-3, layer_decay=0.75, drop_path=0.2, epochs=35),
    "vit_l_ssv2": _script(_L, "ssv2", batch_size=6, lr=5e-4, layer_decay=0.75, drop_path=0.2, epochs=20),
    "vit_h_k400": _script(_H, "k400", batch_size=4, lr=1e-3, layer_decay=0.8, drop_path=0.2, head_drop=0.5,
                          epochs=40, with_checkpoint=True),
    "vit_h_k600": _script(_H, "k600", batch_size=4, lr=1e-3, layer_decay=0.8, drop_path=0.2, head_drop=0.5,
                          epochs=40, with_checkpoint=True),
    "vit_h_k710": _script(_H, "k710", batch_size=4, lr=1e-3, layer_decay=0.8, drop_path=0.2, head_drop=0.5,
                          epochs=40, with_checkpoint=True),
    "vit_h_ssv2": _script(_H, "ssv2", batch_size=4, lr=5e-4, layer_decay=0.8, drop_path=0.2, epochs=20,
                          with_checkpoint=True),
    "vit_g_k710": _script(_G, "k710", batch_size=3, lr=1e-3, layer_decay=0.9, drop_path=0.3, weight_decay=0.1,
                          epochs=35, clip_grad=5.0, with_checkpoint=True),
    "vit_g_k400": _script(_G, "k400", batch_size=3, lr=1e-3, layer_decay=0.9, drop_path=0.2, weight_decay=0.1,
                          epochs=30, with_checkpoint=True),
    "vit_g_k710_it_k400": _script(_G, "k400", batch_size=3, lr=1e-5, layer_decay=0.9, drop_path=0.25,
                                  weight_decay=0.1, warmup_epochs=1, epochs=3, with_checkpoint=True),
    "vit_g_k710_it_k600": _script(_G, "k600", batch_size=3, lr=1e-5, layer_decay=0.9, drop_path=0.25,
                                  weight_decay=0.1, warmup_epochs=1, epochs=3, with_checkpoint=True),
    "vit_g_ssv2": _script(_G, "ssv2", batch_size=3, lr=3e-4, layer_decay=0.9, drop_path=0.25, epochs=20,
                          with_checkpoint=True),
    "vit_g_k710_it_ucf101": _script(_G, "ucf101", batch_size=3, lr=1e-3, layer_decay=0.9, drop_path=0.35,
                                    head_drop=0.5, epochs=50, with_checkpoint=True),
    "vit_g_k710_it_hmdb51": _script(_G, "hmdb51", batch_size=3, lr=5e-4, layer_decay=0.9, drop_path=0.35,
                                    head_drop=0.5, epochs=15, sampling_rate=2, with_checkpoint=True),
}

# The default for --data_path without --preset on a small data set without a GPU (vmae2.cli.SMALL_DATA): the
# demo's recipe (tiny model, light augmentation, minutes on a CPU) on the user's videos, with the official flips and
# the classes of the user's list; with --init from a vmae2 run, that run's model and geometry win. Its 10 epochs are
# at least SMALL_DATA_STEPS steps: 28 training clips make 3 steps an epoch. Measured on generated folders of 3 motion
# classes (tests/test_small_data.py's), fine-tuned on one folder and tested on two others (31 clips each, 5x3 views):
# mean pooling 42-48% (chance 33%), --pool mean_motion 48-52%, and with --layer_decay 0.5 --head_drop 0.5 61-65%;
# 2x2 views instead of the released scripts' 5x3 lose 6-13 points
# (benchmarks/results/cpu_small_data_pooling_2026-12-07.json).
SMALL_DATA_STEPS = 300
FINETUNE_PRESETS["small_data"] = {**{k: v for k, v in FINETUNE_PRESETS["demo"].items()
                                     if k not in ("nb_classes", "num_workers", "flip")},
                                  "min_steps": SMALL_DATA_STEPS, "pool": "mean_motion", "layer_decay": 0.5,
                                  "head_drop": 0.5, "test_num_segment": 5, "test_num_crop": 3,
                                  "output_dir": "output/finetune"}


FINETUNE = Command(
    "python -m vmae2.finetune",
    "VideoMAE V2 supervised fine-tuning / post-pre-training. With no arguments: the demo preset (tiny model, "
    "generated still/moving videos, pretraining then fine-tuning, a few minutes on a CPU). Precedence: "
    "defaults < --preset < --config < flags. Defaults below are the official run_class_finetuning.py ones.",
    FinetuneConfig, FINETUNE_PRESETS, "demo",
    "a released fine-tune script (vit_{b,l,h,g}_{k400,k710,ssv2,...}), demo or small_data",
    rundir.finetune_values)


main = entry(FINETUNE, "vmae2.runs.finetune:run")


if __name__ == "__main__":
    raise SystemExit(main())
