"""Backend choice by measurement: time interchangeable implementations once at the real shapes, keep the fastest.

:func:`fastest` times every candidate (a zero-argument callable) in alternated rounds and returns the name of the
fastest (its best time), keeping the caller's fixed-order choice on a near tie (:data:`MARGIN`). A choice is
remembered in memory and on disk (``$VMAE2_CACHE/choices.json``, default ``~/.cache/vmae2``) under a key of the
kind of choice, the machine (CPU model and threads, or GPU name and capability), the library versions, and the
caller's own key (op, dtype, shapes), so later runs and the other ranks of a run reuse it instead of timing again. The file is rewritten atomically (merge, then rename).

No timing happens (the caller's fixed order decides, and ``None`` is returned) while ``torch.compile`` traces,
during CUDA graph capture, or with fewer than two candidates; ``VMAE2_MEASURE=0`` turns measured choices off
altogether (nothing timed, nothing remembered is used).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ENV_VAR = "VMAE2_MEASURE"
ROUNDS = 5  # timed calls per candidate, after WARMUP untimed calls each
WARMUP = 2
MARGIN = 0.05  # the fixed order's first candidate stays unless another is faster by more than this fraction

_memory: dict[str, dict] = {}  # full key -> {"choice", "ms"}
_chosen: dict[tuple, str] = {}  # (kind, device type, key, names) -> choice: the hot path's lookup


def cache_file() -> Path:
    root = Path(os.environ.get("VMAE2_CACHE", Path.home() / ".cache" / "vmae2"))
    return root / "choices.json"


def turned_off() -> bool:
    """``VMAE2_MEASURE=0``: no timing and no remembered choice; the callers' fixed order decides."""
    return os.environ.get(ENV_VAR, "1") == "0"


def enabled() -> bool:
    """Whether choices may be measured now (not turned off, not tracing, not capturing a CUDA graph)."""
    if turned_off() or torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device_type: str) -> str:
    """The hardware and software a timing depends on, as one string."""
    versions = f"torch {torch.__version__}"
    if device_type == "cuda":
        index = torch.cuda.current_device()
        cap = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} sm_{cap[0]}{cap[1]}, {versions}, cuda {torch.version.cuda}"
    return f"{cpu_name()}, {torch.get_num_threads()} threads, {versions}"


def _key(kind: str, device_type: str, key: tuple) -> str:
    return " | ".join([kind, machine(device_type), *map(str, key)])


def _read() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):  # no file yet, or a torn/foreign file: measure again
        return {}


def _write(full_key: str, entry: dict) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read(), full_key: entry}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".choices.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only home still runs; it only measures again next time
        pass


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def time_candidates(candidates: dict[str, Callable[[], object]], device_type: str,
                    rounds: int = ROUNDS) -> dict[str, float]:
    """Fastest milliseconds per call of each candidate over ``rounds`` alternated rounds, after :data:`WARMUP` calls
    each (the minimum: interference from the rest of the machine only ever adds time)."""
    for _ in range(WARMUP):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            _sync(device_type)
            start = time.perf_counter()
            fn()
            _sync(device_type)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: min(t) for name, t in times.items()}


def fastest(kind: str, device_type: str, key: tuple, names: tuple[str, ...],
            candidates: Callable[[], dict[str, Callable[[], object]]]) -> str | None:
    """The fastest of ``names`` for ``(kind, key)`` on this machine (near ties: :func:`pick`), or ``None`` where
    measuring is off (:func:`enabled`) and nothing is remembered. ``candidates()`` builds ``{name: zero-argument call}``; it is
    called only when a measurement is due, so a remembered choice costs one dictionary lookup."""
    if len(names) == 1 or turned_off():
        return names[0] if len(names) == 1 else None
    local = (kind, device_type, key, names)
    choice = _chosen.get(local)
    if choice is not None or torch.compiler.is_compiling():  # tracing: what this process knows; no file, no timing
        return choice
    full = _key(kind, device_type, key)
    entry = _memory.get(full) or _read().get(full)
    if entry is None or set(entry.get("ms", ())) != set(names):
        if not enabled():
            return None
        with torch.random.fork_rng(devices=[] if device_type != "cuda" else None):
            ms = time_candidates(candidates(), device_type)
        entry = {"choice": pick(ms, names), "ms": {n: round(t, 4) for n, t in ms.items()}}
        _write(full, entry)
    _memory[full] = entry
    _chosen[local] = entry["choice"]
    return entry["choice"]


def pick(ms: dict[str, float], names: tuple[str, ...]) -> str:
    """The fastest of ``ms``, except that ``names[0]`` (the fixed order's choice) stays within :data:`MARGIN`: a
    near tie is decided the same way in every run."""
    best = min(ms, key=ms.get)
    return names[0] if ms[names[0]] <= ms[best] * (1 + MARGIN) else best


def choices(kind: str | None = None) -> list[dict]:
    """The remembered choices of this process and of the cache file for this machine: ``{"kind", "key", "choice",
    "ms"}`` each (``kind`` filters)."""
    out, seen = [], set()
    machines = {machine("cpu")} | ({machine("cuda")} if torch.cuda.is_available() else set())
    for full, entry in [*_memory.items(), *_read().items()]:
        parts = full.split(" | ")
        if full in seen or len(parts) < 2 or parts[1] not in machines or (kind and parts[0] != kind):
            continue
        seen.add(full)
        out.append({"kind": parts[0], "key": " | ".join(parts[2:]), "choice": entry["choice"], "ms": entry["ms"]})
    return out


def used() -> list[dict]:
    """The measured (or remembered) choices this process has used: ``{"kind", "key", "choice", "ms"}`` each."""
    return [{"kind": kind, "key": " | ".join(map(str, key)), **_memory[_key(kind, device_type, key)]}
            for (kind, device_type, key, _), _ in _chosen.items()]


def summary(entry: dict) -> str:
    """``"math 1.62 ms < sdpa 4.80 ms"``: the candidates of one choice, fastest first."""
    return " < ".join(f"{n} {t:.2f} ms" for n, t in sorted(entry["ms"].items(), key=lambda kv: kv[1]))


def forget() -> None:
    """Forget the choices of this process (tests; the disk cache stays)."""
    _memory.clear()
    _chosen.clear()
