"""Read the official VideoMAE V2 list files, and mix several lists into one seeded, sharded epoch order.

Formats (one record a line; columns separated by blanks, or by commas when the first record has one):

* pre-training list: ``path start_idx total_frames``. ``total_frames < 0`` (``path 0 -1``) is a video file;
  otherwise ``path`` is a folder of frames ``path/fname_tmpl.format(i + start_idx)``, ``i`` 0-based.
* fine-tune CSV: videos ``path label``; rawframes ``folder total_frames label``. A label is a class id
  (``0 .. num_classes - 1``) or, given the class names (``--class_names``), a class name.

Rules shared by every reader:

* Blank lines and lines whose first non-blank character is ``#`` are skipped, and so is a header line (``path,label``).
* Columns are split from the right, so a path may contain spaces (but not start or end with one). A path whose
  last word is an integer is rejected as ambiguous, since it usually means an extra column (for example a
  VideoMAE V1 ``path start total label`` line).
* ``data_root`` is joined with :func:`os.path.join`: a relative list path becomes ``data_root/path``; an
  absolute path (``/x/y``) or a URI (``s3://...``) is kept as is, ``data_root`` ignored. Relative paths with
  ``data_root=""`` stay relative to the working directory, as in the official code (not to the list file).
* Errors are ``ValueError`` naming the file, the 1-based line number, the line, the expected format and the fix.
  ``python -m vmae2.data.make_lists DIR --out LISTS`` writes every list from a folder of videos.

Hybrid naming rules of the official ``HybridVideoMAE`` (rawframe records only, substring match on the joined
path, SSv2 checked first): ``SomethingV2`` → ``img_{:05}.jpg`` and step ``ssv2_step`` (2: SSv2 frames decoded
at 12 fps; use 4 for 24 fps); ``AVA2.2`` → ``image_{:06}.jpg``, step unchanged. Video records always keep the
caller's step, as in the official code.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = ["VideoRecord", "read_pretrain_list", "read_finetune_csv", "read_list", "check_found", "MixedList",
           "MixedSampler", "rank_slice", "shard_indices", "PRETRAIN_FORMAT", "VIDEO_FORMAT", "RAWFRAMES_FORMAT"]

PRETRAIN_FORMAT = "path start_idx total_frames  (total_frames -1 for a video file)"
VIDEO_FORMAT = "path label"
RAWFRAMES_FORMAT = "folder total_frames label"

_WS = re.compile(r"\s+")
SSV2_TMPL = "img_{:05}.jpg"
AVA_TMPL = "image_{:06}.jpg"


@dataclass(frozen=True)
class VideoRecord:
    """One list entry. ``total == -1`` for a video file (frame count known only after decoding);
    ``label == -1`` when unlabeled; ``fname_tmpl`` is ``""`` for video files."""

    path: str
    start: int
    total: int
    label: int
    is_video: bool
    fname_tmpl: str
    step: int
    source: str

    def frame_path(self, i: int) -> str:
        """Path of 0-based frame ``i`` of a rawframe folder: ``path/fname_tmpl.format(i + start)``."""
        if self.is_video:
            raise ValueError(f"{self.path} is a video file, it has no per-frame paths")
        return os.path.join(self.path, self.fname_tmpl.format(i + self.start))


# -- parsing helpers ------------------------------------------------------------------------------------

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv")


def _join(root: str, path: str) -> str:
    if not root or "://" in path:
        return path
    return os.path.join(root, path)


HEADER_WORDS = {"path", "video", "folder", "file", "filename", "start_idx", "total_frames", "label", "class"}


def _data_lines(path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, stripped_line)`` for every non-blank, non-comment, non-header line."""
    first = True
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                if first and set(line.lower().replace(",", " ").split()) <= HEADER_WORDS:
                    first = False
                    continue
                first = False
                yield n, line


def _separator(path) -> str | None:
    """``","`` when the file's first record holds a comma (a comma-separated list), else ``None`` (blanks)."""
    return next(("," if "," in line else None for _, line in _data_lines(path)), None)


def _words(line: str, sep: str | None) -> list[str]:
    return [w.strip() for w in line.split(sep)] if sep else line.split()


def normalize_name(name: str) -> str:
    """The matching key of a class name: strip, drop one pair of surrounding ``"``/``'``, casefold, ``_`` → space,
    collapse blank runs to one space."""
    s = str(name).strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1]
    return _WS.sub(" ", s.casefold().replace("_", " ")).strip()


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


class _Where:
    """Formats a located error message."""

    def __init__(self, file, n: int, line: str, fmt: str):
        self.file, self.n, self.line, self.fmt = file, n, line, fmt

    def error(self, problem: str) -> ValueError:
        return ValueError(f"{self.file}:{self.n}: {problem}; line: {self.line!r}; expected `{self.fmt}`")


def _split(w: _Where, ncols: int, sep: str | None = None) -> list[str]:
    if sep:
        parts = [p.strip() for p in w.line.rsplit(sep, ncols - 1)]
        if len(parts) < ncols or not all(parts):
            raise w.error(f"expected {ncols} comma-separated columns, found {len(parts)}")
        return parts
    parts = w.line.rsplit(None, ncols - 1)
    if len(parts) < ncols:
        raise w.error(f"expected {ncols} columns, found {len(parts)}")
    words = parts[0].split()
    if len(words) > 1 and _is_int(words[-1]):
        raise w.error(f"too many columns? the path {parts[0]!r} ends with a number; "
                      "paths with spaces are allowed but must not end in an integer word")
    return parts


def _int(w: _Where, name: str, s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise w.error(f"{name} {s!r} is not an integer") from None


def _label(w: _Where, s: str, num_classes: int | None, names: dict[str, int] | None = None) -> int:
    if not _is_int(s):
        if names is None:
            raise w.error(f"label {s!r} is not an integer; a label is a class id 0..num_classes-1, or a class name "
                          "when the class names are given (--class_names FILE, one name a line; python -m "
                          "vmae2.data.make_lists writes classes.txt)")
        if normalize_name(s) not in names:
            raise w.error(f"label {s!r} is not an integer nor one of the {len(names)} class names "
                          f"({', '.join(list(names)[:8])}{' ...' if len(names) > 8 else ''}); fix the line or the "
                          "class-name file")
        return names[normalize_name(s)]
    label = int(s)
    if label < 0:
        raise w.error(f"label {label} is negative; labels must be integers in [0, num_classes)")
    if num_classes is not None and label >= num_classes:
        raise w.error(f"label {label} >= num_classes={num_classes}; labels must be in [0, {num_classes}): "
                      "pass the right num_classes (e.g. 400/600/710/174) or fix the list")
    return label


def _nonempty(records: list, path) -> list:
    if not records:
        raise ValueError(f"{path}: no records (only blank or comment lines)")
    return records


# -- readers ----------------------------------------------------------------------------------------------

def read_pretrain_list(path, *, data_root: str = "", fname_tmpl: str = "img_{:05}.jpg", step: int = 4,
                       hybrid_rules: bool = True, ssv2_step: int = 2, source: str | None = None
                       ) -> list[VideoRecord]:
    """Read an official pre-training list (``path start_idx total_frames``). Labels are ``-1``.

    ``step`` is the temporal stride given to every record (official ``--sampling_rate``); the hybrid rules
    (module docstring; off with ``hybrid_rules=False``) override it for SSv2 rawframes. ``total < 0`` is
    stored as ``-1``. Rawframe folders need ``total >= 1`` and ``start >= 0``. ``source`` defaults to the
    list path.
    """
    src = str(path) if source is None else source
    records, sep = [], _separator(path)
    for n, line in _data_lines(path):
        w = _Where(path, n, line, PRETRAIN_FORMAT)
        p, start_s, total_s = _split(w, 3, sep)
        start, total = _int(w, "start_idx", start_s), _int(w, "total_frames", total_s)
        full = _join(data_root, p)
        if total < 0:
            records.append(VideoRecord(full, start, -1, -1, True, "", step, src))
            continue
        if start < 0:
            raise w.error(f"start_idx {start} is negative")
        if total == 0:
            raise w.error("total_frames 0: a rawframe folder needs at least one frame (use -1 for a video file)")
        tmpl, st = fname_tmpl, step
        if hybrid_rules and "SomethingV2" in full:
            tmpl, st = SSV2_TMPL, ssv2_step
        elif hybrid_rules and "AVA2.2" in full:
            tmpl = AVA_TMPL
        records.append(VideoRecord(full, start, total, -1, False, tmpl, st, src))
    return _nonempty(records, path)


def _detect_finetune_kind(path) -> str:
    sep = _separator(path)
    for n, line in _data_lines(path):
        words = _words(line, sep)
        if len(words) == 2:
            return "video"
        if len(words) == 3 and _is_int(words[1]):
            return "rawframes"
        raise ValueError(f"{path}:{n}: cannot tell a video list (`{VIDEO_FORMAT}`) from a rawframe list "
                         f"(`{RAWFRAMES_FORMAT}`) from line {line!r} ({len(words)} columns); write one of those "
                         "formats (blanks or commas between columns; a path with spaces needs commas, or pass "
                         "kind='video' or kind='rawframes' from Python)")
    raise ValueError(f"{path}: no records (only blank or comment lines)")


def read_finetune_csv(path, *, data_root: str = "", num_classes: int | None = None, kind: str = "auto",
                      fname_tmpl: str = "img_{:05}.jpg", start_idx: int = 1, step: int = 4,
                      source: str | None = None, class_names: Sequence[str] | None = None) -> list[VideoRecord]:
    """Read an official fine-tune CSV: videos ``path label`` or rawframes ``folder total_frames label``.

    ``kind="auto"`` decides from the first record (2 words: video, 3 words: rawframes) and then requires every
    line to have that many words, so paths with spaces need an explicit ``kind`` ("video" or "rawframes").
    Rawframe records get ``start=start_idx`` (official ``RawFrameClsDataset`` default 1, frames
    ``img_00001.jpg`` ...) and ``fname_tmpl``. Labels must be non-negative integers, ``< num_classes`` if
    given; with ``class_names`` (id ``i`` = ``class_names[i]``) a label may also be a class name (matched as
    :func:`normalize_name` does). Columns may be comma-separated (then paths may hold spaces).
    """
    src = str(path) if source is None else source
    names = None
    if class_names is not None:
        names = {normalize_name(c): i for i, c in enumerate(class_names)}
    sep = _separator(path)
    strict = kind == "auto" and sep is None
    if kind == "auto":
        kind = _detect_finetune_kind(path)
    if kind not in ("video", "rawframes"):
        raise ValueError(f"kind must be 'auto', 'video' or 'rawframes', got {kind!r}")
    fmt, ncols = (VIDEO_FORMAT, 2) if kind == "video" else (RAWFRAMES_FORMAT, 3)
    records = []
    for n, line in _data_lines(path):
        w = _Where(path, n, line, fmt)
        if strict and len(line.split()) != ncols:
            raise w.error(f"{len(line.split())} words but the file was detected as {kind} ({ncols} columns) from "
                          "its first record; a path with spaces needs commas between the columns (`path,label`), "
                          "or kind= from Python")
        parts = _split(w, ncols, sep)
        full = _join(data_root, parts[0])
        label = _label(w, parts[-1], num_classes, names)
        if kind == "video":
            records.append(VideoRecord(full, 0, -1, label, True, "", step, src))
        else:
            total = _int(w, "total_frames", parts[1])
            if total <= 0:
                raise w.error(f"total_frames {total} must be >= 1")
            records.append(VideoRecord(full, start_idx, total, label, False, fname_tmpl, step, src))
    return _nonempty(records, path)


def read_list(path, kind: str = "auto", **kwargs) -> list[VideoRecord]:
    """Read any official list. ``kind``: "pretrain", "video", "rawframes" or "auto".

    "auto" looks at the first record: 2 words → fine-tune video CSV; 3 words with integer 2nd and 3rd →
    **pre-training list**. A 3-column fine-tune rawframe CSV (``folder total label``) is indistinguishable
    from a pre-training list, so it is always read as one under "auto": pass ``kind="rawframes"`` for it.
    Anything else (e.g. paths with spaces) needs an explicit kind. ``kwargs`` go to the reader.
    """
    if kind == "auto":
        sep = _separator(path)
        for n, line in _data_lines(path):
            words = _words(line, sep)
            if len(words) == 2:
                kind = "video"
            elif len(words) == 3 and _is_int(words[1]) and _is_int(words[2]):
                kind = "pretrain"
            else:
                raise ValueError(f"{path}:{n}: cannot infer the list kind from {line!r} ({len(words)} columns); "
                                 f"expected a pretraining list (`{PRETRAIN_FORMAT}`) or a fine-tune list "
                                 f"(`{VIDEO_FORMAT}`), blanks or commas between columns. python -m "
                                 "vmae2.data.make_lists DIR --out LISTS writes both from a folder of videos")
            break
        else:
            raise ValueError(f"{path}: no records (only blank or comment lines)")
    if kind == "pretrain":
        kwargs.pop("class_names", None)  # a pretraining list has no labels
        return read_pretrain_list(path, **kwargs)
    if kind in ("video", "rawframes"):
        return read_finetune_csv(path, kind=kind, **kwargs)
    raise ValueError(f"kind must be 'auto', 'pretrain', 'video' or 'rawframes', got {kind!r}")


def read_paths(list_path, data_root: str = "") -> list[VideoRecord]:
    """The records of a list: any list the training readers take (:func:`read_list`: ``path 0 -1``,
    ``path label`` with class ids or class names, blanks or commas, a header line), or one video a line (the whole
    line is the path, spaces kept: a list whose first record is one word or ends with a video extension).
    Relative paths are joined to ``data_root``. ``ValueError`` for an unreadable list or folders of frames."""
    lines = list(_data_lines(list_path))
    if not lines:
        raise ValueError(f"--data_path {list_path} has no records (only blank or comment lines); write one video "
                         f"path a line, or the lists of a folder: python -m vmae2.data.make_lists DIR --out LISTS")
    sep = _separator(list_path)
    first = _words(lines[0][1], sep)
    if len(first) == 1 or lines[0][1].lower().endswith(VIDEO_EXTENSIONS):
        return [VideoRecord(_join(data_root, line), 0, -1, -1, True, "", 1, str(list_path)) for _, line in lines]
    labels = {_words(line, sep)[-1] for _, line in lines} if len(first) == 2 else set()
    records = read_list(list_path, data_root=data_root, class_names=sorted(x for x in labels if not _is_int(x)))
    folders = [r.path for r in records if not r.is_video]
    if folders:
        raise ValueError(f"--data_path {list_path} lists {len(folders)} folders of frames (e.g. {folders[0]!r}: "
                         f"`folder start_idx total_frames` records); extraction decodes video files: list the "
                         f"videos (`path 0 -1`, `path label` or one path a line)")
    return records


def check_found(records: Sequence[VideoRecord], list_path, data_root: str = "", probe: int = 20) -> None:
    """Raise ``ValueError`` when none of the first ``probe`` relative paths of a list exists: the sign of a missing
    or wrong ``--data_root`` (the message says so); single missing files are the loaders' business (quarantine)."""
    first = [r for r in records[:probe] if "://" not in r.path]
    if not first or any(os.path.exists(r.path) for r in first):
        return
    relative = [r for r in first if not os.path.isabs(r.path if not data_root else r.path[len(data_root):].lstrip("/"))]
    where = (f"--data_root {data_root!r}" if data_root else f"the working directory {os.getcwd()} (no --data_root)")
    hint = ("relative paths are joined to --data_root: pass --data_root FOLDER (the folder the list's paths start "
            "from)" if relative else "check the paths")
    raise ValueError(f"{list_path}: none of the first {len(first)} videos exists, e.g. {first[0].path!r} (from "
                     f"{where}); {hint}, or write absolute paths (python -m vmae2.data.make_lists does)")


# -- mixing and sharding ---------------------------------------------------------------------------------

def rank_slice(n: int, rank: int, world_size: int, *, start: int = 0, unit: int | None = None,
               pad: bool = False) -> np.ndarray:
    """The positions (int64) of a global epoch order of ``n`` items that rank ``rank`` of ``world_size`` takes from
    position ``start`` on (the items before it were consumed): ``start + rank``, ``start + rank + W``, ...

    The order ends at ``n`` rounded down to a multiple of ``unit`` (default ``world_size``; training passes its
    global batch, so an epoch is whole optimizer steps), or, with ``pad``, at ``ceil(n / W) * W``, the positions
    past ``n - 1`` wrapping to the start (``DistributedSampler``: every item is seen, some twice). Each step consumes
    a contiguous block of the order whatever ``world_size`` is, so a run resumed on another number of ranks takes
    the rest of the epoch from the consumed offset without skipping or repeating an item. ``start`` must be a
    multiple of ``world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    unit = world_size if unit is None else unit
    if unit % world_size or start % world_size:
        raise ValueError(f"the unit {unit} and the start {start} must be multiples of the world size {world_size}")
    if pad:
        if n == 0:
            raise ValueError("cannot pad an empty sequence")
        return np.arange(start + rank, -(-n // world_size) * world_size, world_size, dtype=np.int64) % n
    return np.arange(start + rank, n // unit * unit, world_size, dtype=np.int64)


def shard_indices(indices: np.ndarray, rank: int, world_size: int, *, drop_last: bool = False) -> np.ndarray:
    """Rank ``rank``'s part of ``indices`` (:func:`rank_slice`), like ``DistributedSampler``: every rank gets the
    same count; the sequence is padded by wrapping around (``drop_last=False``, ``ceil(N / world_size)`` each) or
    its tail dropped (``drop_last=True``, ``N // world_size`` each); rank ``r`` takes positions ``r, r + W, ...``."""
    indices = np.asarray(indices)
    return indices[rank_slice(len(indices), rank, world_size, pad=not drop_last)]


class MixedList:
    """Several record lists sampled in proportion to per-list weights (the paper's hybrid data).

    ``MixedList([(k710, 1.0), (ssv2, 0.25)], num_samples=None, seed=0)``. Records are addressed by a global
    index into :attr:`records` (the lists concatenated in the given order).

    Epoch semantics (:meth:`epoch_indices`):

    * length ``num_samples``, default: total length of the lists with a positive weight;
    * a weight is the share of the epoch's draws that goes to a *list*, whatever its size: list ``i`` gets
      ``num_samples * w_i / sum(w)`` draws, rounded (within 1, summing to ``num_samples``), and the sources are
      interleaved in a random order, so each position comes from list ``i`` with probability ``∝ w_i``. Use
      ``weight = len(list)`` for the natural proportions; weight 0 excludes a list;
    * within a list, draws walk through a random permutation of it, starting a fresh permutation each time
      it is used up, so every record of a list is seen once before any is seen twice (per epoch);
    * the order depends only on ``(seed, epoch)`` (and the numpy version): same pair, same order.

    Every rank must build the same ``MixedList`` with the same seed; ``rank``/``world_size`` then pick
    disjoint, equally sized slices of the epoch via :func:`shard_indices`.
    """

    def __init__(self, sources: Sequence[tuple[Sequence[VideoRecord], float]], *, num_samples: int | None = None,
                 seed: int = 0):
        if not sources:
            raise ValueError("MixedList needs at least one (records, weight) pair")
        weights = np.array([float(w) for _, w in sources])
        if not np.all(np.isfinite(weights)) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
        for i, (recs, w) in enumerate(sources):
            if w > 0 and len(recs) == 0:
                raise ValueError(f"source {i} is empty but has weight {w}")
        self.records: list[VideoRecord] = [r for recs, _ in sources for r in recs]
        self.sizes = [len(recs) for recs, _ in sources]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.weights = weights / weights.sum()
        if num_samples is None:
            num_samples = sum(s for s, w in zip(self.sizes, weights) if w > 0)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> VideoRecord:
        return self.records[i]

    def quotas(self) -> np.ndarray:
        """Draws per list in one epoch (sums to ``num_samples``)."""
        # Round the cumulative shares: each quota is within 1 of num_samples * w_i and they sum exactly.
        bounds = np.rint(np.cumsum(self.weights) * self.num_samples).astype(np.int64)
        bounds[-1] = self.num_samples
        return np.diff(bounds, prepend=0)

    def epoch_indices(self, epoch: int, *, rank: int = 0, world_size: int = 1, drop_last: bool = False
                      ) -> np.ndarray:
        """Global record indices (int64) for ``epoch``, this rank's shard when ``world_size > 1``."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        quotas = self.quotas()
        which = np.repeat(np.arange(len(quotas)), quotas)
        rng.shuffle(which)
        out = np.empty(self.num_samples, dtype=np.int64)
        for i, q in enumerate(quotas):
            if q == 0:
                continue
            n = self.sizes[i]
            walk = np.concatenate([rng.permutation(n) for _ in range(-(-q // n))])[:q]
            out[which == i] = walk + self.offsets[i]
        return shard_indices(out, rank, world_size, drop_last=drop_last) if world_size > 1 else out


class MixedSampler:
    """A ``DataLoader`` sampler over a :class:`MixedList` for one rank; call :meth:`set_epoch` every epoch,
    as with ``DistributedSampler``. Yields global indices into ``mixed.records``."""

    def __init__(self, mixed: MixedList, *, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        self.mixed, self.rank, self.world_size, self.drop_last = mixed, rank, world_size, drop_last
        self.epoch = 0
        shard_indices(np.zeros(1), rank, world_size)  # validate rank/world_size now

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, w = self.mixed.num_samples, self.world_size
        return n // w if self.drop_last else math.ceil(n / w)

    def __iter__(self) -> Iterator[int]:
        idx = self.mixed.epoch_indices(self.epoch, rank=self.rank, world_size=self.world_size,
                                       drop_last=self.drop_last)
        return iter(idx.tolist())
