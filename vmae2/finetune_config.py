"""Fine-tuning / evaluation configuration: one dataclass, the released fine-tune scripts as presets.

Same precedence and validation as pretraining (:mod:`vmae2.config`): defaults < ``--preset`` < ``--config`` <
flags. Defaults are the official ``run_class_finetuning.py`` ones; flag names follow it where sensible
(``--nb_classes``, ``--layer_decay``, ``--smoothing``, ``--reprob``, ``--test_num_segment`` ...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from vmae2.config import Command, opt
from vmae2.models import list_models

DATASET_CLASSES = {"k400": 400, "k600": 600, "k700": 700, "k710": 710, "ssv2": 174, "ucf101": 101, "hmdb51": 51}


@dataclass
class FinetuneConfig:
    # model
    model: str = opt("vit_base_patch16_224", "classification model (vit_*_patch*_224)")
    nb_classes: int = opt(400, "number of classes of the head")
    init: str | None = opt(None, "initial weights: a pretraining checkpoint (encoder kept, decoder dropped, head new) "
                                 "or a fine-tuned one (.pth or .safetensors)")
    init_head_index: str | None = opt(None, "official label_710to{400,600,700}.json: re-index the head rows of a "
                                            "710-class --init checkpoint to this model's classes")
    init_num_frames: int | None = opt(None, "frames the --init encoder was pretrained on (default: --num_frames); "
                                            "the position table is resampled from that grid")
    init_input_size: int | None = opt(None, "input size the --init encoder was pretrained on (default: --input_size)")
    drop_path: float = opt(0.1, "stochastic depth rate")
    head_drop: float = opt(0.0, "dropout before the head")
    init_scale: float = opt(0.001, "scale of the fresh head's initial weights")
    with_checkpoint: bool = opt(False, "activation checkpointing per block")
    attn_backend: str = opt("auto", "attention backend: auto, flash, xformers, sdpa, math")
    compile: bool = opt(False, "torch.compile the model")
    # data
    data_path: str | None = opt(None, "training list(s) (official fine-tune CSV `path label`), comma-separated; "
                                      "default: generated still/moving videos (demo)")
    label_maps: str | None = opt(None, "class-name files of the lists in --data_path, comma-separated: the lists are "
                                       "merged by class name and de-duplicated by video id (the K710 construction)")
    val_data_path: str | None = opt(None, "validation list (single centred view, after every epoch)")
    test_data_path: str | None = opt(None, "test list (multi-view testing at the end of training)")
    class_names: str | None = opt(None, "class-name file for reports (default: the merged map, if any)")
    data_root: str = opt("", "prefix for relative paths in the lists")
    num_frames: int = opt(16, "frames per clip")
    sampling_rate: int = opt(4, "temporal stride of dense sampling")
    sparse_sample: bool = opt(False, "TSN sampling, one frame per segment (SSv2)")
    input_size: int = opt(224, "crop size")
    short_side_size: int = opt(224, "evaluation: short side resized to this before cropping")
    tubelet_size: int = opt(2, "frames per tubelet")
    num_sample: int = opt(2, "repeated augmentation: views per decoded video")
    crop_scale: tuple[float, float] = opt((0.08, 1.0), "random resized crop: area range (official 0.08 1.0)")
    aa: str = opt("rand-m7-n4-mstd0.5-inc1", "RandAugment policy (timm syntax), or none")
    flip: bool = opt(True, "random horizontal flip (official: off for SSv2)")
    reprob: float = opt(0.25, "random erasing probability")
    mixup: float = opt(0.8, "mixup alpha (0: off)")
    cutmix: float = opt(1.0, "cutmix alpha (0: off)")
    mixup_prob: float = opt(1.0, "probability of mixing a batch")
    mixup_switch_prob: float = opt(0.5, "probability of cutmix instead of mixup when both are on")
    smoothing: float = opt(0.1, "label smoothing")
    num_workers: int = opt(10, "data worker processes")
    # optimisation
    batch_size: int = opt(64, "videos per process per micro-batch (clips = batch_size * num_sample)")
    accum_steps: int = opt(1, "micro-batches per optimizer step (official --update_freq)")
    epochs: int = opt(30, "epochs")
    max_steps: int | None = opt(None, "stop after this many optimizer steps (overrides --epochs)")
    lr: float = opt(1e-3, "base lr; actual lr = lr * batch_size * world_size * accum_steps / 256")
    min_lr: float = opt(1e-6, "final lr of the cosine schedule (scaled like --lr)")
    warmup_epochs: float = opt(5.0, "linear warm-up from 0, in epochs")
    warmup_steps: int = opt(-1, "warm-up in steps (overrides --warmup_epochs when >= 0)")
    layer_decay: float = opt(0.75, "layer-wise lr decay: block k gets lr * decay^(depth - k)")
    weight_decay: float = opt(0.05, "weight decay (not on 1-D params and biases)")
    opt_betas: tuple[float, float] = opt((0.9, 0.999), "AdamW betas")
    opt_eps: float = opt(1e-8, "AdamW eps")
    clip_grad: float | None = opt(None, "max gradient norm")
    precision: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16 (with GradScaler), fp32",
                         choices=("auto", "bf16", "fp16", "fp32"))
    # evaluation
    test_num_segment: int = opt(10, "test views: temporal windows per video (released scripts: 5, SSv2 2)")
    test_num_crop: int = opt(3, "test views: spatial crops per window")
    eval_batch_size: int | None = opt(None, "videos per evaluation batch (default: 1.5 x --batch_size, official)")
    # run
    output_dir: str = opt("output/finetune", "checkpoints, metrics.jsonl, test results")
    seed: int = opt(0, "seed (init of the head, data order, augmentation)")
    device: str = opt("auto", "auto, cpu, cuda")
    log_every: int = opt(20, "log (and read the loss on the host) every N steps")
    save_every_steps: int = opt(1000, "checkpoint every N steps (and at the end of every epoch)")
    keep_last: int = opt(2, "checkpoints kept")
    resume: str = opt("auto", "auto (latest in output_dir), a checkpoint path, or none")

    @property
    def patch_size(self) -> int:
        return 14 if "patch14" in self.model else 16

    def validate(self) -> "FinetuneConfig":
        def bad(name, value, allowed):
            raise ValueError(f"--{name} {value!r} is invalid: {allowed}")

        if self.model not in list_models() or self.model.startswith("pretrain_"):
            bad("model", self.model, f"choose a classification model: "
                                     f"{[m for m in list_models() if not m.startswith('pretrain_')]}")
        for name in ("nb_classes", "batch_size", "accum_steps", "num_sample", "epochs", "num_frames",
                     "sampling_rate", "input_size", "short_side_size", "tubelet_size", "test_num_segment",
                     "test_num_crop", "log_every", "save_every_steps", "keep_last"):
            if getattr(self, name) < 1:
                bad(name, getattr(self, name), "must be >= 1")
        if self.lr <= 0:
            bad("lr", self.lr, "must be positive")
        if not 0 < self.layer_decay <= 1:
            bad("layer_decay", self.layer_decay, "must be in (0, 1] (1 = no layer decay)")
        for name in ("drop_path", "head_drop", "reprob", "mixup_prob", "mixup_switch_prob", "smoothing"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, getattr(self, name), "must be in [0, 1]")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            bad("crop_scale", self.crop_scale, "need 0 < min <= max <= 1")
        if self.mixup < 0 or self.cutmix < 0:
            bad("mixup" if self.mixup < 0 else "cutmix", min(self.mixup, self.cutmix), "alpha must be >= 0")
        if self.num_frames % self.tubelet_size:
            bad("num_frames", self.num_frames, f"must be divisible by --tubelet_size {self.tubelet_size}")
        if self.input_size % self.patch_size:
            bad("input_size", self.input_size, f"must be a multiple of the patch size {self.patch_size}")
        if self.data_path is not None:
            for path in self.data_path.split(","):
                if not os.path.exists(path):
                    bad("data_path", path, "each list in --data_path must be an existing file")
        for name in ("warmup_epochs", "min_lr", "weight_decay", "opt_eps", "num_workers"):
            if getattr(self, name) < 0:
                bad(name, getattr(self, name), "must be >= 0")
        if self.min_lr > self.lr:
            bad("min_lr", self.min_lr, f"must not exceed --lr {self.lr}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            bad("eval_batch_size", self.eval_batch_size, "must be >= 1 (or omitted: 1.5 x --batch_size)")
        if self.init_num_frames is not None and (self.init_num_frames < 1 or self.init_num_frames % self.tubelet_size):
            bad("init_num_frames", self.init_num_frames, "must be a positive multiple of --tubelet_size")
        if self.init_input_size is not None and (self.init_input_size < 1 or self.init_input_size % self.patch_size):
            bad("init_input_size", self.init_input_size, f"must be a positive multiple of the patch {self.patch_size}")
        if self.init_head_index is not None and self.init is None:
            bad("init_head_index", self.init_head_index, "re-indexes the head of --init; give --init too")
        mixing = (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0
        if mixing and (self.batch_size * self.num_sample) % 2:
            bad("batch_size", self.batch_size, f"mixup/cutmix pair each clip with the batch reversed: --batch_size x "
                                               f"--num_sample ({self.batch_size} x {self.num_sample}) must be even")
        if self.short_side_size < self.input_size:
            bad("short_side_size", self.short_side_size, f"must be >= --input_size {self.input_size}")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps", self.max_steps, "must be >= 1")
        if self.clip_grad is not None and self.clip_grad <= 0:
            bad("clip_grad", self.clip_grad, "must be positive (omit it to disable clipping)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            bad("device", self.device, "auto, cpu, cuda or cuda:N")
        for name in ("init", "init_head_index", "val_data_path", "test_data_path", "class_names"):
            path = getattr(self, name)
            if path is not None and not os.path.exists(path):
                bad(name, path, "must be an existing file")
        if self.resume not in ("auto", "none") and not os.path.exists(self.resume):
            bad("resume", self.resume, "auto, none, or an existing checkpoint file")
        if self.label_maps is not None:
            if self.data_path is None:
                bad("label_maps", self.label_maps, "needs --data_path (one class-name file per list)")
            if len(self.label_maps.split(",")) != len(self.data_path.split(",")):
                bad("label_maps", self.label_maps, f"give one file per list in --data_path ({self.data_path})")
            for path in self.label_maps.split(","):
                if not os.path.exists(path):
                    bad("label_maps", path, "each class-name file must exist")
        return self

    def pretrain_grid(self) -> tuple[int, int, int] | None:
        """The token grid the ``--init`` encoder was pretrained on, when ``--init_num_frames/--init_input_size``
        name it (its position table is then resampled onto this model's grid); else ``None``."""
        if self.init_num_frames is None and self.init_input_size is None:
            return None
        frames = self.init_num_frames or self.num_frames
        size = self.init_input_size or self.input_size
        return frames // self.tubelet_size, size // self.patch_size, size // self.patch_size


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

FINETUNE = Command(
    "python -m vmae2.finetune",
    "VideoMAE V2 supervised fine-tuning / post-pre-training. With no arguments: the demo preset (tiny model, "
    "generated still/moving videos, pretraining then fine-tuning, a few minutes on a CPU). Precedence: "
    "defaults < --preset < --config < flags. Defaults below are the official run_class_finetuning.py ones.",
    FinetuneConfig, FINETUNE_PRESETS, "demo",
    "a released fine-tune script (vit_{b,l,h,g}_{k400,k710,ssv2,...}), or demo")
