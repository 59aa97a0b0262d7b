"""Multi-view evaluation: merge per-view logits into per-video scores as the official ``merge`` does, accuracies,
a confusion matrix (and its PNG, with matplotlib), and the all-rank gather for distributed evaluation.

Official behaviour (``engine_for_finetuning.py`` ``final_test`` + ``merge``): every test view (temporal chunk ×
spatial crop) is one sample; each rank writes its views' logits; ``merge`` softmaxes each view, groups the views
by video, **skips a view whose (chunk, split) was already seen for that video** (``DistributedSampler`` pads the
last batch with repeats) and averages the stored probabilities; top-1/top-5 are then averaged over videos.

Conventions here: a view is identified by ``(video_index, view_index)`` integers (e.g. ``view = chunk *
num_crops + crop``); the average is over a video's **distinct** views (the first occurrence of a repeated pair
is used, in the order given; :func:`gather_views` concatenates ranks in rank order, like the official reading
``0.txt, 1.txt, ...``). Accuracies are in percent, like the official printout.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from vmae2 import plot

__all__ = ["ViewPredictions", "merge_views", "gather_views", "topk_accuracy", "per_class_accuracy",
           "confusion_matrix", "confusion_figure", "save_confusion_png"]


def _check_views(video_index, view_index, logits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shape/dtype checks only (no host sync)."""
    logits = torch.as_tensor(logits)
    video = torch.as_tensor(video_index)
    view = torch.as_tensor(view_index)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, num_classes], got shape {tuple(logits.shape)}")
    for name, t in (("video_index", video), ("view_index", view)):
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
        if t.ndim != 1 or t.shape[0] != logits.shape[0]:
            raise ValueError(f"{name} must be [N] with N = {logits.shape[0]} rows of logits, got shape "
                             f"{tuple(t.shape)}")
    return video, view, logits


def merge_views(video_index, view_index, logits, num_videos: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video class probabilities from per-view logits (official ``merge``).

    ``video_index``/``view_index``: ``[N]`` integers >= 0; ``logits``: ``[N, K]``. Each row is softmaxed (in
    float32, or float64 for float64 logits); a repeated ``(video, view)`` pair counts once (its first row); a
    video's probabilities are the mean over its distinct views. Returns ``(video_ids [V] int64, ascending;
    probs [V, K])`` on the logits' device. With ``num_videos``, ids must lie in ``[0, num_videos)`` and every
    video must have a view (else an error: an evaluation sampler must not drop samples), so
    ``video_ids == arange(num_videos)``.
    """
    video, view, logits = _check_views(video_index, view_index, logits)
    n = logits.shape[0]
    if n == 0:
        raise ValueError("no predictions to merge")
    dev = logits.device
    video, view = video.to(dev, torch.long), view.to(dev, torch.long)
    if int(video.min()) < 0 or int(view.min()) < 0:
        raise ValueError("video_index and view_index must be >= 0")
    if num_videos is not None and int(video.max()) >= num_videos:
        raise ValueError(f"video index {int(video.max())} >= num_videos={num_videos}")
    probs = torch.softmax(logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), dim=1)
    key = video * (int(view.max()) + 1) + view
    uniq, inv = torch.unique(key, return_inverse=True)
    first = torch.full((uniq.numel(),), n, dtype=torch.long, device=dev)
    first.scatter_reduce_(0, inv, torch.arange(n, device=dev), reduce="amin")
    ids, vinv = torch.unique(video[first], return_inverse=True)
    sums = torch.zeros(ids.numel(), logits.shape[1], dtype=probs.dtype, device=dev).index_add_(0, vinv, probs[first])
    counts = torch.bincount(vinv, minlength=ids.numel())
    if num_videos is not None and ids.numel() != num_videos:
        have = torch.zeros(num_videos, dtype=torch.bool, device=dev)
        have[ids] = True
        missing = torch.nonzero(~have).flatten()
        raise ValueError(f"{missing.numel()} of {num_videos} videos have no prediction (first: "
                         f"{missing[:8].tolist()}); the evaluation sampler must cover every sample (drop_last=False)")
    return ids, sums / counts[:, None].to(sums.dtype)


def _comm_device(group, like: torch.Tensor) -> torch.device:
    backend = str(dist.get_backend(group))
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if like.is_cuda and "nccl" in backend:
        return like.device
    return torch.device("cpu")


def gather_views(video_index, view_index, logits, *, num_videos: int | None = None, group=None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`merge_views` over the views of every rank (all ranks get the result).

    Each rank passes its own rows (any count; with none, logits may be ``[0, 0]``); rows are gathered with a
    padded ``all_gather`` of tensors (works on gloo/CPU and NCCL/GPU), concatenated in rank order, and merged
    with de-duplication, so the repeats ``DistributedSampler`` pads with are counted once. Logits travel as
    float32 (float64 kept). Without an initialised process group (or with one rank) this is :func:`merge_views`.
    """
    video, view, logits = _check_views(video_index, view_index, logits)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return merge_views(video, view, logits, num_videos)
    world = dist.get_world_size(group)
    dev = _comm_device(group, logits)
    meta = torch.tensor([logits.shape[0], logits.shape[1]], dtype=torch.long, device=dev)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=group)
    sizes, widths = zip(*(m.tolist() for m in metas))
    if len({w for s, w in zip(sizes, widths) if s > 0}) > 1:
        raise ValueError(f"ranks disagree on the number of classes: {list(widths)}")
    m = max(sizes)
    if m == 0:
        raise ValueError("no predictions on any rank")
    k = max(w for s, w in zip(sizes, widths) if s > 0)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    n = logits.shape[0]
    idx = torch.zeros(m, 2, dtype=torch.long, device=dev)
    lg = torch.zeros(m, k, dtype=dtype, device=dev)
    if n:
        idx[:n, 0] = video.to(dev, torch.long)
        idx[:n, 1] = view.to(dev, torch.long)
        lg[:n] = logits.to(dev, dtype)
    idxs = [torch.empty_like(idx) for _ in range(world)]
    lgs = [torch.empty_like(lg) for _ in range(world)]
    dist.all_gather(idxs, idx, group=group)
    dist.all_gather(lgs, lg, group=group)
    all_idx = torch.cat([t[:s] for t, s in zip(idxs, sizes)])
    all_lg = torch.cat([t[:s] for t, s in zip(lgs, sizes)])
    return merge_views(all_idx[:, 0], all_idx[:, 1], all_lg, num_videos)


class ViewPredictions:
    """Collects ``(video_index, view_index, logits)`` batches during evaluation; merges them at the end.

    :meth:`add` never waits for the device: by default CUDA tensors are copied into pinned host buffers with
    ``non_blocking=True`` (an event is recorded per batch and waited on only in :meth:`tensors`); with
    ``on_device=True`` they stay on the device (a clone), and the merge runs there. CPU tensors are cloned.
    Logits keep their dtype until the merge (fp16 halves the memory: ``N_views * K * 2`` bytes).
    """

    def __init__(self, *, on_device: bool = False):
        self.on_device = on_device
        self.reset()

    def reset(self) -> None:
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._events: list = []

    def __len__(self) -> int:
        return sum(p[2].shape[0] for p in self._parts)

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if not t.is_cuda or self.on_device:
            return t.clone()
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        return buf

    def add(self, video_index, view_index, logits) -> None:
        video, view, logits = _check_views(video_index, view_index, logits)
        if self._parts and logits.shape[1] != self._parts[0][2].shape[1]:
            raise ValueError(f"logits have {logits.shape[1]} classes, earlier batches {self._parts[0][2].shape[1]}")
        self._parts.append((self._keep(video), self._keep(view), self._keep(logits)))
        if any(t.is_cuda for t in (video, view, logits)) and not self.on_device:
            ev = torch.cuda.Event()
            ev.record()
            self._events.append(ev)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(video_index [N], view_index [N], logits [N, K])`` of everything added (waits for pending copies)."""
        if not self._parts:
            raise ValueError("no predictions were added")
        for ev in self._events:
            ev.synchronize()
        self._events.clear()
        dev = self._parts[0][2].device
        video, view, logits = (torch.cat([p[i].to(dev) for p in self._parts]) for i in range(3))
        return video, view, logits

    def compute(self, num_videos: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`merge_views` of this process's predictions."""
        return merge_views(*self.tensors(), num_videos)

    def gather(self, num_videos: int | None = None, group=None) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`gather_views` of every rank's predictions (a collective: call it on every rank; a rank with no
        predictions still takes part)."""
        if self._parts:
            return gather_views(*self.tensors(), num_videos=num_videos, group=group)
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("no predictions were added")
        empty = torch.zeros(0, dtype=torch.long)
        return gather_views(empty, empty, torch.zeros(0, 0), num_videos=num_videos, group=group)


# -- metrics ----------------------------------------------------------------------------------------------

def _predictions(scores: torch.Tensor) -> torch.Tensor:
    scores = torch.as_tensor(scores)
    if scores.ndim == 2:
        return scores.argmax(dim=1)
    if scores.ndim == 1 and not scores.dtype.is_floating_point:
        return scores.long()
    raise ValueError(f"expected scores [N, K] or integer predictions [N], got {scores.dtype} {tuple(scores.shape)}")


def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """``{k: percent of rows whose label is among the k highest scores}`` (official top-1/top-5; ``k`` larger
    than the class count counts every row). Ties are broken by ``torch.topk``."""
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels).to(probs.device).long()
    if probs.ndim != 2 or labels.shape != probs.shape[:1] or probs.shape[0] == 0:
        raise ValueError(f"need probs [N, K] and labels [N] with N > 0, got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    maxk = min(max(ks), probs.shape[1])
    hit = probs.topk(maxk, dim=1).indices == labels[:, None]
    return {k: float(hit[:, : min(k, maxk)].any(dim=1).double().mean()) * 100.0 for k in ks}


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``LongTensor [K, K]``: ``cm[true, predicted]`` counts. ``pred``: integer predictions ``[N]`` or scores
    ``[N, K]`` (argmax)."""
    pred = _predictions(pred)
    labels = torch.as_tensor(labels).to(pred.device).long()
    if labels.shape != pred.shape:
        raise ValueError(f"pred and labels must have the same length, got {tuple(pred.shape)}, {tuple(labels.shape)}")
    for name, t in (("labels", labels), ("predictions", pred)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes}), got [{int(t.min())}, {int(t.max())}]")
    flat = torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).cpu()


def per_class_accuracy(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``float64 [K]``: top-1 accuracy (percent) of the samples of each true class; **NaN** for a class with no
    samples (so ``torch.nanmean`` of it is the mean class accuracy over the classes present)."""
    cm = confusion_matrix(probs, labels, num_classes).double()
    total = cm.sum(dim=1)
    return torch.where(total > 0, cm.diagonal() / total.clamp(min=1) * 100.0, torch.full_like(total, float("nan")))


def _row_normalised(cm) -> np.ndarray:
    a = torch.as_tensor(cm).detach().cpu().double().numpy()
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"cm must be a square [K, K] matrix, got shape {a.shape}")
    rows = a.sum(axis=1, keepdims=True)
    return np.divide(a, rows, out=np.zeros_like(a), where=rows > 0)


MIN_SIDE = 560  # pixels: the smallest confusion.png


def confusion_figure(cm: torch.Tensor, class_names: Sequence[str] | None = None, *, max_size: int = 1024):
    """The heat map of ``cm`` (``[K, K]`` counts, rows true, columns predicted): ``(Figure, None)``, or
    ``(None, reason)`` without matplotlib (bad input raises ``ValueError`` either way).

    Each row is divided by its count (rows without samples stay 0) and drawn with matplotlib's ``viridis`` (vmin 0:
    dark purple, vmax 1: yellow) beside a colour bar. The figure is ``min(max_size, max(MIN_SIDE, 40 K + 320))``
    pixels square (100 dpi: a few classes still give a picture that reads at its own size, title inside); tick
    labels (column ids; row ids, with the class names when given) when each class has ~14 pixels.
    """
    norm = _row_normalised(cm)
    k = norm.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}x{k} matrix")
    side = min(max_size, max(MIN_SIDE, 40 * k + 320))
    fig, reason = plot.figure(figsize=(side / 100, side / 100), dpi=100, layout="constrained")
    if fig is None:
        return None, reason
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8).set_label("fraction of the true class", fontsize=9)
    ax.set_title("confusion, row-normalised", fontsize=9)
    if side - 320 >= 14 * k:  # room for the tick labels (the margins take ~320 pixels)
        ax.set_xticks(range(k), [str(i) for i in range(k)], fontsize=8)
        ax.set_yticks(range(k), [f"{i} {n}"[:28] for i, n in enumerate(class_names)] if class_names is not None
                      else [str(i) for i in range(k)], fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted class", fontsize=9)
    ax.set_ylabel("true class", fontsize=9)
    return fig, None


def save_confusion_png(cm: torch.Tensor, path, class_names: Sequence[str] | None = None, *,
                       max_size: int = 1024) -> str | None:
    """Write :func:`confusion_figure` as a PNG at ``path`` and return None; without matplotlib write nothing and
    return the one-line reason (``"confusion.png skipped: matplotlib is not importable (...)"``)."""
    return plot.save(*confusion_figure(cm, class_names, max_size=max_size), path)
