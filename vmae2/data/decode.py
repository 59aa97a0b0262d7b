"""Probing and decoding with PyAV (video files) and Pillow (rawframe folders).

Every failure raises :class:`BadVideo` with a short ``reason`` (``missing``, ``empty``, ``unreadable`` (no
container could be opened), ``not_a_video`` (no video stream), ``undecodable``, ``truncated``, ``too_short``,
``wrong_codec``), so callers can count and log it. Frames are RGB uint8
``[F, H, W, 3]``.

The length rule every loader and ``python -m vmae2.data.check`` apply: a file with fewer decodable frames than
the clip's ``num_frames`` is ``too_short`` (bad: most of its clip would be copies of a few frames); one with at
least ``num_frames`` but fewer than ``num_frames x sampling_rate`` is usable but *short*: its clip repeats the
last reachable frame, as the official sampler does. (The official loaders accept any length.)
"""
from __future__ import annotations

import functools
import io
import os
import re
from dataclasses import dataclass

import numpy as np

from vmae2.data.lists import VideoRecord

# Codecs DALI's CPU video decoder reads; others (H.264, HEVC, ...) go through PyAV on a CPU-only machine.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})


class BadVideo(Exception):
    """A file that cannot give a clip. ``reason`` is a short category; ``str(exc)`` has the details."""

    def __init__(self, reason: str, path: str, detail: str = ""):
        super().__init__(reason, path, detail)  # ``args`` rebuild it: it crosses worker processes by pickle
        self.reason, self.path, self.detail = reason, path, detail

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    width: int
    height: int
    fps: float
    codec: str


# A sample of a tar shard (vmae2.data.shards) is named tar#member@offset+size: its bytes are that range of the tar.
_MEMBER = re.compile(r"^(?P<tar>.+\.tar)#(?P<name>[^@]+)@(?P<offset>\d+)\+(?P<size>\d+)$")


def member_path(tar: str, name: str, offset: int, size: int) -> str:
    """The record path of the tar member ``name`` whose bytes are ``tar[offset : offset + size]``."""
    return f"{tar}#{name}@{offset}+{size}"


@functools.lru_cache(maxsize=8)
def _member_bytes(path: str) -> bytes:
    m = _MEMBER.match(path)
    try:
        with open(m["tar"], "rb") as f:
            f.seek(int(m["offset"]))
            data = f.read(int(m["size"]))
    except FileNotFoundError as exc:
        raise BadVideo("missing", path, f"shard {m['tar']} does not exist") from exc
    except OSError as exc:
        raise BadVideo("unreadable", path, f"{type(exc).__name__}: {exc}") from exc
    if len(data) != int(m["size"]):
        raise BadVideo("unreadable", path, f"the shard ends {int(m['size']) - len(data)} bytes early (truncated?)")
    if not data:
        raise BadVideo("empty", path, "0 bytes")
    return data


def member(path: str) -> io.BytesIO | None:
    """The bytes of a shard sample as a file object (the last few are cached per process: probe, then decode, read
    the shard once); None when ``path`` is an ordinary file path. Raises ``BadVideo`` for a missing or short shard."""
    if "#" not in path or not _MEMBER.match(path):
        return None
    return io.BytesIO(_member_bytes(path))


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise BadVideo("missing", path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise BadVideo("empty", path, "0 bytes")


def _open(path: str):
    import av


    source = member(path)  # a sample of a tar shard: its byte range
    if source is None:
        _check_file(path)
    try:
        container = av.open(path if source is None else source)
    except Exception as exc:  # PyAV raises a family of FFmpeg errors: not a video, or a damaged container
        raise BadVideo("unreadable", path, f"{type(exc).__name__}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise BadVideo("not_a_video", path, "no video stream")
    return container


def probe(record: VideoRecord, min_frames: int = 1, codecs=None) -> VideoInfo:
    """Frame count, size, fps and codec without decoding pixels (packets are counted when the header has no
    frame count). Raises :class:`BadVideo` for missing/empty/non-video files, ``too_short`` clips and, when
    ``codecs`` (allowed codec names) is given, ``wrong_codec``."""
    if not record.is_video:
        return _probe_rawframes(record, min_frames)
    container = _open(record.path)
    try:
        stream = container.streams.video[0]
        count = stream.frames
        if count <= 0:
            count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        ctx = stream.codec_context
        info = VideoInfo(count, ctx.width, ctx.height, float(stream.average_rate or 0), ctx.name)
    except BadVideo:
        raise
    except Exception as exc:
        raise BadVideo("undecodable", record.path, f"{type(exc).__name__}: {exc}") from exc
    finally:
        container.close()
    if info.width <= 0 or info.height <= 0:
        raise BadVideo("undecodable", record.path, "no frame size in the stream")
    if info.num_frames < min_frames:
        raise BadVideo("too_short", record.path, f"{info.num_frames} frames < {min_frames}")
    if codecs is not None and info.codec not in codecs:
        raise BadVideo("wrong_codec", record.path, f"{info.codec} is not one of {sorted(codecs)}")
    return info


def decode_frames(record: VideoRecord, ids, info: VideoInfo | None = None) -> np.ndarray:
    """RGB uint8 ``[len(ids), H, W, 3]`` of the frames ``ids`` (0-based, may repeat, ascending)."""
    if not record.is_video:
        return _decode_rawframes(record, ids)
    wanted = set(int(i) for i in ids)
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    decoded = 0  # frames the stream yielded
    error = None
    container = _open(record.path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: FFmpeg decodes ahead on the other cores
        index_of = _seek(container, stream, min(wanted))
        for frame in container.decode(stream):
            decoded = index_of(frame) if index_of else decoded
            if decoded in wanted:
                got[decoded] = to_rgb(frame)
            decoded += 1
            if decoded > last:
                break
    except Exception as exc:  # a damaged packet: what was decoded so far tells truncated from undecodable
        error = f"{type(exc).__name__}: {exc}"
    finally:
        container.close()
    if len(got) < len(wanted):
        reason = "truncated" if decoded else "undecodable"
        detail = f"only {decoded} frames decode, frame {last} was asked for" + (f"; {error}" if error else "")
        raise BadVideo(reason, record.path, detail)
    return np.stack([got[int(i)] for i in ids])




@functools.lru_cache(maxsize=1)
def _one_thread() -> dict:
    """``to_ndarray`` keywords converting in one thread. PyAV >= 17 converts with a swscale thread pool kept in a
    cached context; a DataLoader worker forked after the parent converted inherits that pool without its threads,
    and its first conversion deadlocks freeing it (seen with PyAV 18.1.1). One thread everywhere: no pool."""
    import av

    return {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}


def to_rgb(frame) -> np.ndarray:
    """A decoded ``av.VideoFrame`` as RGB uint8 ``[H, W, 3]``."""
    return frame.to_ndarray(format="rgb24", **_one_thread())

def iter_frames(path: str, chunk: int = 32):
    """Every frame of video file ``path`` once, in order, as RGB uint8 ``[<= chunk, H, W, 3]`` arrays (a streaming
    decode: memory holds one chunk). Raises :class:`BadVideo` (``missing``, ``empty``, ``unreadable``,
    ``undecodable`` when no frame decodes, ``truncated`` when the stream fails or ends before the frame count its
    header claims) possibly after some chunks were yielded: a caller keeps nothing of such a video."""
    container = _open(path)
    decoded, error, frames = 0, None, []
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        claimed = stream.frames
        try:
            for frame in container.decode(stream):
                frames.append(to_rgb(frame))
                decoded += 1
                if len(frames) == chunk:
                    yield np.stack(frames)
                    frames = []
        except Exception as exc:  # a damaged packet
            error = f"{type(exc).__name__}: {exc}"
    finally:
        container.close()
    if error or not decoded or decoded < claimed:
        detail = f"{decoded} frames decode" + (f" of the {claimed} its header claims" if claimed else "")
        raise BadVideo("truncated" if decoded else "undecodable", path, detail + (f"; {error}" if error else ""))
    if frames:
        yield np.stack(frames)


def _seek(container, stream, first: int):
    """Jump to the keyframe at or before frame ``first`` (constant frame rate, timestamps present) and return
    ``frame -> index`` from its timestamp; ``None`` (decode from the start, counting) when that is not safe."""
    rate, base = stream.average_rate, stream.time_base
    if first < 2 * (rate or 0) or not rate or not base:  # near the start a seek does not pay
        return None
    start = stream.start_time or 0
    container.seek(start + int(first / (rate * base)), stream=stream, backward=True, any_frame=False)

    def index_of(frame) -> int:
        if frame.pts is None:
            raise BadVideo("undecodable", container.name, "frames without timestamps after a seek")
        return int(round(float((frame.pts - start) * base * rate)))

    return index_of


def _probe_rawframes(record: VideoRecord, min_frames: int) -> VideoInfo:
    from PIL import Image

    if not os.path.isdir(record.path):
        raise BadVideo("missing", record.path, "rawframe folder does not exist")
    first = record.frame_path(0)
    _check_file(first)
    try:
        with Image.open(first) as img:
            width, height = img.size
    except Exception as exc:
        raise BadVideo("undecodable", first, f"{type(exc).__name__}: {exc}") from exc
    if record.total < min_frames:
        raise BadVideo("too_short", record.path, f"{record.total} frames < {min_frames}")
    return VideoInfo(record.total, width, height, 0.0, "rawframes")


def _decode_rawframes(record: VideoRecord, ids) -> np.ndarray:
    from PIL import Image

    frames = {}
    for i in sorted(set(int(i) for i in ids)):
        path = record.frame_path(i)
        _check_file(path)
        try:
            with Image.open(path) as img:
                frames[i] = np.asarray(img.convert("RGB"))
        except Exception as exc:
            raise BadVideo("undecodable", path, f"{type(exc).__name__}: {exc}") from exc
    return np.stack([frames[int(i)] for i in ids])


def upscale_note(records, size: int, option: str) -> str | None:
    """A one-line note when the first readable video of ``records`` has a short side below ``size`` (its frames are
    upscaled to ``option`` ``size``), else ``None``."""
    for record in records[:5]:
        try:
            info = probe(record)
        except BadVideo:
            continue
        side = min(info.width, info.height)
        if side >= size:
            return None
        return (f"note: {record.path} is {info.width}x{info.height}: its frames are upscaled to {option} {size}; "
                f"{option} {max(side // 32 * 32, 32)} would fit the data")
    return None
