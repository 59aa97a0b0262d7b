"""Peak and held CPU memory of one call, from torch.profiler's allocator events (the loss benchmark's meter)."""
from __future__ import annotations

import torch


def cpu_peak_extra_bytes(fn) -> int:
    """Peak CPU memory one call of ``fn`` allocates above what was allocated before it (its inputs), in bytes.

    Walks ``torch.profiler``'s memory events (``profile_memory=True``: one event per allocation and free of the
    c10 CPU allocator, signed sizes) in time order and takes the maximum of the running total. Every tensor counts,
    those allocated inside C++ ops (the native extension's outputs) and by autograd included; scratch that bypasses
    the allocator (the native loss's per-thread ``std::vector`` of one token's target, a few KB) does not.
    ``tests/test_peak_memory.py`` checks it on known allocation patterns.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    total = peak = 0
    for e in _memory_events(prof):
        total += e.nbytes()
        peak = max(peak, total)
    return peak


def cpu_held_bytes(fn) -> int:
    """Bytes one call of ``fn`` allocates and still holds when it returns, its result alive: for a forward pass, the
    tensors saved for backward and the output. The meter of :func:`cpu_peak_extra_bytes`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    held = sum(e.nbytes() for e in _memory_events(prof))
    del out
    return held


def _memory_events(prof) -> list:
    """The CPU allocator's allocation (+) and free (-) events of a finished profile, in time order."""
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    return sorted(events, key=lambda e: e.start_ns())
