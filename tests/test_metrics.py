import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from oracle.tolerances import assert_close_fp

from vmae2.data.lists import shard_indices
from vmae2.metrics import (
    ViewPredictions,
    confusion_figure,
    confusion_matrix,
    gather_views,
    merge_views,
    per_class_accuracy,
    save_confusion_png,
    topk_accuracy,
)

# -- the official merge, re-stated ------------------------------------------------------------------------


def _softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def official_merge(rank_lines):
    """Plain re-statement of the official ``engine_for_finetuning.merge`` + ``compute_video``.

    ``rank_lines``: per rank (in rank order, as ``0.txt, 1.txt, ...`` are read), a list of lines
    ``(name, logits, label, chunk_nb, split_nb)`` with ``chunk_nb``/``split_nb`` strings, as parsed from the
    files. Returns ``(top1 %, top5 %, {name: mean softmax})``.
    """
    dict_feats, dict_label, dict_pos = {}, {}, {}
    for lines in rank_lines:
        for name, logits, label, chunk_nb, split_nb in lines:
            data = _softmax(np.asarray(logits, dtype=np.float64))
            if name not in dict_feats:
                dict_feats[name] = []
                dict_label[name] = 0
                dict_pos[name] = []
            if chunk_nb + split_nb in dict_pos[name]:
                continue
            dict_feats[name].append(data)
            dict_pos[name].append(chunk_nb + split_nb)
            dict_label[name] = label
    top1, top5, means = [], [], {}
    for name in dict_feats:
        feat = np.mean(dict_feats[name], axis=0)
        pred = np.argmax(feat)
        top1.append((int(pred) == int(dict_label[name])) * 1.0)
        top5.append((int(dict_label[name]) in np.argsort(-feat)[:5]) * 1.0)
        means[name] = feat
    return float(np.mean(top1)) * 100, float(np.mean(top5)) * 100, means


def _random_eval(seed, num_videos=23, chunks=5, crops=3, k=12, world=3):
    """Random per-rank view outputs with repeats (sampler padding, and repeats carrying different logits)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (num_videos,), generator=g)
    rows = [(v, c, s) for v in range(num_videos) for c in range(chunks) for s in range(crops)
            if not (v % 7 == 3 and (c + s) % 4 == 0)]  # some videos miss some views
    rows = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
    rows += rows[:5]  # DistributedSampler-style padding (same views again)
    logits = torch.randn(len(rows), k, generator=g, dtype=torch.float64) * 3
    shards = [shard_indices(np.arange(len(rows)), r, world) for r in range(world)]
    return rows, logits, labels, shards


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_views_matches_official_merge(seed):
    crops = 3
    rows, logits, labels, shards = _random_eval(seed, crops=crops)
    rank_lines = [[(f"vid{rows[i][0]}", logits[i].numpy(), int(labels[rows[i][0]]), str(rows[i][1]), str(rows[i][2]))
                   for i in shard] for shard in shards]
    top1, top5, means = official_merge(rank_lines)
    order = np.concatenate(shards)  # ranks concatenated in rank order
    video = torch.tensor([rows[i][0] for i in order])
    view = torch.tensor([rows[i][1] * crops + rows[i][2] for i in order])
    for dtype in (torch.float64, torch.float32):
        ids, probs = merge_views(video, view, logits[order].to(dtype), num_videos=len(labels))
        assert torch.equal(ids, torch.arange(len(labels)))
        acc = topk_accuracy(probs, labels[ids], ks=(1, 5))
        assert acc[1] == pytest.approx(top1) and acc[5] == pytest.approx(top5)
        expect = torch.tensor(np.stack([means[f"vid{v}"] for v in ids.tolist()]))
        assert_close_fp(probs.double(), expect, dtype)  # against the official numpy (fp64) merge


def test_merge_views_first_occurrence_and_distinct_views():
    # video 0: view 0 twice (the second row must be ignored), view 1 once -> mean of 2 views, not 3
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-5.0, 5.0], [1.0, 1.0]])
    video = torch.tensor([0, 0, 0, 4])
    view = torch.tensor([0, 1, 0, 7])
    ids, probs = merge_views(video, view, logits)
    assert ids.tolist() == [0, 4]
    sm = torch.softmax(logits, 1)
    assert_close_fp(probs[0], (sm[0] + sm[1]) / 2)
    assert_close_fp(probs[1], sm[3])
    assert_close_fp(probs.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match=r"3 of 5 videos have no prediction \(first: \[1, 2, 3\]\)"):
        merge_views(video, view, logits, num_videos=5)
    with pytest.raises(ValueError, match="video index 4 >= num_videos=3"):
        merge_views(video, view, logits, num_videos=3)
    with pytest.raises(ValueError, match="must be >= 0"):
        merge_views(torch.tensor([-1]), torch.tensor([0]), logits[:1])
    with pytest.raises(ValueError, match=r"view_index must be \[N\]"):
        merge_views(video, view[:3], logits)
    with pytest.raises(ValueError, match="integer"):
        merge_views(video.float(), view, logits)
    # fp16 logits are merged in float32
    _, p16 = merge_views(video, view, logits.half())
    assert p16.dtype == torch.float32


def test_view_predictions_accumulator():
    rows, logits, labels, _ = _random_eval(3, world=1)
    video = torch.tensor([r[0] for r in rows])
    view = torch.tensor([r[1] * 3 + r[2] for r in rows])
    acc = ViewPredictions()
    for chunk in torch.arange(len(rows)).split(7):
        acc.add(video[chunk], view[chunk], logits[chunk].float())
    assert len(acc) == len(rows)
    ids, probs = acc.compute(num_videos=len(labels))
    ids2, probs2 = merge_views(video, view, logits.float())
    assert torch.equal(ids, ids2) and torch.equal(probs, probs2)  # chunks concatenated, then the same merge
    assert torch.equal(acc.gather()[1], probs)  # no process group: same as compute
    with pytest.raises(ValueError, match="classes"):
        acc.add(video[:2], view[:2], torch.zeros(2, 3))
    acc.reset()
    with pytest.raises(ValueError, match="no predictions"):
        acc.compute()


# -- accuracies, confusion matrix --------------------------------------------------------------------------

def test_topk_and_per_class_and_confusion():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0],   # true 0: top1
                          [0.1, 0.2, 0.3, 0.4],   # true 1: rank 3
                          [0.5, 0.1, 0.4, 0.0],   # true 2: rank 2
                          [0.05, 0.1, 0.15, 0.7]])  # true 0: rank 4
    labels = torch.tensor([0, 1, 2, 0])
    acc = topk_accuracy(probs, labels, ks=(1, 2, 3, 10))
    assert acc == {1: 25.0, 2: 50.0, 3: 75.0, 10: 100.0}
    cm = confusion_matrix(probs, labels, 5)
    assert cm.dtype == torch.long and cm.shape == (5, 5)
    assert cm[0, 0] == 1 and cm[0, 3] == 1 and cm[1, 3] == 1 and cm[2, 0] == 1 and cm.sum() == 4
    assert torch.equal(confusion_matrix(probs.argmax(1), labels, 5), cm)
    pc = per_class_accuracy(probs, labels, 5)
    assert pc[:3].tolist() == [50.0, 0.0, 0.0] and torch.isnan(pc[3:]).all()
    assert float(torch.nanmean(pc)) == pytest.approx(50 / 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        confusion_matrix(torch.tensor([0]), torch.tensor([3]), 3)


def png_pixel(png: np.ndarray, fig, ax, x: float, y: float) -> np.ndarray:
    """The RGB of ``png`` (``fig`` saved, ``[H, W, 3]``) at the data point ``(x, y)`` of ``ax``."""
    px, py = ax.transData.transform((x, y))
    return png[int(round(fig.bbox.height) - py), int(px)]


def test_save_confusion_png(tmp_path):
    from matplotlib import colormaps

    cm = torch.tensor([[5, 0, 0], [1, 3, 0], [0, 0, 0]])
    names = ["abseiling", "air drumming", "zumba"]
    p = tmp_path / "sub" / "cm.png"
    assert save_confusion_png(cm, p, class_names=names) is None
    png = np.asarray(Image.open(p).convert("RGB")).astype(float)
    fig, _ = confusion_figure(cm, names)
    fig.canvas.draw()  # the layout the PNG was saved with
    ax = fig.axes[0]
    assert png.shape[:2] == (round(fig.bbox.height), round(fig.bbox.width)) == (560, 560)  # MIN_SIDE (> 40 K + 320)
    assert len(fig.axes) == 2  # the heat map and its colour bar
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0 abseiling", "1 air drumming", "2 zumba"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    # each cell's centre: viridis of the row fraction (5/5; 1/4 and 3/4; an empty row stays 0)
    fractions = {(0, 0): 1.0, (0, 1): 0.0, (1, 0): 0.25, (1, 1): 0.75, (1, 2): 0.0, (2, 2): 0.0}
    for (true, pred), frac in fractions.items():
        want = np.array(colormaps["viridis"](frac)[:3]) * 255
        assert np.abs(png_pixel(png, fig, ax, pred, true) - want).max() <= 3, (true, pred, frac)
    # many classes: the image is capped at max_size, no tick labels
    k = 300
    assert save_confusion_png(torch.eye(k, dtype=torch.long) * 3, tmp_path / "big.png", max_size=256) is None
    with Image.open(tmp_path / "big.png") as big:
        assert big.size == (256, 256)
    fig, _ = confusion_figure(torch.eye(k, dtype=torch.long), max_size=256)
    assert len(fig.axes[0].get_xticks()) == len(fig.axes[0].get_yticks()) == 0
    with pytest.raises(ValueError, match="square"):
        save_confusion_png(torch.zeros(2, 3), tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 class names for a 3x3 matrix"):
        save_confusion_png(cm, tmp_path / "x.png", class_names=names[:2])


def test_confusion_png_of_two_classes_is_readable(tmp_path):
    """Two classes (a small user data set): a picture of at least 560 px whose title and labels lie inside it."""
    assert save_confusion_png(torch.tensor([[3, 1], [0, 4]]), tmp_path / "cm.png", class_names=["a", "b"]) is None
    with Image.open(tmp_path / "cm.png") as img:
        assert min(img.size) >= 560
    fig, _ = confusion_figure(torch.tensor([[3, 1], [0, 4]]), ["a", "b"])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    for text in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_yticklabels()]:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, text
    assert ax.title.get_fontsize() >= 9


def test_save_confusion_png_without_matplotlib(tmp_path, no_matplotlib):
    reason = save_confusion_png(torch.eye(3), tmp_path / "confusion.png")
    assert reason.startswith("confusion.png skipped: matplotlib is not importable") and "vmae2[plot]" in reason
    assert "\n" not in reason and not (tmp_path / "confusion.png").exists()
    with pytest.raises(ValueError, match="square"):  # bad input is refused all the same
        save_confusion_png(torch.zeros(2, 3), tmp_path / "x.png")


# -- distributed gather ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank, world, port, data, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        video, view, logits, num_videos = data
        idx = torch.from_numpy(shard_indices(np.arange(len(video)), rank, world))  # padded with repeats
        if rank == 0:
            idx = torch.cat([idx, idx[:2]])  # unequal row counts across ranks
        acc = ViewPredictions()
        for chunk in idx.split(4):
            acc.add(video[chunk], view[chunk], logits[chunk])
        result = {"acc": acc.gather(num_videos=num_videos),
                  "fn": gather_views(video[idx], view[idx], logits[idx].half())}
        # a rank with no predictions still takes part
        empty = ViewPredictions()
        if rank == 1:
            empty.add(video, view, logits)
        result["empty"] = empty.gather(num_videos=num_videos)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gather_views_two_gloo_ranks(tmp_path):
    # 2 ranks, an odd number of views: DistributedSampler-style padding repeats the first view on rank 1.
    g = torch.Generator().manual_seed(5)
    num_videos, views, k = 9, 5, 7
    pairs = torch.tensor([(v, w) for v in range(num_videos) for w in range(views)])
    pairs = pairs[torch.randperm(len(pairs), generator=g)]
    video, view = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
    logits = torch.randn(len(pairs), k, generator=g)
    assert len(pairs) % 2 == 1
    mp.spawn(_gather_worker, args=(2, _free_port(), (video, view, logits, num_videos), str(tmp_path)), nprocs=2,
             join=True)
    ids, probs = merge_views(video, view, logits, num_videos=num_videos)
    _, probs16 = merge_views(video, view, logits.half())
    for rank in range(2):
        res = torch.load(tmp_path / f"{rank}.pt")
        for key, expect in (("acc", probs), ("empty", probs), ("fn", probs16)):
            got_ids, got = res[key]
            assert torch.equal(got_ids, ids), key
            assert_close_fp(got, expect, msg=key)
