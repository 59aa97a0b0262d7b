"""The run of ``python -m vmae2.predict`` (:func:`run`): multi-view class probabilities of single videos."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import torch

from vmae2 import transformers_io
from vmae2.data.classification.loader import ClassifyLoader
from vmae2.data.lists import VideoRecord, read_list
from vmae2.runs.evaluate import build_classifier, multi_view_config, predict, read_class_names
from vmae2.training.distributed import AMP_DTYPES, Dist, resolve_device

if TYPE_CHECKING:  # the command's config, for annotations only: vmae2.predict names this module's run
    from vmae2.predict import PredictConfig


def top_classes(probs: torch.Tensor, names: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Per video, the ``k`` most probable ``(class name, probability)`` pairs, most probable first."""
    values, ids = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(names[c], p) for c, p in zip(row_ids, row_values)] for row_ids, row_values in
            zip(ids.tolist(), values.tolist())]


def table(paths: list[str], tops: list[list[tuple[str, float]]]) -> str:
    """A plain-text table: one line per video, its classes with their probabilities."""
    width = max(len(p) for p in paths)
    return "\n".join(f"{path:{width}s}  " + "  ".join(f"{name} {p:.3f}" for name, p in top)
                     for path, top in zip(paths, tops))


def _folder_names(cfg: PredictConfig) -> list[str] | None:
    """The class names of a ``transformers`` VideoMAE folder given as the weights (its ``id2label``)."""
    if not transformers_io.is_transformers_source(cfg.weights):
        return None
    names = transformers_io.class_names(cfg.weights)
    return names if names and len(names) == cfg.nb_classes else None


def run(cfg: PredictConfig) -> int:
    """Print the top ``cfg.topk`` classes of every video; exit code 0, or 2 for bad weights / lists."""
    try:
        device = resolve_device(cfg.device, Dist())
        names = read_class_names(cfg) or _folder_names(cfg) or [str(k) for k in range(cfg.nb_classes)]
        paths = list(cfg.videos or [])
        if cfg.data_path:
            paths += [r.path for r in read_list(cfg.data_path, data_root=cfg.data_root, class_names=names)]
        model = build_classifier(cfg, device)[0]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # label 0 is a placeholder: the loader carries a label per video, prediction never reads it
    records = [VideoRecord(p, 0, -1, 0, True, "", cfg.sampling_rate, "predict") for p in paths]
    loader = ClassifyLoader(records, mode="test", batch_size=cfg.batch_size, config=multi_view_config(cfg),
                            num_workers=cfg.num_workers, device=device)
    video_ids, probs = predict(model, loader, AMP_DTYPES[cfg.run_precision(device.type)]).compute()
    scored = [paths[int(i)] for i in video_ids]
    tops = top_classes(probs, names, cfg.topk)
    if cfg.format == "json":
        for path, top in zip(scored, tops):
            print(json.dumps({"path": path, "classes": [n for n, _ in top], "probs": [round(p, 6) for _, p in top]}))
    else:
        print(table(scored, tops))
    for path in sorted(set(paths) - set(scored)):
        print(f"{path}: unreadable, no prediction (see the message above)", file=sys.stderr)
    return 0 if scored else 2
