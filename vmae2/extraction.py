"""The feature-extraction run (:func:`run` is ``python -m vmae2.extract``).

Worker processes decode (PyAV, every frame once, streaming) and preprocess frame chunks of one video at a time; the
main process assembles the windows and runs the model on them, so decoding overlaps the model. Per video: the
features are written atomically to ``OUT/<stem>.npy`` (a ``kill -9`` never leaves a partial file; a rerun skips the
videos whose file exists), or the video is listed in ``failed.tsv`` with its reason and skipped. ``manifest.json``
(model, weights file and sha256, preset and options, window count per video) is rewritten atomically after every
video. Under ``torchrun`` rank ``r`` takes videos ``r, r + W, ...`` of the sorted list and writes its own
``manifest.rank{r}.json`` / ``failed.rank{r}.tsv`` as it goes; when every rank has finished, rank 0 merges them into
``manifest.json`` / ``failed.tsv`` (:func:`merge_ranks`), the files a one-process run writes.

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

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vmae2.checkpoint import atomic_write, load_feature_weights
from vmae2.data.decode import BadVideo, iter_frames
from vmae2.extract import ExtractConfig
from vmae2.features import CHUNK, WindowFeatures, default_batch_size, preprocess
from vmae2.runtime import Dist, finish_distributed, resolve_device, setup_distributed

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv")


def list_videos(data_path: str, data_root: str = "") -> list[str]:
    """The sorted video paths of a folder (by extension), or of a list file (first word of each non-blank, non-``#``
    line, joined to ``data_root``). Two videos with one file stem would share an output: ``ValueError``."""
    if os.path.isdir(data_path):
        paths = [str(p) for p in Path(data_path).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS]
    else:
        with open(data_path) as fh:
            words = [line.split()[0] for line in fh if line.strip() and not line.lstrip().startswith("#")]
        paths = [os.path.join(data_root, w) if data_root else w for w in words]
    paths = sorted(set(paths))
    stems: dict[str, str] = {}
    for p in paths:
        if (other := stems.setdefault(Path(p).stem, p)) != p:
            raise ValueError(f"{p} and {other} would both write {Path(p).stem}.npy")
    if not paths:
        raise ValueError(f"--data_path {data_path} names no videos")
    return paths


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
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n"))


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    atomic_write(path, write)


class Outputs:
    """The run's files in ``out``: features, the manifest and the failure list (this rank's)."""

    def __init__(self, cfg: ExtractConfig, d: Dist, how_loaded: str):
        self.out = Path(cfg.output_dir)
        suffix = f".rank{d.rank}" if d.world_size > 1 else ""
        self.manifest_path, self.failed_path = self.out / f"manifest{suffix}.json", self.out / f"failed{suffix}.tsv"
        options = {k: getattr(cfg, k) for k in ("window", "stride", "frame_stride", "input_size", "normalize",
                                                "tokens", "precision")}
        self.manifest = {"model": cfg.model, "weights": os.path.abspath(cfg.weights),
                         "weights_sha256": sha256(cfg.weights), "weights_loaded_as": how_loaded,
                         "preset": cfg.preset_name(), "options": options, "world_size": d.world_size, "videos": {}}
        if d.world_size > 1:
            self.manifest["rank"] = d.rank
        if self.manifest_path.exists():
            old = json.loads(self.manifest_path.read_text())
            for key in ("model", "weights_sha256", "options"):
                if old.get(key) != self.manifest[key]:
                    raise ValueError(f"{self.out} holds features made with another {key} ({old.get(key)} vs "
                                     f"{self.manifest[key]}): choose another --output_dir")
        self.failed: dict[str, str] = {}

    def npy(self, path: str) -> Path:
        return self.out / f"{Path(path).stem}.npy"

    def clear_stale(self, paths: list[str]) -> None:
        """Delete the temporary files a killed run left for ``paths`` and for this rank's manifest and failure list
        (this rank's files only: another rank's may be in use)."""
        for name in [self.npy(path).name for path in paths] + [self.manifest_path.name, self.failed_path.name]:
            for tmp in self.out.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def done(self, path: str, windows: int) -> None:
        self.manifest["videos"][Path(path).stem] = {"path": path, "windows": windows}
        _write_json(self.manifest_path, self.manifest)

    def fail(self, exc: BadVideo) -> None:
        self.failed[exc.path] = f"{exc.reason}\t{exc.detail}"
        _write_failed(self.failed_path, self.failed)


FAILED_HEADER = "path\treason\tdetail\n"


def _write_failed(path: Path, failed: dict[str, str]) -> None:
    text = "".join(f"{p}\t{r}\n" for p, r in sorted(failed.items()))
    atomic_write(path, lambda tmp: Path(tmp).write_text(FAILED_HEADER + text))


def merge_ranks(out: Path, world_size: int) -> None:
    """``manifest.json`` and ``failed.tsv`` of a run of ``world_size`` ranks from their ``.rank{r}`` files: the
    manifest of rank 0 with every rank's videos (``rank`` dropped: it describes the whole run), the failures of every
    rank. Rank 0 calls it once every rank has written its last file."""
    manifests = [json.loads((out / f"manifest.rank{r}.json").read_text()) for r in range(world_size)]
    merged = {k: v for k, v in manifests[0].items() if k != "rank"}
    merged["videos"] = {stem: v for m in manifests for stem, v in m["videos"].items()}
    _write_json(out / "manifest.json", merged)
    failed: dict[str, str] = {}
    for r in range(world_size):
        if (path := out / f"failed.rank{r}.tsv").exists():
            lines = path.read_text().splitlines()[1:]
            failed.update(line.split("\t", 1) for line in lines if line)
    if failed:
        _write_failed(out / "failed.tsv", failed)


def run(cfg: ExtractConfig) -> int:
    """Extract the features of every video of ``cfg.data_path`` not extracted yet; exit code 0 (bad videos are
    listed, not fatal), 2 for a bad list, weights or output folder."""
    from vmae2.models import create_model

    try:
        d = setup_distributed("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        device = resolve_device(cfg.device, d)
        videos = list_videos(cfg.data_path, cfg.data_root)[d.rank::d.world_size]
        model = create_model(cfg.model, num_classes=0, num_frames=cfg.window, img_size=cfg.input_size,
                             attn_backend=cfg.attn_backend)
        outputs = Outputs(cfg, d, load_feature_weights(model, cfg.weights))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.to(device).eval()
    batch_size = cfg.batch_size or default_batch_size(model, device)
    for path in videos:  # resume: what an earlier run finished
        if outputs.npy(path).exists():
            windows = int(np.load(outputs.npy(path), mmap_mode="r").shape[0])
            outputs.manifest["videos"][Path(path).stem] = {"path": path, "windows": windows}
    todo = [p for p in videos if not outputs.npy(p).exists()]
    outputs.clear_stale(todo)
    print(f"rank {d.rank}: {len(videos) - len(todo)} of {len(videos)} videos already extracted, {len(todo)} to go; "
          f"{cfg.model} ({outputs.manifest['weights_loaded_as']}), preset {outputs.manifest['preset']}, batch "
          f"{batch_size}, {cfg.num_workers} decoding workers, {device}", flush=True)
    dataset = FrameChunks(todo, cfg.input_size, cfg.normalize, preprocess_here=device.type == "cpu")
    loader = DataLoader(dataset, batch_size=None, num_workers=min(cfg.num_workers, len(todo)),
                        pin_memory=device.type == "cuda")
    states: dict[int, WindowFeatures] = {}
    start, finished, windows = time.perf_counter(), 0, 0
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
            print(f"skipping bad video {exc}", file=sys.stderr, flush=True)
            continue
        _save_npy(outputs.npy(path), features)
        outputs.done(path, len(features))
        finished, windows = finished + 1, windows + len(features)
        elapsed = time.perf_counter() - start
        print(f"[{finished + len(outputs.failed)}/{len(todo)}] {Path(path).name}: {len(features)} windows | "
              f"{finished / elapsed:.2f} videos/s, {windows / elapsed:.1f} windows/s", flush=True)
    _write_json(outputs.manifest_path, outputs.manifest)
    print(f"rank {d.rank}: {finished} videos extracted ({windows} windows), {len(outputs.failed)} failed"
          + (f" (see {outputs.failed_path})" if outputs.failed else "") + f"; features in {cfg.output_dir}",
          flush=True)
    if d.world_size > 1:
        torch.distributed.barrier()  # every rank's files are written
        if d.is_main:
            merge_ranks(outputs.out, d.world_size)
            print(f"merged {d.world_size} ranks' manifests into {outputs.out / 'manifest.json'}", flush=True)
        finish_distributed()
    return 0
