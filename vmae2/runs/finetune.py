"""The fine-tuning run of ``python -m vmae2.finetune`` (:func:`run`): labeled lists (merged by class name), the
classifier from ``--init``, the step loop with mixup/cutmix, per-epoch validation and multi-view testing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vmae2.cli import SMALL_DATA
from vmae2.data.classification.augment import FinetuneAugment, Mixup, soft_target_cross_entropy
from vmae2.data.classification.loader import ClassifyConfig, ClassifyLoader
from vmae2.data.decode import upscale_note
from vmae2.data.labels import LabelMap, merge_labeled_lists
from vmae2.data.lists import check_found, read_finetune_csv
from vmae2.data.shards import ShardList, is_shards
from vmae2.data.synthetic import make_labeled_videos
from vmae2.finetune import FinetuneConfig
from vmae2.models import create_model
from vmae2.runs.evaluate import predict, score, write_report
from vmae2.training import loop
from vmae2.training.distributed import Dist
from vmae2.training.loop import Setup, Task
from vmae2.training.optim import build_optimizer
from vmae2.weights import POS_GRID_KEY, load_classifier_weights, save_safetensors, stored_pos_grid

DEMO_DIR = Path(os.environ.get("VMAE2_CACHE", Path.home() / ".cache" / "vmae2")) / "demo_motion_v5"
DEMO_MOTIONS = ("still", "right")


def demo_lists() -> dict[str, Path]:
    """Generated clips of a still or moving texture (2 classes), made once and cached."""
    lists = {split: DEMO_DIR / f"{split}.csv" for split in ("train", "val", "test")}
    if not all(p.exists() for p in lists.values()):
        print(f"generating the demo videos in {DEMO_DIR} (once) ...", flush=True)
        lists = make_labeled_videos(DEMO_DIR, {"train": 32, "val": 8, "test": 12}, seed=0, motions=DEMO_MOTIONS)
    return lists


def demo_pretrain(train_list: Path, out_dir: Path) -> str:
    """Progressive training in miniature: MAE-pretrain the tiny model on the demo's training clips (labels
    unused) for 100 steps; returns the encoder weights the fine-tuning starts from. Done once per output dir."""
    weights = out_dir / "pretrain" / "model.safetensors"
    if not weights.exists():
        from vmae2.runs.pretrain import run as pretrain
        from vmae2.train import PRESETS, TrainConfig

        listing = out_dir / "pretrain_list.txt"
        out_dir.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{line.split()[0]} 0 -1\n" for line in train_list.read_text().splitlines()))
        print("demo: pretraining the tiny model on the training clips first (100 steps) ...", flush=True)
        cfg = TrainConfig(**{**PRESETS["demo"], "data_path": str(listing), "num_frames": 8, "input_size": 64,
                             "sampling_rate": 2, "batch_size": 8, "num_sample": 1, "mask_ratio": 0.9,
                             "num_workers": 2, "lr": 0.032, "warmup_steps": 10, "max_steps": 100,
                             "normalize_target": False, "log_every": 50,
                             "output_dir": str(out_dir / "pretrain")}).validate()
        rc = pretrain(cfg)
        if rc != 0:
            raise ValueError(f"the demo pretraining failed (exit {rc}); see the messages above")
    return str(weights)


def read_train_records(cfg: FinetuneConfig):
    """Training records and class names: one list, several lists sharing labels, or several lists with their
    label maps merged by class name and de-duplicated by video id (K710)."""
    paths = cfg.data_path.split(",")
    names = list(LabelMap.read(cfg.class_names).names) if cfg.class_names else None

    def read(path, num_classes):
        records = read_finetune_csv(path, data_root=cfg.data_root, num_classes=num_classes, step=cfg.sampling_rate,
                                    class_names=names if not cfg.label_maps else None)
        check_found(records, path, cfg.data_root)
        return records

    if len(paths) == 1 and not cfg.label_maps and is_shards(paths[0]):  # a sharded corpus: one seeded stream
        return ShardList.open(paths[0], seed=cfg.seed, step=cfg.sampling_rate), names
    if not cfg.label_maps:
        return [r for p in paths for r in read(p, cfg.nb_classes)], names
    maps = [LabelMap.read(m) for m in cfg.label_maps.split(",")]
    merged = merge_labeled_lists([(read(p, len(m)), m) for p, m in zip(paths, maps)])
    print(merged.summary(), flush=True)
    if len(merged.label_map) != cfg.nb_classes:
        raise ValueError(f"the merged label maps have {len(merged.label_map)} classes but --nb_classes is "
                         f"{cfg.nb_classes}; set --nb_classes {len(merged.label_map)}")
    return merged.records, names or list(merged.label_map.names)


def build_model(cfg: FinetuneConfig, device: torch.device, d: Dist):
    model = create_model(cfg.model, num_classes=cfg.nb_classes, num_frames=cfg.num_frames, img_size=cfg.input_size,
                         tubelet_size=cfg.tubelet_size, drop_path_rate=cfg.drop_path, head_drop_rate=cfg.head_drop,
                         init_scale=cfg.init_scale, use_checkpoint=cfg.with_checkpoint, attn_backend=cfg.attn_backend,
                         pool=cfg.pool,
                         pos_embed_grid=cfg.pretrain_grid() or (stored_pos_grid(cfg.init) if cfg.init else None))
    if cfg.init:
        report = load_classifier_weights(model, cfg.init, head_index=cfg.init_head_index,
                                         partial=cfg.init_partial)
        if d.is_main:
            print(f"initialised from {cfg.init}: {report}", flush=True)
    model.to(device)
    runner = model
    if d.world_size > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None)
    return runner, model


def micro_rng(seed: int, rank: int, step: int, micro: int) -> np.random.Generator:
    """The mixup draws of one rank's micro-batch: from ``(seed, rank, step, micro)`` only (resumable; each rank
    draws its own lambda and box, as the official per-rank seeding gives)."""
    return np.random.default_rng([seed, rank, step, micro, 0x313])


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the torch RNG (drop path) for one rank's step."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


class FinetuneTask(Task):
    """Supervised fine-tuning / post-pre-training: labeled clips, mixup/cutmix with label smoothing, layer-wise lr
    decay; validation after every epoch (the best weights kept) and multi-view testing at the end."""

    ENTRY = "finetune"
    epoch_checkpoints = True

    def __init__(self, s: Setup):
        super().__init__(s)
        cfg, d = self.cfg, s.dist
        self.out = out = Path(cfg.output_dir)
        if cfg.data_path is None:  # the demo data
            if d.world_size > 1:
                raise ValueError("the demo (no --data_path) runs in one process; give --data_path to use torchrun")
            demo = demo_lists()
            cfg.data_path = str(demo["train"])
            cfg.val_data_path = cfg.val_data_path or str(demo["val"])
            cfg.test_data_path = cfg.test_data_path or str(demo["test"])
            cfg.class_names = cfg.class_names or str(demo["train"].parent / "classes.txt")
            if cfg.init is None:
                cfg.init = demo_pretrain(demo["train"], out)
        self.records, self.names = read_train_records(cfg)
        if d.is_main and (note := upscale_note(self.records, cfg.short_side_size, "--short_side_size")):
            print(note, flush=True)
        if self.names is not None and len(self.names) != cfg.nb_classes:
            raise ValueError(f"{len(self.names)} class names ({cfg.class_names or '--label_maps'}) for --nb_classes "
                             f"{cfg.nb_classes}; they must agree")
        self.clip = ClassifyConfig(clip_len=cfg.num_frames, rate=cfg.sampling_rate, input_size=cfg.input_size,
                                   short_side_size=cfg.short_side_size, sparse=cfg.sparse_sample,
                                   num_sample=cfg.num_sample, num_segments=cfg.test_num_segment,
                                   num_crops=cfg.test_num_crop, num_classes=cfg.nb_classes)
        transform = FinetuneAugment(cfg.input_size, auto_augment=None if cfg.aa == "none" else cfg.aa,
                                    scale=tuple(cfg.crop_scale), reprob=cfg.reprob, flip=cfg.flip)
        self.common = dict(config=self.clip, seed=cfg.seed, rank=d.rank, world_size=d.world_size,
                           num_workers=cfg.num_workers, device=s.device, quarantine=out / "quarantine.tsv")
        self.loader = ClassifyLoader(self.records, mode="train", batch_size=cfg.batch_size, transform=transform,
                                     accum_steps=cfg.accum_steps, **self.common)
        self.eval_batch = cfg.eval_batch_size or max(int(1.5 * cfg.batch_size), 1)
        self.val_records = self.eval_records(cfg.val_data_path) if cfg.val_data_path else None
        self.val_loader = ClassifyLoader(self.val_records, mode="val", batch_size=self.eval_batch,
                                         **self.common) if self.val_records else None
        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                           switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing,
                           num_classes=cfg.nb_classes)
        self.runner, self.model = build_model(cfg, s.device, d)
        self.grid_meta = {POS_GRID_KEY: ",".join(str(n) for n in self.model.pos_embed_grid)}
        self.best = {"top1": -1.0, "step": 0}

    def eval_records(self, path):
        cfg = self.cfg
        records = read_finetune_csv(path, data_root=cfg.data_root, num_classes=cfg.nb_classes,
                                    step=cfg.sampling_rate, class_names=self.names)
        check_found(records, path, cfg.data_root)
        return records

    def build_optimizer(self, lr: float) -> torch.optim.Optimizer:
        cfg = self.cfg
        return build_optimizer(self.model, lr, cfg.weight_decay, cfg.opt_betas, cfg.opt_eps,
                               layer_decay=cfg.layer_decay if cfg.layer_decay < 1 else None)

    def before_step(self, step: int) -> None:
        torch.manual_seed(step_seed(self.cfg.seed, self.dist.rank, step))  # drop path: per rank and step, resumable

    def forward(self, batch, step: int, micro: int):
        video, targets = self.mixup(batch.video, batch.labels, micro_rng(self.cfg.seed, self.dist.rank, step, micro))
        loss = soft_target_cross_entropy(self.runner(video).float(), targets)
        return loss, loss, loss

    def after_epoch(self, step: int) -> dict:
        if self.val_loader is None:
            return {}
        result = score(predict(self.model, self.val_loader, self.setup.amp_dtype), self.val_records, self.cfg.nb_classes,
                       self.dist)
        if result["top1"] > self.best["top1"]:
            self.best = {"top1": result["top1"], "step": step}
            if self.dist.is_main:
                save_safetensors(self.model.state_dict(), self.out / "model_best.safetensors", self.grid_meta)
        return {"val_top1": result["top1"], "val_top5": result["top5"]}

    def state(self) -> dict:
        return {**super().state(), "best": self.best}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.best = dict(state["best"])

    def describe(self) -> str:
        return (f"{super().describe()}, {self.cfg.nb_classes} classes, {len(self.records)} training videos, layer "
                f"decay {self.cfg.layer_decay}")

    def training_fit(self) -> dict:
        """Top-1 of the final model on (up to ``FIT_VIDEOS`` of) its own training videos, one centred view each."""
        records = self.records[:FIT_VIDEOS]
        loader = ClassifyLoader(records, mode="val", batch_size=self.eval_batch, **self.common)
        try:
            return score(predict(self.model, loader, self.setup.amp_dtype), records, self.cfg.nb_classes, self.dist)
        finally:
            loader.close()

    def finish(self, step: int) -> None:
        cfg, d, out = self.cfg, self.dist, self.out
        if d.is_main:
            save_safetensors(self.model.state_dict(), out / "model.safetensors", self.grid_meta)
            if self.best["top1"] >= 0:
                print(f"best validation top-1 {self.best['top1']:.2f} at step {self.best['step']} "
                      f"(model_best.safetensors)")
        fit = self.training_fit()
        if d.is_main:
            print(f"training-set top-1 {fit['top1']:.2f} ({fit['videos_scored']} training videos, one centred view)",
                  flush=True)
            if fit["top1"] < FITS and len(self.records) < SMALL_DATA:
                print(underfit_advice(fit["top1"], cfg), flush=True)
        if cfg.test_data_path:
            self.loader.close()
            if self.val_loader is not None:
                self.val_loader.close()
            test_records = self.eval_records(cfg.test_data_path)
            test_videos = max(1, self.eval_batch // self.clip.views_per_video)  # every view of a video in one batch
            test_loader = ClassifyLoader(test_records, mode="test", batch_size=test_videos, **self.common)
            result = score(predict(self.model, test_loader, self.setup.amp_dtype), test_records, cfg.nb_classes, d)
            if d.is_main:
                summary = write_report(result, test_records, out, self.names)
                print(f"test ({cfg.test_num_segment}x{cfg.test_num_crop} views): top-1 {summary['top1']:.2f}  top-5 "
                      f"{summary['top5']:.2f}  ({summary['videos_scored']} videos)", flush=True)
        if d.is_main:
            print(f"done: {step} steps; outputs in {out}", flush=True)


FIT_VIDEOS = 256  # training videos the final fit check scores
FITS = 90.0  # training-set top-1 (%) below which a small-data fine-tune did not fit its own training videos


def underfit_advice(top1: float, cfg: FinetuneConfig) -> str:
    """What a small-data fine-tune that did not fit its training videos says, with what to try."""
    return (f"WARNING: the fine-tune did not fit its own training videos ({top1:.1f}% < {FITS:.0f}%): its predictions "
            f"on new videos mean little. Try: more epochs (--epochs {2 * cfg.epochs}), a higher --lr (now {cfg.lr}), "
            f"less regularisation (--drop_path 0 --mixup 0 --cutmix 0 --smoothing 0); check that the classes differ "
            f"in what the clips show (class folders, labels)")


def run(cfg: FinetuneConfig) -> int:
    """Fine-tune as ``cfg`` says; exit code 0, 2 (bad lists, weights, ... found before training) or 3 (the loss
    stopped being finite)."""
    return loop.run(FinetuneTask, cfg)
