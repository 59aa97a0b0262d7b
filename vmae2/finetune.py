"""``python -m vmae2.finetune``: supervised post-pre-training and fine-tuning of VideoMAE V2 classifiers.

Progressive training: pretrain (``python -m vmae2.train``), then post-pre-train on a mixed labeled set (K710:
``--data_path k400.csv,k600.csv,k700.csv --label_maps k400.txt,k600.txt,k700.txt``), then fine-tune on the
target set (``--init`` the K710 checkpoint, ``--init_head_index label_710to400.json``). Official recipe:
layer-wise lr decay, AdamW, warm-up + cosine, RandAugment, random erasing, mixup/cutmix with label smoothing,
repeated sampling, gradient accumulation; per-epoch validation (best weights kept) and multi-view testing.

With no arguments (``demo`` preset) it runs progressive training in miniature on generated still/moving videos:
MAE pretraining of the tiny model on the training clips, then fine-tuning and multi-view testing (a few minutes
on a CPU). Checkpoints are atomic and step-exact (``--resume auto``), like pretraining.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from vmae2.checkpoint import POS_GRID_KEY, load_classifier_weights, save_safetensors, stored_pos_grid
from vmae2.config import parse_config, to_dict
from vmae2.data.augment import FinetuneAugment, Mixup, soft_target_cross_entropy
from vmae2.data.classify import ClassifyConfig, ClassifyLoader
from vmae2.data.labels import LabelMap, merge_labeled_lists
from vmae2.data.lists import read_finetune_csv
from vmae2.data.synthetic import make_labeled_videos
from vmae2.evaluate import predict, score, write_report
from vmae2.finetune_config import FINETUNE, FinetuneConfig
from vmae2.models import create_model
from vmae2.runtime import (
    Checkpoints,
    Dist,
    MetricsLog,
    NonFiniteLoss,
    agreed_stop,
    build_optimizer,
    check_output_dir,
    cosine_schedule,
    finish_distributed,
    optimizer_step,
    resolve_device,
    rng_state,
    set_rng_state,
    set_schedule,
    setup_distributed,
    stop_signals,
)

log = logging.getLogger("vmae2.finetune")
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
        from vmae2.train import main as pretrain

        listing = out_dir / "pretrain_list.txt"
        out_dir.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{line.split()[0]} 0 -1\n" for line in train_list.read_text().splitlines()))
        print("demo: pretraining the tiny model on the training clips first (100 steps) ...", flush=True)
        rc = pretrain(["--preset", "demo", "--data_path", str(listing), "--num_frames", "8", "--input_size", "64",
                       "--sampling_rate", "2", "--batch_size", "8", "--num_sample", "1", "--mask_ratio", "0.9",
                       "--num_workers", "2", "--lr", "0.032",
                       "--warmup_steps", "10", "--max_steps", "100", "--normalize_target", "false", "--log_every", "50",
                       "--output_dir", str(out_dir / "pretrain")])
        if rc != 0:
            raise ValueError(f"the demo pretraining failed (exit {rc}); see the messages above")
    return str(weights)


def read_train_records(cfg: FinetuneConfig):
    """Training records and class names: one list, several lists sharing labels, or several lists with their
    label maps merged by class name and de-duplicated by video id (K710)."""
    paths = cfg.data_path.split(",")

    def read(path, num_classes):
        return read_finetune_csv(path, data_root=cfg.data_root, num_classes=num_classes, step=cfg.sampling_rate)

    if not cfg.label_maps:
        return [r for p in paths for r in read(p, cfg.nb_classes)], None
    maps = [LabelMap.read(m) for m in cfg.label_maps.split(",")]
    merged = merge_labeled_lists([(read(p, len(m)), m) for p, m in zip(paths, maps)])
    print(merged.summary(), flush=True)
    if len(merged.label_map) != cfg.nb_classes:
        raise ValueError(f"the merged label maps have {len(merged.label_map)} classes but --nb_classes is "
                         f"{cfg.nb_classes}; set --nb_classes {len(merged.label_map)}")
    return merged.records, list(merged.label_map.names)


def build_model(cfg: FinetuneConfig, device: torch.device, d: Dist):
    model = create_model(cfg.model, num_classes=cfg.nb_classes, num_frames=cfg.num_frames, img_size=cfg.input_size,
                         tubelet_size=cfg.tubelet_size, drop_path_rate=cfg.drop_path, head_drop_rate=cfg.head_drop,
                         init_scale=cfg.init_scale, use_checkpoint=cfg.with_checkpoint, attn_backend=cfg.attn_backend,
                         pos_embed_grid=cfg.pretrain_grid() or (stored_pos_grid(cfg.init) if cfg.init else None))
    if cfg.init:
        report = load_classifier_weights(model, cfg.init, head_index=cfg.init_head_index)
        if d.is_main:
            print(f"initialised from {cfg.init}: {report}", flush=True)
    model.to(device)
    runner = model
    if d.world_size > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None)
    if cfg.compile:
        runner = torch.compile(runner)
    return runner, model


def micro_rng(seed: int, rank: int, step: int, micro: int) -> np.random.Generator:
    """The mixup draws of one rank's micro-batch: from ``(seed, rank, step, micro)`` only (resumable; each rank
    draws its own lambda and box, as the official per-rank seeding gives)."""
    return np.random.default_rng([seed, rank, step, micro, 0x313])


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the torch RNG (drop path) for one rank's step."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(argv, FINETUNE)
        return finetune(cfg)
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def finetune(cfg: FinetuneConfig) -> int:
    device = resolve_device(cfg.device, Dist())
    d = setup_distributed(device.type)
    device = resolve_device(cfg.device, d)
    torch.manual_seed(cfg.seed)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    out = Path(cfg.output_dir)

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
    records, names = read_train_records(cfg)
    if cfg.class_names:
        names = list(LabelMap.read(cfg.class_names).names)
    if names is not None and len(names) != cfg.nb_classes:
        raise ValueError(f"{len(names)} class names ({cfg.class_names or '--label_maps'}) for --nb_classes "
                         f"{cfg.nb_classes}; they must agree")
    clip = ClassifyConfig(clip_len=cfg.num_frames, rate=cfg.sampling_rate, input_size=cfg.input_size,
                          short_side_size=cfg.short_side_size, sparse=cfg.sparse_sample, num_sample=cfg.num_sample,
                          num_segments=cfg.test_num_segment, num_crops=cfg.test_num_crop, num_classes=cfg.nb_classes)
    transform = FinetuneAugment(cfg.input_size, auto_augment=None if cfg.aa == "none" else cfg.aa,
                                scale=tuple(cfg.crop_scale), reprob=cfg.reprob, flip=cfg.flip)
    common = dict(config=clip, seed=cfg.seed, rank=d.rank, world_size=d.world_size, num_workers=cfg.num_workers,
                  device=device, quarantine=out / "quarantine.tsv")
    loader = ClassifyLoader(records, mode="train", batch_size=cfg.batch_size, transform=transform, **common)
    if len(loader) < cfg.accum_steps:
        raise ValueError(f"the data gives {len(loader)} batches per epoch per process; need at least --accum_steps "
                         f"{cfg.accum_steps}: add videos or lower --batch_size {cfg.batch_size}")
    eval_batch = cfg.eval_batch_size or max(int(1.5 * cfg.batch_size), 1)

    def eval_records(path):
        return read_finetune_csv(path, data_root=cfg.data_root, num_classes=cfg.nb_classes, step=cfg.sampling_rate)

    val_records = eval_records(cfg.val_data_path) if cfg.val_data_path else None
    val_loader = ClassifyLoader(val_records, mode="val", batch_size=eval_batch, **common) if val_records else None
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                  switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing, num_classes=cfg.nb_classes)

    runner, model = build_model(cfg, device, d)
    grid_meta = {POS_GRID_KEY: ",".join(str(n) for n in model.pos_embed_grid)}
    n_params = sum(p.numel() for p in model.parameters())
    if d.is_main:
        check_output_dir(out, needed_bytes=n_params * 4 * 3 + 2**20)
    global_videos = cfg.batch_size * d.world_size * cfg.accum_steps
    lr, min_lr = cfg.lr * global_videos / 256, cfg.min_lr * global_videos / 256
    steps_per_epoch = max(len(loader) // cfg.accum_steps, 1)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else int(cfg.warmup_epochs * steps_per_epoch)
    lr_at = cosine_schedule(lr, min_lr, total_steps, warmup)
    optimizer = build_optimizer(model, lr, cfg.weight_decay, cfg.opt_betas, cfg.opt_eps,
                                layer_decay=cfg.layer_decay if cfg.layer_decay < 1 else None)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    checkpoints = Checkpoints(out, cfg.keep_last)
    resume_from = checkpoints.latest() if cfg.resume == "auto" else (None if cfg.resume == "none" else cfg.resume)
    step, best = 0, {"top1": -1.0, "step": 0}
    if resume_from:
        state = Checkpoints.load(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, best = int(state["step"]), dict(state["best"])
        if d.is_main:
            print(f"resumed from {resume_from} at step {step}", flush=True)
            if state.get("world_size", 1) != d.world_size:
                log.warning("checkpoint was written with world size %s, now %s: the data order and epoch "
                            "positions change", state.get("world_size"), d.world_size)

    def check_finite() -> None:
        """Every rank agrees on the first non-finite step (the host reads it: log and save steps only)."""
        if d.world_size > 1:
            dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
        if int(first_bad.item()) >= 0:
            raise NonFiniteLoss(f"the loss became non-finite at step {int(first_bad)}; stopped without saving. "
                                f"The last good checkpoint is {checkpoints.latest()}. Lower --lr or set "
                                "--clip_grad, then --resume auto")

    def save(at: int) -> None:
        check_finite()  # a checkpoint never holds a diverged model
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler else None, "step": at, "best": best, "rng": rng_state(),
                 "world_size": d.world_size, "config": to_dict(cfg)}
        if d.is_main:
            checkpoints.save(state, at)

    stop_signal = stop_signals()
    metrics = MetricsLog(out, total_steps, step, enabled=d.is_main)
    if d.is_main:
        print(f"{cfg.model}: {n_params / 1e6:.2f}M params, {cfg.nb_classes} classes, {len(records)} training videos, "
              f"{d.world_size} process(es) on {device}, {precision}, {total_steps} steps of {global_videos} videos x "
              f"{cfg.num_sample} views, lr {lr:.2e}, layer decay {cfg.layer_decay}", flush=True)

    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    window_start, window_steps = time.perf_counter(), 0
    epoch, batch_in_epoch = divmod(step * cfg.accum_steps, len(loader))
    loader.set_epoch(epoch)
    batches = loader.iterate(batch_in_epoch)
    runner.train()
    stopping = False
    while step < total_steps and not stopping:
        set_schedule(optimizer, float(lr_at[step]), cfg.weight_decay)
        torch.manual_seed(step_seed(cfg.seed, d.rank, step))  # drop path: per rank and step, resumable
        for micro in range(cfg.accum_steps):
            batch = next(batches, None)
            if batch is None:
                epoch += 1
                loader.set_epoch(epoch)
                batches = loader.iterate(0)
                batch = next(batches)
            video, targets = mixup(batch.video, batch.labels, micro_rng(cfg.seed, d.rank, step, micro))
            sync = micro == cfg.accum_steps - 1
            ctx = runner.no_sync() if (not sync and hasattr(runner, "no_sync")) else contextlib.nullcontext()
            with ctx, torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = soft_target_cross_entropy(runner(video).float(), targets)
                objective = loss / cfg.accum_steps
                (scaler.scale(objective) if scaler else objective).backward()
            loss_sum += loss.detach() / cfg.accum_steps
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        grad_norm = optimizer_step(optimizer, scaler, model.parameters(), cfg.clip_grad)
        step += 1
        window_steps += 1
        epoch_done = (step * cfg.accum_steps) % len(loader) < cfg.accum_steps or step == total_steps
        if d.world_size == 1:
            stopping = bool(stop_signal)

        record = None
        if step % cfg.log_every == 0 or step == total_steps or epoch_done:
            check_finite()
            stopping = agreed_stop(stop_signal, d, device)
            if d.world_size > 1:
                dist.all_reduce(loss_sum)
                loss_sum /= d.world_size
            elapsed = time.perf_counter() - window_start
            record = {"step": step, "epoch": epoch, "loss": loss_sum.item() / max(window_steps, 1),
                      "lr": float(lr_at[step - 1]), "grad_norm": float(grad_norm),
                      "clips_per_s": window_steps * cfg.accum_steps * cfg.batch_size * cfg.num_sample * d.world_size
                      / elapsed, "data_wait_frac": loader.telemetry.wait_fraction,
                      "skipped_videos": sum(loader.ledger.encounters.values())}
            loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if epoch_done and val_loader is not None:
            result = score(predict(model, val_loader, amp_dtype), val_records, cfg.nb_classes, d)
            record = {**(record or {"step": step}), "val_top1": result["top1"], "val_top5": result["top5"]}
            if result["top1"] > best["top1"]:
                best = {"top1": result["top1"], "step": step}
                if d.is_main:
                    save_safetensors(model.state_dict(), out / "model_best.safetensors", grid_meta)
            window_start = time.perf_counter()  # clips/s counts training only
        if record is not None:
            metrics.write(record)
        if step % cfg.save_every_steps == 0 or epoch_done or stopping:
            save(step)
    metrics.close()
    if stopping:
        if d.is_main:
            print(f"\nstopped by signal {stop_signal[0]} at step {step}; checkpoint saved, --resume auto continues",
                  flush=True)
        if d.world_size > 1:
            del runner
            finish_distributed()
        return 0
    if d.is_main:
        save_safetensors(model.state_dict(), out / "model.safetensors", grid_meta)
        if best["top1"] >= 0:
            print(f"best validation top-1 {best['top1']:.2f} at step {best['step']} (model_best.safetensors)")
    if cfg.test_data_path:
        loader.close()
        if val_loader is not None:
            val_loader.close()
        test_records = eval_records(cfg.test_data_path)
        test_videos = max(1, eval_batch // clip.views_per_video)  # every view of a video in one batch
        test_loader = ClassifyLoader(test_records, mode="test", batch_size=test_videos, **common)
        result = score(predict(model, test_loader, amp_dtype), test_records, cfg.nb_classes, d)
        if d.is_main:
            summary = write_report(result, test_records, out, names)
            print(f"test ({cfg.test_num_segment}x{cfg.test_num_crop} views): top-1 {summary['top1']:.2f}  top-5 "
                  f"{summary['top5']:.2f}  ({summary['videos_scored']} videos)", flush=True)
    if d.is_main:
        print(f"done: {step} steps; outputs in {out}", flush=True)
    if d.world_size > 1:
        del runner
        finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
