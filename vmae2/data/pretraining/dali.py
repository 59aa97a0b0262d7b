"""The DALI pipeline: decode (NVDEC on a GPU; DALI's CPU decoder for VP8/VP9/MJPEG; PyAV frames fed through
``external_source`` otherwise), then per view: exact-pixel crop, bilinear resize, normalise to ``CFHW`` float.

Python plans each batch (:class:`~vmae2.data.pretraining.clips.ClipSource`: frames, crops, substitutes for bad
files) and feeds DALI; DALI's threads do the decoding and augmentation. A batch DALI fails to decode is checked file by
file with PyAV, the culprits go to the ledger, and the batch is re-planned without them.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from vmae2.data.pretraining.clips import IMAGENET_MEAN, IMAGENET_STD, Batch, ClipSource, PlannedClip
from vmae2.data.decode import DALI_CPU_CODECS, BadVideo, decode_frames
from vmae2.data.telemetry import BadFileLedger

log = logging.getLogger("vmae2.data")
MAX_RETRIES = 3


def build_pipeline(batch_size: int, num_views: int, size: int, device_id: int | None, num_threads: int):
    """The DALI graph; inputs are fed per batch with ``feed_input`` (names below)."""
    from nvidia.dali import fn, pipeline_def, types

    on_gpu = device_id is not None
    mean = [m * 255 for m in IMAGENET_MEAN]
    std = [s * 255 for s in IMAGENET_STD]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, enable_conditionals=True,
                  exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
    def pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8)
        frames = fn.external_source(name="frames", dtype=types.UINT8, layout="FHWC")
        frame_ids = fn.external_source(name="frame_ids", dtype=types.INT32)
        use_decoder = fn.external_source(name="use_decoder", dtype=types.BOOL)
        anchors = [fn.external_source(name=f"anchor{v}", dtype=types.INT32) for v in range(num_views)]
        shapes = [fn.external_source(name=f"shape{v}", dtype=types.INT32) for v in range(num_views)]
        if use_decoder:
            video = fn.decoders.video(encoded, device="mixed" if on_gpu else "cpu", frames=frame_ids)
        else:
            video = frames.gpu() if on_gpu else frames
        views = []
        for anchor, shape in zip(anchors, shapes):
            view = fn.slice(video, anchor, shape, axis_names="HW", out_of_bounds_policy="error")
            view = fn.resize(view, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
            views.append(fn.crop_mirror_normalize(view, dtype=types.FLOAT, output_layout="CFHW", mean=mean, std=std))
        return tuple(views)

    return pipeline()


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A DALI batch (uniform shape) as one torch tensor on ``device``."""
    if hasattr(tensor_list, "as_cpu") and device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(tensor_list.as_tensor()))


class DaliRunner:
    """Runs planned batches through one DALI pipeline (rebuilt after a decode failure)."""

    def __init__(self, source: ClipSource, batch_size: int, device: torch.device, num_threads: int,
                 ledger: BadFileLedger):
        self.source, self.batch_size, self.device, self.ledger = source, batch_size, device, ledger
        self.num_threads = max(1, num_threads)
        self.on_gpu = device.type == "cuda"
        self.pool = ThreadPoolExecutor(self.num_threads)  # probing and PyAV decoding release the GIL
        self.pipe = None
        self.pyav_only: set[int] = set()  # records DALI failed on but PyAV decodes

    def _pipeline(self):
        if self.pipe is None:
            cfg = self.source.config
            device_id = (self.device.index or 0) if self.on_gpu else None
            self.pipe = build_pipeline(self.batch_size, cfg.num_sample, cfg.input_size, device_id, self.num_threads)
            self.pipe.build()
        return self.pipe

    def _decoded_by_dali(self, clip: PlannedClip) -> bool:
        if not clip.record.is_video or clip.record_index in self.pyav_only:
            return False
        return self.on_gpu or clip.info.codec in DALI_CPU_CODECS

    def _prepare(self, pair, skip) -> tuple[PlannedClip, dict]:
        """Plan one clip and build its DALI inputs (bytes for DALI's decoder, or PyAV-decoded frames)."""
        slot, record_index = pair
        failures: list[BadVideo] = []
        while True:
            clip = self.source.plan(slot, record_index, failures, skip)
            ids = np.asarray(clip.plan.frame_ids, dtype=np.int32)
            if self._decoded_by_dali(clip):
                feed = {"encoded": np.fromfile(clip.record.path, dtype=np.uint8), "frames": np.zeros((1, 1, 1, 3),
                        np.uint8), "frame_ids": ids, "use_decoder": np.array(True)}
                break
            try:
                frames = decode_frames(clip.record, clip.plan.frame_ids, clip.info)
            except BadVideo as bad:
                failures.append(bad)
                skip = skip | {clip.record_index}
                continue
            feed = {"encoded": np.zeros(1, np.uint8), "frames": frames, "frame_ids": ids,
                    "use_decoder": np.array(False)}
            break
        for v, crop in enumerate(clip.plan.crops):
            feed[f"anchor{v}"] = np.array([crop.y, crop.x], np.int32)
            feed[f"shape{v}"] = np.array([crop.h, crop.w], np.int32)
        clip.failures = failures
        return clip, feed

    def _run(self, feeds: list[dict]) -> torch.Tensor:
        pipe = self._pipeline()
        for name in feeds[0]:
            pipe.feed_input(name, [f[name] for f in feeds])
        views = [_to_torch(out, self.device) for out in pipe.run()]  # num_views x [B, 3, T, S, S]
        return torch.stack(views, dim=1).flatten(0, 1)  # sample-major, like the official collate

    def run(self, batches):
        for pairs in batches:
            skip: set[int] = set()
            for _ in range(MAX_RETRIES):
                known_bad = frozenset(skip)
                prepared = list(self.pool.map(lambda p, kb=known_bad: self._prepare(p, kb), pairs))
                clips = [c for c, _ in prepared]
                try:
                    video = self._run([f for _, f in prepared])
                    break
                except Exception as exc:  # a file DALI cannot decode: find it with PyAV, drop it, re-plan
                    log.warning("DALI failed on a batch (%s); checking its files", str(exc).splitlines()[0])
                    self.pipe = None  # a failed pipeline cannot be reused
                    skip |= self._find_undecodable([c for c in clips if self._decoded_by_dali(c)])
            else:
                raise RuntimeError(f"DALI kept failing on the batch of slots {[p[0] for p in pairs]}; run "
                                   f"`python -m vmae2.data.check` on the list")
            for clip in clips:
                for bad in clip.failures:
                    self.ledger.add(bad)
            yield Batch(video, [c.slot for c in clips], [c.record_index for c in clips])

    def _find_undecodable(self, clips: list[PlannedClip]) -> set[int]:
        """After a failed batch: files PyAV cannot decode are bad (ledger); files only DALI fails on are sent
        through PyAV from now on. Returns the bad record indices."""
        bad_records = set()
        for clip in clips:
            try:
                decode_frames(clip.record, clip.plan.frame_ids, clip.info)
            except BadVideo as bad:
                self.ledger.add(bad)
                bad_records.add(clip.record_index)
                continue
            if not self._dali_decodes(clip):
                log.warning("DALI cannot decode %s (%s) but PyAV can; it now goes through PyAV", clip.record.path,
                            clip.info.codec)
                self.pyav_only.add(clip.record_index)
        return bad_records

    def _dali_decodes(self, clip: PlannedClip) -> bool:
        """Decode one clip alone in a one-sample DALI pipeline."""
        from nvidia.dali import fn, pipeline_def, types

        device_id = (self.device.index or 0) if self.on_gpu else None

        @pipeline_def(batch_size=1, num_threads=1, device_id=device_id, exec_async=False, exec_pipelined=False,
                      prefetch_queue_depth=1)
        def single():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            frame_ids = fn.external_source(name="frame_ids", dtype=types.INT32)
            return fn.decoders.video(encoded, device="mixed" if self.on_gpu else "cpu", frames=frame_ids)

        pipe = single()
        try:
            pipe.build()
            pipe.feed_input("encoded", [np.fromfile(clip.record.path, dtype=np.uint8)])
            pipe.feed_input("frame_ids", [np.asarray(clip.plan.frame_ids, dtype=np.int32)])
            pipe.run()
            return True
        except Exception:
            return False
