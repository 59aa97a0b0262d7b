"""``python -m vmae2.evaluate``: multi-view testing of a classification checkpoint (ours or official).

Each video gives ``test_num_segment x test_num_crop`` views (official 5x3 for Kinetics, 2x3 for SSv2); each
view's softmax is averaged per video (official ``merge``), then top-1/top-5, per-class accuracy and a
confusion matrix are reported. With ``torchrun`` every rank scores its share and the views are gathered and
de-duplicated before merging, so N processes give the numbers of one.

Outputs in ``--output_dir``: ``test_metrics.json``, ``per_class.csv``, ``predictions.csv`` (video, label,
top-5), ``confusion.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vmae2.checkpoint import load_classifier_weights, stored_pos_grid
from vmae2.data.classify import ClassifyConfig, ClassifyLoader
from vmae2.data.labels import LabelMap
from vmae2.data.lists import VideoRecord, read_finetune_csv
from vmae2.metrics import ViewPredictions, confusion_matrix, per_class_accuracy, save_confusion_png, topk_accuracy
from vmae2.runtime import Dist, finish_distributed, resolve_device, setup_distributed


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
    """Write ``{prefix}_metrics.json``, ``per_class.csv``, ``predictions.csv``, ``confusion.png``; return the
    JSON-able summary."""
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
    top = result["probs"].topk(min(5, num_classes), dim=1).indices
    lines = [f"{records[int(v)].path},{int(y)},{' '.join(str(int(c)) for c in t)}\n"
             for v, y, t in zip(result["video_ids"], result["labels"], top)]
    (out / "predictions.csv").write_text("path,label,top5\n" + "".join(lines))
    save_confusion_png(result["confusion"], out / "confusion.png", class_names)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vmae2.evaluate", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="classification model, e.g. vit_base_patch16_224")
    p.add_argument("--weights", required=True, help="fine-tuned checkpoint (.pth official or ours, .safetensors)")
    p.add_argument("--data_path", required=True,
                   help="test list (official fine-tune CSV: `path label`, or `folder total_frames label`)")
    p.add_argument("--nb_classes", type=int, required=True)
    p.add_argument("--head_index", default=None, help="official label_710to{400,600,700}.json: evaluate a "
                                                      "710-class checkpoint on those classes")
    p.add_argument("--class_names", default=None, help="class-name file for the report")
    p.add_argument("--data_root", default="")
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling_rate", type=int, default=4)
    p.add_argument("--sparse_sample", action="store_true", help="TSN sampling (SSv2)")
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--short_side_size", type=int, default=224)
    p.add_argument("--tubelet_size", type=int, default=2)
    p.add_argument("--init_num_frames", type=int, default=None,
                   help="frames the encoder was pretrained on, if the weights were fine-tuned on another grid "
                        "(default: what vmae2.finetune stored in the .safetensors metadata, else --num_frames)")
    p.add_argument("--init_input_size", type=int, default=None, help="pretraining input size (as --init_num_frames)")
    p.add_argument("--test_num_segment", type=int, default=5)
    p.add_argument("--test_num_crop", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=4, help="videos per batch (each gives all its views)")
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: fp16 autocast on GPU (official), fp32 on CPU")
    p.add_argument("--attn_backend", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--output_dir", default="output/evaluate")
    return p


def main(argv: list[str] | None = None) -> int:
    from vmae2.models import create_model

    args = build_parser().parse_args(argv)
    try:
        d = setup_distributed("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
        device = resolve_device(args.device, d)
        records = read_finetune_csv(args.data_path, data_root=args.data_root, num_classes=args.nb_classes,
                                    step=args.sampling_rate)
        names = list(LabelMap.read(args.class_names).names) if args.class_names else None
        if names is not None and len(names) != args.nb_classes:
            raise ValueError(f"--class_names {args.class_names} has {len(names)} classes, --nb_classes is "
                             f"{args.nb_classes}")
        grid = stored_pos_grid(args.weights)
        if args.init_num_frames or args.init_input_size:
            patch = 14 if "patch14" in args.model else 16
            size = args.init_input_size or args.input_size
            grid = ((args.init_num_frames or args.num_frames) // args.tubelet_size, size // patch, size // patch)
        model = create_model(args.model, num_classes=args.nb_classes, num_frames=args.num_frames,
                             img_size=args.input_size, tubelet_size=args.tubelet_size, attn_backend=args.attn_backend,
                             pos_embed_grid=grid)
        report = load_classifier_weights(model, args.weights, head_index=args.head_index, strict=True)
        config = ClassifyConfig(clip_len=args.num_frames, rate=args.sampling_rate, input_size=args.input_size,
                                short_side_size=args.short_side_size, sparse=args.sparse_sample,
                                num_segments=args.test_num_segment, num_crops=args.test_num_crop,
                                num_classes=args.nb_classes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.to(device)
    if d.is_main:
        print(f"loaded {args.weights}: {report}", flush=True)
    loader = ClassifyLoader(records, mode="test", batch_size=args.batch_size, config=config, rank=d.rank,
                            world_size=d.world_size, num_workers=args.num_workers, device=device,
                            quarantine=Path(args.output_dir) / "quarantine.tsv")
    precision = args.precision if args.precision != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    result = score(predict(model, loader, amp), records, args.nb_classes, d)
    if d.is_main:
        summary = write_report(result, records, args.output_dir, names)
        bad = loader.ledger.num_bad_files
        print(f"{args.test_num_segment}x{args.test_num_crop} views: top-1 {summary['top1']:.2f}  top-5 "
              f"{summary['top5']:.2f}  mean class {summary['mean_class_acc']:.2f}  ({summary['videos_scored']} of "
              f"{summary['videos_listed']} videos scored" + (f"; {bad} unreadable on rank 0, see quarantine.tsv"
                                                             if bad else "") + f"); report in {args.output_dir}")
    if d.world_size > 1:
        finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
