"""Synthetic, really-encoded video clips for loader tests and tiny pretraining runs.

Each clip is a textured background (smooth colour noise plus oriented stripes, optionally panning) with
1-3 textured discs or squares that move at constant velocity, bounce off the borders, rotate and pulse in
size. Pixels are a pure function of ``(seed, index, width, height, num_frames)`` through
``numpy.random.default_rng([seed, index])``; encoding goes through PyAV (FFmpeg bundled in its wheels).

Conventions: frames are ``uint8`` arrays ``[T, H, W, 3]`` in RGB order; sizes are given as ``(width,
height)``, both even (4:2:0 chroma). Files are named ``{index:05d}_{codec}_{w}x{h}.{ext}``. The list file
uses the official VideoMAE V2 pretraining format, one ``path 0 -1`` line per clip ("a video file, read
all of its frames").

PyAV is imported lazily: :func:`render_clip` needs only numpy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from vmae2.data.decode import to_rgb

__all__ = ["CODECS", "CodecSpec", "clip_name", "clip_plan", "render_clip", "encode_clip", "make_videos",
           "MOTIONS", "render_motion_clip", "make_labeled_videos",
           "make_bad_files", "decode_frames", "write_list"]


@dataclass(frozen=True)
class CodecSpec:
    """How one short codec name is written: FFmpeg encoder, file extension, pixel format, encoder options."""

    encoder: str
    ext: str
    pix_fmt: str
    options: tuple[tuple[str, str], ...] = ()
    bits_per_pixel: float = 0.0  # > 0: set an explicit bit rate of bits_per_pixel * w * h * fps


# Options favour speed on a 2-core machine while keeping the picture clean enough to learn from.
CODECS: dict[str, CodecSpec] = {
    # H.264 High profile with B-frames (so pts != dts, as in real data). mbtree=0: with macroblock-tree
    # rate control this libx264 gave different bitstreams for the same input from run to run.
    "h264": CodecSpec("libx264", "mp4", "yuv420p", (("preset", "veryfast"), ("crf", "20"), ("mbtree", "0"))),
    # libvpx-vp9 in constant-quality mode (crf with b=0), realtime speed settings.
    "vp9": CodecSpec("libvpx-vp9", "webm", "yuv420p",
                     (("deadline", "realtime"), ("cpu-used", "8"), ("crf", "30"), ("b", "0"),
                      ("row-mt", "0"), ("lag-in-frames", "0"))),
    # libvpx VP8 needs a bit rate even with crf.
    "vp8": CodecSpec("libvpx", "webm", "yuv420p",
                     (("deadline", "realtime"), ("cpu-used", "8"), ("crf", "10"), ("lag-in-frames", "0")),
                     bits_per_pixel=0.15),
    # Motion JPEG: every frame a keyframe; full-range ("J") 4:2:0.
    "mjpeg": CodecSpec("mjpeg", "avi", "yuvj420p", (("qmin", "2"), ("qmax", "6"))),
    # MPEG-4 part 2 (DivX-style): decodable by FFmpeg, NOT by DALI's video decoders. Used by make_bad_files.
    "mpeg4": CodecSpec("mpeg4", "avi", "yuv420p", (("qmin", "2"), ("qmax", "8"))),
}

DEFAULT_CODECS = ("h264", "vp9")
DEFAULT_SIZES = ((160, 120), (320, 240))
DEFAULT_NUM_FRAMES = (48, 96)


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - exercised only without PyAV
        raise ImportError("vmae2.data.synthetic needs PyAV to encode/decode video: pip install av") from e
    return av


# -- content -------------------------------------------------------------------------------------------

def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of ``[h, w, C]`` to ``[height, width, C]`` (corners aligned)."""
    gh, gw = grid.shape[:2]
    ys = np.linspace(0.0, gh - 1.0, height, dtype=np.float32)
    xs = np.linspace(0.0, gw - 1.0, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), gh - 2)
    x0 = np.minimum(xs.astype(np.int64), gw - 2)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bot = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return (top * (1 - wy) + bot * wy).astype(np.float32)


def _vivid_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated RGB colour in [0, 1]: one channel high, one low, one random."""
    c = np.empty(3, np.float32)
    hi, lo, mid = rng.permutation(3)
    c[hi], c[lo], c[mid] = rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.2), rng.uniform(0.0, 1.0)
    return c


def _bounce(p0: float, v: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Position at times ``t`` of a point starting at ``p0`` with velocity ``v``, reflecting in [lo, hi]."""
    span = max(hi - lo, 1e-6)
    u = np.mod(p0 - lo + v * t, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Static texture ``[height, width, 3]`` float32 in [0, 1]: smooth colour noise + soft oriented stripes."""
    cell = int(rng.integers(12, 28))
    grid = rng.uniform(0.0, 1.0, (height // cell + 2, width // cell + 2, 3)).astype(np.float32)
    noise = _upsample(grid, height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(10.0, 40.0)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
    tint = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    bg = 0.35 * noise + 0.25 * stripes[..., None] * tint + 0.4 * rng.uniform(0.15, 0.6, 3).astype(np.float32)
    return np.clip(bg, 0.0, 1.0)


OCTAVE_GAIN = 0.7  # amplitude ratio of successive octaves of the natural background


def _natural_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Scene-like texture ``[height, width, 3]`` float32 in [0, 1], close to the 1/f amplitude spectrum of natural
    images: a two-colour gradient (sky/ground), then colour noise from cells of half the frame down to 2 pixels, each
    octave half the cell size and ``OCTAVE_GAIN`` the amplitude of the one before, and a faint per-pixel grain. Most
    of the variance is at scales that a patch's neighbours predict; the fine texture and the grain are not."""
    out = _gradient_background(rng, height, width)
    cell, amplitude = max(height, width) / 2.0, 0.3
    while cell >= 2.0:
        grid = rng.uniform(-1.0, 1.0, (int(height / cell) + 2, int(width / cell) + 2, 3)).astype(np.float32)
        out += amplitude * _upsample(grid, height, width)
        cell, amplitude = cell / 2.0, amplitude * OCTAVE_GAIN
    out += rng.normal(0.0, 0.02, (height, width, 3)).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class _Object:
    square: bool
    radius: float          # base half-size in pixels
    pulse: float           # relative size amplitude
    pulse_period: float    # frames
    pulse_phase: float
    x: np.ndarray          # [T] centre x
    y: np.ndarray          # [T] centre y
    angle: np.ndarray      # [T] rotation, radians
    colours: np.ndarray    # [2, 3]
    texture: int           # 0 stripes, 1 checker, 2 rings
    tex_period: float


def _gradient_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear blend of two colours across the frame at a random angle ``[height, width, 3]`` float32."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    u = (np.cos(angle) * (xx - width / 2) + np.sin(angle) * (yy - height / 2)) / max(height, width) + 0.5
    c0, c1 = rng.uniform(0.1, 0.9, (2, 3)).astype(np.float32)
    return np.clip(c0 * (1 - u[..., None]) + c1 * u[..., None], 0.0, 1.0)


def _objects(rng: np.random.Generator, height: int, width: int, num_frames: int, flat: bool = False
             ) -> list[_Object]:
    t = np.arange(num_frames, dtype=np.float64)
    short = min(height, width)
    scale = short / 120.0  # speeds in pixels/frame scale with the frame size
    out = []
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(0.08, 0.2) * short * (1.5 if flat else 1.0)
        pulse = rng.uniform(0.0, 0.25)
        rmax = radius * (1 + pulse)
        speed = rng.uniform(1.0, 3.5) * scale
        heading = rng.uniform(0, 2 * np.pi)
        x = _bounce(rng.uniform(rmax, width - rmax), speed * np.cos(heading), rmax, width - rmax, t)
        y = _bounce(rng.uniform(rmax, height - rmax), speed * np.sin(heading), rmax, height - rmax, t)
        angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.12, 0.12) * t
        colours = np.stack([_vivid_colour(rng), _vivid_colour(rng) * rng.uniform(0.3, 0.7)])
        out.append(_Object(square=bool(rng.integers(2)), radius=radius, pulse=0.0 if flat else pulse,
                           pulse_period=rng.uniform(24, 96), pulse_phase=rng.uniform(0, 2 * np.pi),
                           x=x, y=y, angle=angle, colours=colours, texture=int(rng.integers(3)),
                           tex_period=rng.uniform(0.35, 0.7) * radius * (np.inf if flat else 1.0)))
    return out


def _draw(frame: np.ndarray, obj: _Object, i: int) -> None:
    """Composite object ``obj`` at frame ``i`` into ``frame`` ``[H, W, 3]`` float32, in place, anti-aliased."""
    h, w = frame.shape[:2]
    # Python floats keep the pixel math in float32 (numpy scalars would promote it to float64).
    r = float(obj.radius * (1 + obj.pulse * np.sin(2 * np.pi * i / obj.pulse_period + obj.pulse_phase)))
    cx, cy = float(obj.x[i]), float(obj.y[i])
    reach = r * (1.5 if obj.square else 1.0) + 2  # a rotated square reaches r*sqrt(2)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, w)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx += 0.5 - cx
    dy += 0.5 - cy
    c, s = float(np.cos(obj.angle[i])), float(np.sin(obj.angle[i]))
    u, v = c * dx + s * dy, -s * dx + c * dy  # object-frame coordinates (rotate by -angle)
    dist = np.maximum(np.abs(u), np.abs(v)) if obj.square else np.sqrt(u * u + v * v)
    alpha = np.clip(r - dist + 0.5, 0.0, 1.0)[..., None]
    p = float(obj.tex_period)
    if obj.texture == 0:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * u / p)
    elif obj.texture == 1:
        pattern = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    else:
        pattern = 0.5 + 0.5 * np.cos(2 * np.pi * np.sqrt(u * u + v * v) / p)
    pattern = pattern[..., None]
    colour = obj.colours[0] * pattern + obj.colours[1] * (1 - pattern)
    region = frame[y0:y1, x0:x1]
    region *= 1 - alpha
    region += alpha * colour


STYLES = ("textured", "flat")


def render_clip(seed: int, index: int, width: int, height: int, num_frames: int, style: str = "textured"
                ) -> np.ndarray:
    """Pixels of clip ``index`` of a set: ``uint8 [num_frames, height, width, 3]`` RGB, deterministic.

    Randomness comes only from ``numpy.random.default_rng([seed, index])``; the result does not depend on
    the codec, so the same clip can be written with several codecs. ``style="textured"``: colour-noise and
    stripe backgrounds, textured pulsing objects (detail finer than a 16-pixel patch: hard to reconstruct);
    ``"flat"``: a two-colour gradient background and larger flat-coloured objects, which a tiny model learns to
    reconstruct from a few visible patches in minutes (the pretraining demo).
    """
    if width <= 0 or height <= 0 or num_frames <= 0:
        raise ValueError(f"need positive width/height/num_frames, got {width}x{height}x{num_frames}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    rng = np.random.default_rng([int(seed), int(index)])
    pad = max(8, min(height, width) // 4)
    canvas = (_gradient_background if style == "flat" else _background)(rng, height + 2 * pad, width + 2 * pad)
    t = np.arange(num_frames, dtype=np.float64)
    if rng.uniform() < 0.5:  # slow camera pan, bouncing inside the padded canvas
        pan = rng.uniform(0.2, 0.8) * min(height, width) / 120.0
        heading = rng.uniform(0, 2 * np.pi)
        ox = np.rint(_bounce(rng.uniform(0, 2 * pad), pan * np.cos(heading), 0, 2 * pad, t)).astype(int)
        oy = np.rint(_bounce(rng.uniform(0, 2 * pad), pan * np.sin(heading), 0, 2 * pad, t)).astype(int)
    else:
        ox = oy = np.full(num_frames, pad, dtype=int)
    objects = _objects(rng, height, width, num_frames, flat=style == "flat")
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frame = canvas[oy[i]:oy[i] + height, ox[i]:ox[i] + width].copy()
        for obj in objects:
            _draw(frame, obj, i)
        out[i] = np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


# -- encoding ------------------------------------------------------------------------------------------

def encode_clip(frames: np.ndarray, path: str | os.PathLike, codec: str = "h264", *, fps: int = 25,
                gop: int | None = None, threads: int = 1, container_options: dict[str, str] | None = None,
                ) -> Path:
    """Encode ``uint8 [T, H, W, 3]`` RGB ``frames`` to ``path`` with codec ``codec`` (a key of :data:`CODECS`).

    ``gop`` is the keyframe interval (default ``fps``); ``threads=1`` keeps the encoder output identical
    across machines with different core counts. The container format follows the file extension. Muxing is
    bit-exact, so with one PyAV build the same frames give byte-identical files.
    """
    av = _import_av()
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    num_frames, height, width = frames.shape[:3]
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for 4:2:0 video, got {width}x{height}")
    spec = CODECS[codec]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bitexact: no muxer version strings or random Matroska UIDs, so equal input gives equal bytes.
    options = {"fflags": "+bitexact", **(container_options or {})}
    with av.open(str(path), mode="w", container_options=options) as container:
        stream = container.add_stream(spec.encoder, rate=fps, options=dict(spec.options))
        stream.width, stream.height, stream.pix_fmt = width, height, spec.pix_fmt
        stream.codec_context.gop_size = gop or fps
        stream.codec_context.thread_count = threads
        if spec.bits_per_pixel:
            stream.bit_rate = int(spec.bits_per_pixel * width * height * fps)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush delayed (B-)frames
    return path


def decode_frames(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of the first video stream: ``uint8 [T, H, W, 3]`` RGB. Raises on broken files."""
    av = _import_av()
    with av.open(str(path)) as container:
        return np.stack([to_rgb(f) for f in container.decode(video=0)])


# -- data sets -----------------------------------------------------------------------------------------

def clip_name(index: int, codec: str, width: int, height: int) -> str:
    """``{index:05d}_{codec}_{w}x{h}.{ext}``."""
    return f"{index:05d}_{codec}_{width}x{height}.{CODECS[codec].ext}"


def clip_plan(index: int, codecs: Sequence[str] = DEFAULT_CODECS,
              sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
              num_frames: Sequence[int] | int = DEFAULT_NUM_FRAMES) -> tuple[str, tuple[int, int], int]:
    """``(codec, (w, h), T)`` of clip ``index``: the options are cycled mixed-radix (codec fastest, then
    size, then frame count), so ``len(codecs) * len(sizes) * len(num_frames)`` clips cover every combination."""
    frame_opts = (num_frames,) if isinstance(num_frames, int) else tuple(num_frames)
    nc, ns = len(codecs), len(sizes)
    return (codecs[index % nc], tuple(sizes[(index // nc) % ns]),
            frame_opts[(index // (nc * ns)) % len(frame_opts)])


def write_list(paths: Sequence[str | os.PathLike], list_path: str | os.PathLike,
               relative_to: str | os.PathLike | None = None) -> Path:
    """Write the official pretraining list: one ``path 0 -1`` line per video.

    Paths are written absolute, or relative to ``relative_to`` (then pass that folder as the official
    ``--data_root``). Paths must not contain spaces: the official reader splits lines on spaces.
    """
    lines = []
    for p in paths:
        p = Path(p).resolve()
        s = os.path.relpath(p, Path(relative_to).resolve()) if relative_to is not None else str(p)
        if " " in s:
            raise ValueError(f"path contains a space, which the official list format cannot hold: {s!r}")
        lines.append(f"{s} 0 -1\n")
    list_path = Path(list_path)
    list_path.write_text("".join(lines))
    return list_path


def make_videos(out_dir: str | os.PathLike, count: int, *, seed: int = 0,
                codecs: Sequence[str] = DEFAULT_CODECS, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
                num_frames: Sequence[int] | int = DEFAULT_NUM_FRAMES, fps: int = 25, start: int = 0,
                write_list: bool = True, list_name: str = "train.csv",
                list_paths: Literal["absolute", "relative"] = "absolute", style: str = "textured") -> list[Path]:
    """Write ``count`` encoded clips (indices ``start .. start+count-1``) into ``out_dir``; return their paths.

    Clip ``i`` gets codec/size/length from :func:`clip_plan` and pixels from
    ``render_clip(seed, i, w, h, T, style)``. With ``write_list``, ``out_dir/list_name`` holds one ``path 0 -1``
    line per clip, paths absolute or relative to ``out_dir`` (``list_paths``).
    """
    unknown = [c for c in codecs if c not in CODECS]
    if unknown:
        raise ValueError(f"unknown codecs {unknown}; choose from {sorted(CODECS)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        codec, (w, h), t = clip_plan(index, codecs, sizes, num_frames)
        frames = render_clip(seed, index, w, h, t, style)
        paths.append(encode_clip(frames, out_dir / clip_name(index, codec, w, h), codec, fps=fps))
    if write_list:
        _write_list(paths, out_dir / list_name, relative_to=out_dir if list_paths == "relative" else None)
    return paths


_write_list = write_list  # make_videos' keyword argument shadows the function name


# -- labeled sets ----------------------------------------------------------------------------------------

MOTIONS = {"up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0), "still": (0.0, 0.0)}


def render_motion_clip(seed: int, index: int, motion: str, width: int, height: int, num_frames: int,
                       speed: tuple[float, float] = (4.0, 8.0)) -> np.ndarray:
    """A camera pan across a random block texture in direction ``motion`` (a key of :data:`MOTIONS`; ``still``
    does not move) at a random speed in pixels/frame: ``uint8 [num_frames, height, width, 3]``. The classes
    differ only in motion, so a classifier must use time (a single frame says nothing about the label); a
    horizontal flip swaps left and right (train such sets without flips, like SSv2)."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; choose from {sorted(MOTIONS)}")
    rng = np.random.default_rng([int(seed), int(index), 0x10BE1])
    v = rng.uniform(*speed)
    travel = int(np.ceil(v * num_frames)) + 2
    cell = int(rng.integers(3, 7))  # sharp random blocks: motion is visible inside every 16 px patch
    blocks = rng.uniform(0.0, 1.0, ((height + travel) // cell + 2, (width + travel) // cell + 2, 3))
    canvas = np.repeat(np.repeat(blocks, cell, axis=0), cell, axis=1)[:height + travel, :width + travel]
    dx, dy = MOTIONS[motion]
    t = np.arange(num_frames)
    # the window moves by (dx, dy) * v per frame, starting from the side it moves away from
    ox = np.rint((travel - 1) * (dx < 0) + dx * v * t).astype(int) if dx else np.full(num_frames, travel // 2)
    oy = np.rint((travel - 1) * (dy < 0) + dy * v * t).astype(int) if dy else np.full(num_frames, travel // 2)
    frames = np.stack([canvas[y:y + height, x:x + width] for x, y in zip(ox, oy)])
    return np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)


def render_scene_clip(seed: int, index: int, motion: str, width: int, height: int, num_frames: int
                      ) -> np.ndarray:
    """A textured shape moving in direction ``motion`` (a key of :data:`MOTIONS`) across a natural-looking
    background (:func:`_natural_background`, the camera still): ``uint8 [num_frames, height, width, 3]``. The shape
    crosses about 60% of the frame over the clip, so any window of a few frames shows the motion."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; choose from {sorted(MOTIONS)}")
    rng = np.random.default_rng([int(seed), int(index), 0x5CE7E])
    canvas = _natural_background(rng, height, width)
    short = min(height, width)
    radius = rng.uniform(0.12, 0.2) * short
    dx, dy = MOTIONS[motion]
    t = np.arange(num_frames, dtype=np.float64)
    travel = 0.6 * (width if dx else height) / max(num_frames - 1, 1)
    # starts where the motion leaves room to travel; a still shape stays anywhere inside the frame
    x0 = width / 2 - dx * 0.3 * width + rng.uniform(-0.1, 0.1) * width
    y0 = height / 2 - dy * 0.3 * height + rng.uniform(-0.1, 0.1) * height
    obj = _Object(square=bool(rng.integers(2)), radius=radius, pulse=0.0, pulse_period=1.0, pulse_phase=0.0,
                  x=x0 + dx * travel * t, y=y0 + dy * travel * t, angle=rng.uniform(0, 2 * np.pi) + 0 * t,
                  colours=np.stack([_vivid_colour(rng), _vivid_colour(rng) * rng.uniform(0.3, 0.7)]),
                  texture=int(rng.integers(3)), tex_period=rng.uniform(0.35, 0.7) * radius)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frame = canvas.copy()
        _draw(frame, obj, i)
        out[i] = np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def make_class_folders(out_dir: str | os.PathLike, motions: Sequence[str], count: int, *, seed: int = 0,
                       size: tuple[int, int] = (80, 64), num_frames: int = 32, codec: str = "h264",
                       fps: int = 25) -> list[Path]:
    """A folder of class folders, the layout ``python -m vmae2.data.make_lists`` reads: ``count`` clips of each
    motion class (:func:`render_motion_clip`) as ``out_dir/{motion}/{motion}_{i:03d}.{ext}``."""
    out = Path(out_dir)
    return [encode_clip(render_motion_clip(seed, label * count + i, motion, *size, num_frames),
                        out / motion / f"{motion}_{i:03d}.{CODECS[codec].ext}", codec, fps=fps)
            for label, motion in enumerate(motions) for i in range(count)]


def make_labeled_videos(out_dir: str | os.PathLike, per_class: dict[str, int], *, seed: int = 0,
                        motions: Sequence[str] = ("up", "down", "left", "right"), size: tuple[int, int] = (80, 64),
                        num_frames: int = 32, codec: str = "h264", fps: int = 25) -> dict[str, Path]:
    """Write a labeled motion set: for each split (``{"train": 16, "test": 4}``: clips per class)
    the clips ``{split}/{motion}_{i:03d}.{ext}`` and an official fine-tune CSV ``{split}.csv`` (``path label``,
    absolute paths), plus ``classes.txt`` (one class name per line, line = label). Returns the list paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{m}\n" for m in motions))
    lists, offset = {}, 0
    for split, count in per_class.items():
        lines = []
        for label, motion in enumerate(motions):
            for i in range(count):
                frames = render_motion_clip(seed, offset + label * count + i, motion, *size, num_frames)
                path = encode_clip(frames, out / split / f"{motion}_{i:03d}.{CODECS[codec].ext}", codec, fps=fps)
                lines.append(f"{path.resolve()} {label}\n")
        offset += count * len(motions)
        lists[split] = out / f"{split}.csv"
        lists[split].write_text("".join(lines))
    return lists


# A user's own folder: containers, codecs, sizes (landscape, 16:9, portrait), frame rates and lengths vary clip by
# clip; names carry spaces and non-ASCII letters.
MESSY_VARIANTS = (("h264", "mp4", (160, 120), 24, 40), ("vp9", "webm", (192, 108), 30, 48),
                  ("mjpeg", "avi", (160, 120), 25, 32), ("h264", "mkv", (108, 192), 60, 64),
                  ("h264", "mp4", (256, 144), 30, 56))
MESSY_NAMES = ("clip {i}", "Aufnahme_{i} ü", "vidéo {i}", "take-{i}")


def make_messy_folder(out_dir: str | os.PathLike, motions: Sequence[str] = ("up", "left", "still"),
                      per_class: int = 10, *, seed: int = 0) -> dict[str, list[Path]]:
    """A class folder per motion (:func:`render_scene_clip`) of ``per_class`` clips in the mixed formats of
    :data:`MESSY_VARIANTS`, plus the trouble a real folder holds: a truncated and an empty ``.mp4``, a text file
    named ``.mp4``, a 5-frame clip (in the class folders) and a ``notes.txt``. Returns ``{"good": paths, "bad":
    paths}`` (``notes.txt`` is neither: no video extension)."""
    out = Path(out_dir)
    good: list[Path] = []
    for label, motion in enumerate(motions):
        for i in range(per_class):
            codec, ext, (w, h), fps, frames = MESSY_VARIANTS[(label + i) % len(MESSY_VARIANTS)]
            name = MESSY_NAMES[i % len(MESSY_NAMES)].format(i=i)
            clip = render_scene_clip(seed, label * per_class + i, motion, w, h, frames)
            good.append(encode_clip(clip, out / motion / f"{name}.{ext}", codec, fps=fps))
    first, second = out / motions[0], out / motions[-1]
    data = good[0].read_bytes()
    bad = [first / "cut off.mp4", first / "empty.mp4", second / "readme.mp4", second / "five frames.mp4"]
    bad[0].write_bytes(data[: len(data) // 3])
    bad[1].write_bytes(b"")
    bad[2].write_text("not a video\n")
    encode_clip(render_scene_clip(seed, 9999, motions[-1], 160, 120, 5), bad[3], "h264", fps=25)
    (out / "notes.txt").write_text("shot on my phone\n")
    return {"good": good, "bad": bad}


# -- deliberately broken inputs ------------------------------------------------------------------------

def make_bad_files(out_dir: str | os.PathLike, *, seed: int = 0, size: tuple[int, int] = (160, 120),
                   num_frames: int = 48, fps: int = 25) -> dict[str, Path]:
    """Write inputs a robust loader must survive; return ``{reason: path}``.

    - ``missing``: a path that does not exist (not created).
    - ``empty``: a zero-byte ``.mp4``.
    - ``truncated``: the first 30% of a valid H.264 ``.mp4`` whose index (``moov``) is at the end, so the
      file cannot even be opened.
    - ``truncated_faststart``: the first 30% of a valid ``.mp4`` with ``moov`` up front: it opens and its
      header claims ``num_frames`` frames, but only part of them decode.
    - ``random_bytes``: 4 KiB of random bytes named ``.mp4``.
    - ``text``: a text file named ``.mp4``.
    - ``too_short``: a valid H.264 ``.mp4`` of only 3 frames.
    - ``unsupported_codec``: a valid MPEG-4 part 2 ``.avi`` (FFmpeg decodes it, DALI does not).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng([int(seed), 0xBAD])
    frames = render_clip(seed, 0xBAD, w, h, num_frames)
    files: dict[str, Path] = {}

    files["missing"] = out / "bad_missing.mp4"
    if files["missing"].exists():
        files["missing"].unlink()

    files["empty"] = out / "bad_empty.mp4"
    files["empty"].write_bytes(b"")

    for key, opts in (("truncated", None), ("truncated_faststart", {"movflags": "faststart"})):
        full = encode_clip(frames, out / f"_full_{key}.mp4", "h264", fps=fps, container_options=opts)
        data = full.read_bytes()
        full.unlink()
        files[key] = out / f"bad_{key}.mp4"
        files[key].write_bytes(data[: int(len(data) * 0.3)])

    files["random_bytes"] = out / "bad_random_bytes.mp4"
    files["random_bytes"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())

    files["text"] = out / "bad_text.mp4"
    files["text"].write_text("this is not a video, just text with a .mp4 extension\n" * 8)

    files["too_short"] = encode_clip(frames[:3], out / "bad_too_short.mp4", "h264", fps=fps)
    files["unsupported_codec"] = encode_clip(frames, out / "bad_unsupported_codec.avi", "mpeg4", fps=fps)
    return files
