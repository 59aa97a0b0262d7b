"""Benchmark configuration: machine info for pytest-benchmark and a per-call summary table.

Unlike ``tests/conftest.py`` this file does NOT set ``TRITON_INTERPRET``: the interpreter says nothing about
speed, so on a CPU-only machine the Triton providers skip (see ``test_kernel_benchmarks.py``).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform

import pytest
import torch

from vmae2_kernels import dispatch
from vmae2_kernels.ops import OPS

_ROWS = pytest.StashKey[list]()
_NO_PLUGIN = pytest.StashKey[object]()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def pytest_configure(config):
    config.stash[_ROWS] = []
    config.stash[_NO_PLUGIN] = None if config.pluginmanager.hasplugin("benchmark") else \
        "pytest-benchmark is not installed (pip install vmae2[bench])"
    if config.stash[_NO_PLUGIN]:
        config.addinivalue_line("markers", "benchmark: pytest-benchmark options (inert without the plugin)")
    threads = os.environ.get("VMAE2_BENCH_THREADS")
    if threads:  # e.g. 1 on a shared CPU box, where OpenMP barriers between busy cores wreck the timings
        torch.set_num_threads(int(threads))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-benchmark (the [bench] extra); unknown without it
def pytest_benchmark_update_machine_info(config, machine_info):
    """GPU name (or "cpu"), torch / CUDA / triton versions and why each kernel backend can or cannot run."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    machine_info["python"] = platform.python_version()
    machine_info["torch"] = torch.__version__
    machine_info["torch_cuda"] = torch.version.cuda
    machine_info["triton"] = _version("triton")
    machine_info["dali"] = _version("nvidia-dali-cuda130")
    machine_info["vmae2"] = _version("vmae2")
    machine_info["gpu"] = torch.cuda.get_device_name() if cuda else "cpu"
    if cuda:
        major, minor = torch.cuda.get_device_capability()
        machine_info["gpu_capability"] = f"sm_{major}{minor}"
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    if hasattr(os, "getloadavg"):  # CPU timings on a shared machine are only as good as its idle time
        machine_info["loadavg_1min"] = os.getloadavg()[0]
    machine_info["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "unset")
    machine_info["vmae2_backend_env"] = os.environ.get(dispatch.ENV_VAR, "unset")
    machine_info["bench_full"] = os.environ.get("VMAE2_BENCH_FULL", "unset")
    machine_info["bench_batch"] = os.environ.get("VMAE2_BENCH_BATCH", "unset")
    machine_info["kernel_backends"] = {op: {b: r for b, r in dispatch.report(op, device).items()} for op in OPS}


def pytest_collection_modifyitems(config, items):
    """Without pytest-benchmark every benchmark skips with the reason (no 'fixture not found' errors)."""
    reason = config.stash[_NO_PLUGIN]
    for item in items:
        if reason and "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def bench_rows(request) -> list:
    """Rows of ``benchmark.extra_info`` collected for the summary table printed at the end of the run."""
    return request.config.stash[_ROWS]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("vmae2 kernel benchmarks: per call (the pytest-benchmark table above is per round)")
    head = f"{'op':24s} {'provider':15s} {'shape':6s} {'batch':>5s} {'dtype':8s} {'us/call':>11s} " \
           f"{'GB/s':>8s} {'calls/rnd':>9s} {'peak extra MiB':>14s}"
    tr.write_line(head)
    for r in rows:
        peak = r.get("peak_extra_mem_mib")
        tr.write_line(f"{r['op']:24s} {r['provider']:15s} {r['shape']:6s} {r['batch']:5d} {r['dtype']:8s} "
                      f"{r['us_per_call']:11.1f} {r['gbps']:8.2f} {r['calls_per_round']:9d} "
                      f"{'' if peak is None else f'{peak:.1f}':>14s}")
