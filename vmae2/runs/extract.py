"""The feature-extraction run (:func:`run` is ``python -m vmae2.extract``).

Videos: the files of a folder and its subfolders (by extension), or the records of a list in any format the training
readers take (:func:`vmae2.data.lists.read_paths`). Each video's output name is its path relative to the folder (to
the deepest folder holding every listed video), extension dropped, so ``OUT`` mirrors the class folders.

Worker processes decode (PyAV, every frame once, streaming) and preprocess frame chunks of one video at a time; the
main process assembles the windows and runs the model on them, so decoding overlaps the model. Per video: the
features are written atomically to ``OUT/<name>.npy`` (a ``kill -9`` never leaves a partial file; a rerun skips the
videos whose file exists), or the video is listed in ``failed.tsv`` with its reason and skipped. ``manifest.json``
(model, weights file and sha256, preset and options, window count per video) is rewritten atomically after every
video. Both files keep what earlier runs into ``OUT`` listed: a video extracted now leaves ``failed.tsv``, a video
failing now replaces its earlier line. Under ``torchrun`` rank ``r`` takes videos ``r, r + W, ...`` of the sorted
list and writes this run's ``manifest.rank{r}.json`` / ``failed.rank{r}.tsv`` as it goes; when every rank has
finished, rank 0 folds them into ``manifest.json`` / ``failed.tsv`` (:func:`merge_ranks`), the files a one-process
run writes.

GPU decoding (DALI/NVDEC) is not part of this step: DALI's video readers return fixed-length sequences by random
access or need a fixed sequence length per pipeline, not a whole-video stream of every frame once; PyAV workers
feed the GPU model instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vmae2 import transformers_io
from vmae2.data.decode import BadVideo, iter_frames
from vmae2.data.lists import VIDEO_EXTENSIONS, check_found, read_paths
from vmae2.features import CHUNK, WindowFeatures, default_batch_size, preprocess
from vmae2.training import rundir
from vmae2.training.distributed import Dist, finish_distributed, resolve_device, setup_distributed
from vmae2.weights import atomic_write, load_feature_weights

if TYPE_CHECKING:  # the command's config, for annotations only: vmae2.extract names this module's run
    from vmae2.extract import ExtractConfig

MANIFEST, FAILED = "manifest.json", "failed.tsv"


def list_videos(data_path: str, data_root: str = "") -> dict[str, str]:
    """``{absolute video path: output name}`` in path order, from a folder (its videos and its subfolders', by
    extension) or a list file (:func:`vmae2.data.lists.read_paths`). The output name is the path relative to the
    folder (for a list: to the deepest folder holding every video), extension dropped. ``ValueError`` when no video is
    found, or when two videos would share a name."""
    if os.path.isdir(data_path):
        root = os.path.abspath(data_path)
        paths = [str(p) for p in Path(root).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
        if not paths:
            raise ValueError(f"--data_path {data_path} holds no videos (looked for {' '.join(VIDEO_EXTENSIONS)} "
                             f"files in it and its subfolders); give a folder of videos or a list file")
    else:
        records = read_paths(data_path, data_root)
        check_found(records, data_path, data_root)
        paths = [os.path.abspath(r.path) for r in records]
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    names: dict[str, str] = {}
    owners: dict[str, str] = {}
    for path in sorted(set(paths)):
        name = Path(os.path.relpath(path, root)).with_suffix("").as_posix()
        if (other := owners.setdefault(name, path)) != path:
            raise ValueError(f"{other} and {path} would both write {name}.npy; rename one of them")
        names[path] = name
    return names


class FrameChunks(IterableDataset):
    """Items ``(video index, frames, error)``: the frame chunks of each video in order (``[3, F, S, S]`` float32
    preprocessed, or uint8 ``[F, H, W, 3]`` when ``preprocess_here`` is off), then ``(index, None, None)`` when it
    ended, or ``(index, None, BadVideo)``. Worker ``w`` of ``n`` takes videos ``w, w + n, ...``."""

    def __init__(self, paths: list[str], input_size: int, normalize: bool, preprocess_here: bool):
        self.paths, self.input_size, self.normalize = paths, input_size, normalize
        self.preprocess_here = preprocess_here

    def __iter__(self):
        info = get_worker_info()
        first, step = (info.id, info.num_workers) if info else (0, 1)
        for index in range(first, len(self.paths), step):
            try:
                for chunk in iter_frames(self.paths[index], CHUNK):
                    frames = torch.from_numpy(chunk)
                    yield index, preprocess(frames, self.input_size, self.normalize) if self.preprocess_here \
                        else frames, None
            except BadVideo as exc:
                yield index, None, exc
                continue
            yield index, None, None


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n",
                                                        encoding="utf-8"))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    atomic_write(path, write)


FAILED_HEADER = "path\treason\tdetail\n"


def _write_failed(path: Path, failed: dict[str, str]) -> None:
    text = "".join(f"{p}\t{r}\n" for p, r in sorted(failed.items()))
    atomic_write(path, lambda tmp: Path(tmp).write_text(FAILED_HEADER + text, encoding="utf-8"))


def _read_failed(path: Path) -> dict[str, str]:
    """``{video path: "reason\tdetail"}`` of a failure list (empty when there is none)."""
    if not path.exists():
        return {}
    return dict(line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines()[1:] if line)


def _fold(videos: dict, failed: dict[str, str], new_videos: dict, new_failed: dict[str, str]) -> tuple[dict, dict]:
    """Earlier runs' ``(videos, failures)`` updated by a later run's: a video extracted by the later run leaves the
    failures, one failing in it leaves the videos, its new reason replacing the old one."""
    extracted = {v["path"] for v in new_videos.values()}
    return ({**{k: v for k, v in videos.items() if v["path"] not in new_failed}, **new_videos},
            {**{p: r for p, r in failed.items() if p not in extracted}, **new_failed})


class Outputs:
    """The run's files in ``out``: the features (at the videos' output names), the manifest and the failure list.
    One process keeps ``manifest.json`` / ``failed.tsv`` up to date, with what earlier runs listed; rank ``r`` of
    several writes this run's part to ``manifest.rank{r}.json`` / ``failed.rank{r}.tsv``."""

    def __init__(self, cfg: ExtractConfig, d: Dist, how_loaded: str, names: dict[str, str]):
        self.out, self.names = Path(cfg.output_dir), names
        suffix = f".rank{d.rank}" if d.world_size > 1 else ""
        self.manifest_path, self.failed_path = self.out / f"manifest{suffix}.json", self.out / f"failed{suffix}.tsv"
        options = {k: getattr(cfg, k) for k in ("window", "stride", "frame_stride", "input_size", "normalize",
                                                "tokens", "precision", "pool")}
        weights = transformers_io.weights_file(cfg.weights) if os.path.isdir(cfg.weights) else cfg.weights
        model = f"transformers VideoMAE ({os.path.abspath(cfg.weights)})" if os.path.isdir(cfg.weights) else cfg.model
        self.manifest = {"model": model, "weights": os.path.abspath(weights),
                         "weights_sha256": sha256(weights), "weights_loaded_as": how_loaded,
                         "preset": cfg.preset_name(), "options": options, "world_size": d.world_size}
        if d.world_size > 1:
            self.manifest["rank"] = d.rank
        for path in dict.fromkeys([self.out / MANIFEST, self.manifest_path]):
            old = _read_json(path)
            for key in ("model", "weights_sha256", "options"):
                if old and old.get(key) != self.manifest[key]:
                    raise ValueError(f"{self.out} holds features made with another {key} ({old.get(key)} vs "
                                     f"{self.manifest[key]}): choose another --output_dir")
        self.listed: dict = _read_json(self.out / MANIFEST).get("videos", {})  # by every earlier run
        self.earlier = (self.listed, _read_failed(self.out / FAILED)) if d.world_size == 1 else ({}, {})
        self.videos: dict = {}  # this run's
        self.failed: dict[str, str] = {}

    def npy(self, path: str) -> Path:
        return self.out / f"{self.names[path]}.npy"

    def extracted(self, path: str) -> bool:
        """Whether an earlier run wrote the features of ``path`` (then listed as this run's); ``ValueError`` when
        the file there holds another video's features (two lists into one folder)."""
        npy = self.npy(path)
        if not npy.exists():
            return False
        other = os.path.abspath(self.listed.get(self.names[path], {}).get("path", path))
        if other != path:
            raise ValueError(f"{npy} holds the features of {other} ({self.out / MANIFEST}), not of {path}: extract "
                             f"{path} into another --output_dir")
        self.videos[self.names[path]] = {"path": path, "windows": int(np.load(npy, mmap_mode="r").shape[0])}
        return True

    def clear_stale(self, paths: list[str]) -> None:
        """Delete the temporary files a killed run left for ``paths`` and for this rank's manifest and failure list
        (this rank's files only: another rank's may be in use)."""
        for path in [self.npy(p) for p in paths] + [self.manifest_path, self.failed_path]:
            for tmp in path.parent.glob(f".{path.name}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def done(self, path: str, windows: int) -> None:
        self.videos[self.names[path]] = {"path": path, "windows": windows}
        self.failed.pop(path, None)
        self.write()

    def fail(self, exc: BadVideo) -> None:
        self.failed[exc.path] = f"{exc.reason}\t{exc.detail}"
        self.videos.pop(self.names[exc.path], None)
        self.write()

    def write(self) -> None:
        """The manifest, and the failure list when one is due (a failure now, or a list from before)."""
        videos, failed = _fold(*self.earlier, self.videos, self.failed)
        _write_json(self.manifest_path, {**self.manifest, "videos": videos})
        if failed or self.failed_path.exists():
            _write_failed(self.failed_path, failed)


def merge_ranks(out: Path, world_size: int) -> None:
    """Fold this run's ``.rank{r}`` files of ``world_size`` ranks into ``manifest.json`` and ``failed.tsv``, keeping
    what earlier runs listed there: the manifest of rank 0 (``rank`` dropped: it describes the whole run) with every
    rank's videos, every rank's failures. Rank 0 calls it once every rank has written its last file."""
    manifests = [_read_json(out / f"manifest.rank{r}.json") for r in range(world_size)]
    merged = {k: v for k, v in manifests[0].items() if k != "rank"}
    new_videos = {name: v for m in manifests for name, v in m["videos"].items()}
    new_failed = {p: r for rank in range(world_size) for p, r in _read_failed(out / f"failed.rank{rank}.tsv").items()}
    merged["videos"], failed = _fold(_read_json(out / MANIFEST).get("videos", {}), _read_failed(out / FAILED),
                                     new_videos, new_failed)
    _write_json(out / MANIFEST, merged)
    if failed or (out / FAILED).exists():
        _write_failed(out / FAILED, failed)


def feature_model(cfg: ExtractConfig) -> tuple[torch.nn.Module, str]:
    """``(features-only model, how its weights were loaded)``: ``cfg.model`` with ``cfg.weights`` (any wrapper
    prefix), or, for a ``transformers`` VideoMAE folder, the architecture of its config."""
    from vmae2.models import create_model

    if transformers_io.is_transformers_source(cfg.weights):
        return transformers_io.feature_model(cfg.weights, num_frames=cfg.window, img_size=cfg.input_size,
                                             attn_backend=cfg.attn_backend)
    model = create_model(cfg.model, num_classes=0, num_frames=cfg.window, img_size=cfg.input_size,
                         attn_backend=cfg.attn_backend, pool=cfg.pool)
    return model, load_feature_weights(model, cfg.weights)


def _say_start(cfg: ExtractConfig, d: Dist, device: torch.device, outputs: Outputs, videos: int, todo: int,
               batch_size: int) -> None:
    """Print this rank's plan: nothing to do, or how many videos are left and how they are extracted."""
    if videos and not todo:
        print(f"rank {d.rank}: all {videos} videos were extracted into {cfg.output_dir} by an earlier run: "
              f"nothing to do", flush=True)
    else:
        print(f"rank {d.rank}: {videos - todo} of {videos} videos already extracted, {todo} to "
              f"go; {cfg.model} ({outputs.manifest['weights_loaded_as']}), preset {outputs.manifest['preset']}, "
              f"batch {batch_size}, {cfg.num_workers} decoding workers, {device}", flush=True)


def _extract(cfg: ExtractConfig, model: torch.nn.Module, device: torch.device, batch_size: int, todo: list[str],
             outputs: Outputs) -> tuple[int, int, int]:
    """Extract the videos ``todo`` (decoded by worker processes, windows through ``model`` here), each one's
    features written, or the video listed as failed, as it ends; ``(videos extracted, videos failed, windows)``."""
    dataset = FrameChunks(todo, cfg.input_size, cfg.normalize, preprocess_here=device.type == "cpu")
    loader = DataLoader(dataset, batch_size=None, num_workers=min(cfg.num_workers, len(todo)),
                        pin_memory=device.type == "cuda")
    states: dict[int, WindowFeatures] = {}
    start, finished, failures, windows = time.perf_counter(), 0, 0, 0
    for index, frames, error in loader:
        path = todo[index]
        try:
            if error is not None:
                raise error
            if frames is not None:
                state = states.setdefault(index, WindowFeatures(model, cfg.window, cfg.stride, cfg.frame_stride,
                                                                batch_size, cfg.tokens, cfg.precision))
                frames = frames.to(device, non_blocking=True)
                state.add(frames if device.type == "cpu" else preprocess(frames, cfg.input_size, cfg.normalize))
                continue
            features = states.pop(index, WindowFeatures(model, cfg.window, cfg.stride, cfg.frame_stride, batch_size)
                                  ).finish(path)
        except BadVideo as exc:
            states.pop(index, None)
            outputs.fail(exc)
            failures += 1
            print(f"skipping bad video {exc}", file=sys.stderr, flush=True)
            continue
        _save_npy(outputs.npy(path), features)
        outputs.done(path, len(features))
        finished, windows = finished + 1, windows + len(features)
        elapsed = time.perf_counter() - start
        print(f"[{finished + failures}/{len(todo)}] {outputs.names[path]}: {len(features)} windows | "
              f"{finished / elapsed:.2f} videos/s, {windows / elapsed:.1f} windows/s", flush=True)
    return finished, failures, windows


def _finish(cfg: ExtractConfig, d: Dist, device: torch.device, outputs: Outputs, listed: int,
            with_features: int) -> int:
    """Fold every rank's files into ``manifest.json`` / ``failed.tsv`` (several ranks; rank 0, once all have
    written theirs) and return the exit code: 0 when some of the ``listed`` videos has its features (on any rank),
    else 1."""
    total = torch.tensor(with_features, device=device)
    if d.world_size > 1:
        torch.distributed.all_reduce(total)  # also: every rank's files are written
        if d.is_main:
            merge_ranks(outputs.out, d.world_size)
            print(f"merged {d.world_size} ranks' manifests into {outputs.out / MANIFEST}", flush=True)
        finish_distributed()
    if not total.item():
        if d.is_main:
            print(f"error: no video of --data_path {cfg.data_path} was extracted: all {listed} failed (reasons "
                  f"in {outputs.out / FAILED}); fix or replace them, or list other videos", file=sys.stderr)
        return 1
    return 0


@rundir.locked("python -m vmae2.extract")
def run(cfg: ExtractConfig) -> int:
    """Extract the features of every video of ``cfg.data_path`` not extracted yet. Exit code 0 when some video of
    the list has its features (now or from an earlier run; bad videos are listed, not fatal), 1 when none has (every
    one failed), 2 for a bad list, weights or output folder."""
    try:
        d = setup_distributed("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        device = resolve_device(cfg.device, d)
        names = list_videos(cfg.data_path, cfg.data_root)
        videos = list(names)[d.rank::d.world_size]
        model, how_loaded = feature_model(cfg)
        outputs = Outputs(cfg, d, how_loaded, names)
        todo = [p for p in videos if not outputs.extracted(p)]  # resume: what an earlier run finished is skipped
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.to(device).eval()
    batch_size = cfg.batch_size or default_batch_size(model, device)
    outputs.clear_stale(todo)
    _say_start(cfg, d, device, outputs, len(videos), len(todo), batch_size)
    finished, failures, windows = _extract(cfg, model, device, batch_size, todo, outputs)
    outputs.write()
    print(f"rank {d.rank}: {finished} videos extracted ({windows} windows), {failures} failed"
          + (f" (see {outputs.failed_path})" if failures else "") + f"; features in {cfg.output_dir}", flush=True)
    return _finish(cfg, d, device, outputs, len(names), len(videos) - len(todo) + finished)
