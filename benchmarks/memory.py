"""Peak CPU memory of one call, from torch.profiler's allocator events (the loss benchmark's meter)."""
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
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return peak
