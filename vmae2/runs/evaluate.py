"""Multi-view testing (:func:`run` is ``python -m vmae2.evaluate``): per-view predictions, the official merge,
top-k, per-class accuracy, confusion matrix and the report files. Fine-tuning tests with the same functions."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vmae2.data.classification.loader import ClassifyConfig, ClassifyLoader
from vmae2.data.labels import LabelMap
from vmae2.data.lists import VideoRecord, check_found, read_finetune_csv
from vmae2.metrics import ViewPredictions, confusion_matrix, per_class_accuracy, save_confusion_png, topk_accuracy
from vmae2.training import rundir
from vmae2.training.distributed import AMP_DTYPES, Dist, finish_distributed, resolve_device, setup_distributed
from vmae2.weights import load_classifier_weights, stored_pos_grid

if TYPE_CHECKING:  # the command's config, for annotations only: vmae2.evaluate names this module's run
    from vmae2.evaluate import EvaluateConfig


@torch.no_grad()
def predict(model: torch.nn.Module, loader: ClassifyLoader, amp_dtype: torch.dtype | None = None
            ) -> ViewPredictions:
    """Run ``model`` over every view of ``loader`` (this rank's share); no host sync per batch."""
    was_training = model.training
    model.eval()
    views = ViewPredictions()
    device_type = loader.device.type
    loader.set_epoch(0)
    for batch in loader:
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(batch.video)
        views.add(batch.video_index, batch.view_index, logits.float())
    model.train(was_training)
    return views


def score(views: ViewPredictions, records: list[VideoRecord], num_classes: int, d: Dist) -> dict:
    """Merge the views of every rank and compute the metrics (every rank gets them)."""
    # Unreadable videos have no views: they are reported (videos_scored < videos_listed), not an error.
    video_ids, probs = views.gather() if d.world_size > 1 else views.compute()
    labels = torch.tensor([records[int(i)].label for i in video_ids.tolist()])
    acc = topk_accuracy(probs, labels, ks=(1, 5))
    per_class = per_class_accuracy(probs, labels, num_classes)
    return {"top1": acc[1], "top5": acc[5], "mean_class_acc": float(torch.nanmean(per_class)),
            "videos_scored": len(video_ids), "videos_listed": len(records),
            "video_ids": video_ids, "probs": probs, "labels": labels, "per_class": per_class,
            "confusion": confusion_matrix(probs, labels, num_classes)}


def write_report(result: dict, records: list[VideoRecord], out_dir, class_names: list[str] | None = None,
                 prefix: str = "test") -> dict:
    """Write ``{prefix}_metrics.json``, ``per_class.csv``, ``predictions.csv``, ``confusion.png`` (without
    matplotlib, print why not); return the JSON-able summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = result["probs"].shape[1]
    names = class_names or [str(k) for k in range(num_classes)]
    summary = {k: result[k] for k in ("top1", "top5", "mean_class_acc", "videos_scored", "videos_listed")}
    summary["videos_unreadable"] = result["videos_listed"] - result["videos_scored"]
    (out / f"{prefix}_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    counts = result["confusion"].sum(dim=1)
    rows = [f"{k},{names[k]},{int(counts[k])},{float(result['per_class'][k]):.4f}\n" for k in range(num_classes)]
    (out / "per_class.csv").write_text("class,name,videos,top1\n" + "".join(rows))
    (out / "predictions.csv").write_text(predictions_csv(result, records, names))
    if skipped := save_confusion_png(result["confusion"], out / "confusion.png", class_names):
        print(skipped, flush=True)
    return summary


def predictions_csv(result: dict, records: list[VideoRecord], names: list[str]) -> str:
    """One row per scored video: ``path,label,label_name,top5,top5_names,top5_probs`` (the top-5 ids and their
    merged softmax probabilities space-separated, the names ``|``-separated; quoted where a field needs it)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "label_name", "top5", "top5_names", "top5_probs"])
    probs, top = result["probs"].topk(min(5, result["probs"].shape[1]), dim=1)
    for v, y, p, t in zip(result["video_ids"], result["labels"], probs.tolist(), top.tolist()):
        writer.writerow([records[int(v)].path, int(y), names[int(y)], " ".join(map(str, t)),
                         "|".join(names[c] for c in t), " ".join(f"{x:.4f}" for x in p)])
    return text.getvalue()


def build_classifier(cfg, device: torch.device):
    """The classifier of ``cfg`` (evaluation or prediction) with ``cfg.weights`` loaded, on ``device``; returns
    ``(model, load report)``. A ``transformers`` VideoMAE folder builds the model from its own config (architecture,
    LayerNorm epsilons). Raises ``ValueError`` for weights that do not fit."""
    from vmae2 import transformers_io
    from vmae2.models import create_model

    if transformers_io.is_transformers_source(cfg.weights):
        model = transformers_io.load_model(cfg.weights, num_frames=cfg.num_frames, img_size=cfg.input_size,
                                           tubelet_size=cfg.tubelet_size, attn_backend=cfg.attn_backend)
        if transformers_io.kind_of_model(model) != "classification" or model.num_classes != cfg.nb_classes:
            raise ValueError(f"--weights {cfg.weights} is not a classifier of --nb_classes {cfg.nb_classes} classes")
        return model.to(device), "every tensor from the transformers folder"
    model = create_model(cfg.model, num_classes=cfg.nb_classes, num_frames=cfg.num_frames, img_size=cfg.input_size,
                         tubelet_size=cfg.tubelet_size, attn_backend=cfg.attn_backend, pool=cfg.pool,
                         pos_embed_grid=cfg.pretrain_grid() or stored_pos_grid(cfg.weights))
    report = load_classifier_weights(model, cfg.weights, head_index=getattr(cfg, "head_index", None), strict=True)
    return model.to(device), report


def multi_view_config(cfg) -> ClassifyConfig:
    """The multi-view test protocol of ``cfg``."""
    return ClassifyConfig(clip_len=cfg.num_frames, rate=cfg.sampling_rate, input_size=cfg.input_size,
                          short_side_size=cfg.short_side_size, sparse=cfg.sparse_sample,
                          num_segments=cfg.test_num_segment, num_crops=cfg.test_num_crop, num_classes=cfg.nb_classes)


def read_class_names(cfg) -> list[str] | None:
    """The names of ``cfg.class_names``, checked against ``cfg.nb_classes``; None without a file."""
    names = list(LabelMap.read(cfg.class_names).names) if cfg.class_names else None
    if names is not None and len(names) != cfg.nb_classes:
        raise ValueError(f"--class_names {cfg.class_names} has {len(names)} classes, --nb_classes is {cfg.nb_classes}")
    return names


@rundir.locked("python -m vmae2.evaluate")
def run(cfg: EvaluateConfig) -> int:
    """Evaluate ``cfg.weights`` on ``cfg.data_path``; exit code 0, or 2 for bad lists / weights."""
    try:
        d = setup_distributed("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        device = resolve_device(cfg.device, d)
        names = read_class_names(cfg)
        records = read_finetune_csv(cfg.data_path, data_root=cfg.data_root, num_classes=cfg.nb_classes,
                                    step=cfg.sampling_rate, class_names=names)
        check_found(records, cfg.data_path, cfg.data_root)
        model, report = build_classifier(cfg, device)
        config = multi_view_config(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if d.is_main:
        print(f"loaded {cfg.weights}: {report}", flush=True)
        print(f"{cfg.model}, {cfg.nb_classes} classes; clips of {cfg.num_frames} frames x {cfg.input_size} px (short "
              f"side {cfg.short_side_size}), sampling rate {cfg.sampling_rate}; {cfg.test_num_segment}x"
              f"{cfg.test_num_crop} views per video; {len(records)} videos from {cfg.data_path}", flush=True)
    loader = ClassifyLoader(records, mode="test", batch_size=cfg.batch_size, config=config, rank=d.rank,
                            world_size=d.world_size, num_workers=cfg.num_workers, device=device,
                            quarantine=Path(cfg.output_dir) / "quarantine.tsv")
    amp = AMP_DTYPES[cfg.run_precision(device.type)]
    result = score(predict(model, loader, amp), records, cfg.nb_classes, d)
    if d.is_main:
        summary = write_report(result, records, cfg.output_dir, names)
        bad = loader.ledger.num_bad_files
        print(f"{cfg.test_num_segment}x{cfg.test_num_crop} views: top-1 {summary['top1']:.2f}  top-5 "
              f"{summary['top5']:.2f}  mean class {summary['mean_class_acc']:.2f}  ({summary['videos_scored']} of "
              f"{summary['videos_listed']} videos scored" + (f"; {bad} unreadable on rank 0, see quarantine.tsv"
                                                             if bad else "") + f"); report in {cfg.output_dir}")
    if d.world_size > 1:
        finish_distributed()
    return 0
