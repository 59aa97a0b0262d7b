"""benchmarks/report.py on a hand-built pytest-benchmark JSON: markdown content, PNG, CLI."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]


def _stats(median: float, rounds: int = 5) -> dict:
    # The fields pytest-benchmark 5 writes per benchmark.
    return {"min": median * 0.9, "max": median * 1.2, "mean": median * 1.02, "stddev": median * 0.05,
            "rounds": rounds, "median": median, "iqr": median * 0.04, "q1": median * 0.98, "q3": median * 1.02,
            "iqr_outliers": 0, "stddev_outliers": 1, "outliers": "1;0", "ld15iqr": median * 0.9,
            "hd15iqr": median * 1.2, "ops": 1 / median, "total": median * rounds, "iterations": 1}


def _bench(group, name, median, extra=None, rounds=5) -> dict:
    return {"group": group, "name": name, "fullname": f"benchmarks/test_x.py::{name}", "params": None,
            "param": None, "extra_info": extra if extra is not None else {}, "options": {"disable_gc": False},
            "stats": _stats(median, rounds)}


def _kernel_info(provider, us, calls, gbps, **kw):
    return {"op": "token_gather", "provider": provider, "shape": "B", "batch": 2, "dtype": "float32",
            "device": "cpu", "calls_per_round": calls, "us_per_call": us, "bytes": 123456, "gbps": gbps, **kw}


DOC = {
    "machine_info": {
        "node": "box", "processor": "x86_64", "machine": "x86_64", "python_implementation": "CPython",
        "python_version": "3.11.9", "cpu": {"brand_raw": "Test CPU 9000", "count": 2},
        "python": "3.11.9", "torch": "2.13.0+cpu", "torch_cuda": None, "triton": "3.8.0", "vmae2": "0.1.0",
        "gpu": "cpu", "torch_threads": 2, "cpu_count": 2, "loadavg_1min": 0.5, "triton_interpret": "unset",
        "vmae2_backend_env": "unset", "bench_full": "unset", "bench_batch": "unset", "kernel_backends": {},
    },
    "commit_info": {"id": "0123456789abcdef", "dirty": True, "branch": "main"},
    "benchmarks": [
        # per-round medians differ from per-call times: calls per round differ between arms
        _bench("token_gather B B=2", "test_op[token_gather-torch-B]", 50 * 20e-6,
               _kernel_info("torch", 20.0, 50, 1.5, baseline="torch")),
        _bench("token_gather B B=2", "test_op[token_gather-compiled-B]", 10 * 5e-6,
               _kernel_info("compiled", 5.0, 10, 6.0)),
        _bench("token_gather B B=2", "test_op[token_gather-cpp-B]", 50 * 40e-6,
               _kernel_info("cpp|x", 40.0, 50, 0.75)),
        _bench("data-cpu", "test_official_style_loader", 0.703,
               {"loader": "official-style (PyAV + PIL per frame)", "clips_per_epoch": 32, "clips_per_s": 45.52},
               rounds=3),
        _bench("data-cpu", "test_vmae2_torch_loader", 0.468,
               {"loader": "vmae2 torch (PyAV + batched resize)", "clips_per_epoch": 32, "clips_per_s": 68.38},
               rounds=3),
        _bench(None, "test_bare[a-b]", 0.002, None),  # no group, no extra_info
        _bench("odd", "test_odd", 0.001, {"us_per_call": "n/a", "gbps": None}),  # junk fields
    ],
    "datetime": "2030-01-01T00:00:00.000000+00:00",
    "version": "5.3.1",
}


@pytest.fixture
def results(tmp_path) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(DOC))
    return path


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_markdown_tables(results, tmp_path):
    out = tmp_path / "out"
    assert report.main([str(results), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # header: machine info
    assert "Test CPU 9000" in md and "2 logical cores" in md
    assert "**GPU**: cpu" in md
    assert "**torch** 2.13.0+cpu" in md and "**triton** 3.8.0" in md and "**DALI** not recorded" in md
    assert "commit 0123456789ab (dirty)" in md
    # kernel group: baseline named in extra_info; ratios from per-call times, not per-round medians
    k = _section(md, "token_gather B B=2")
    assert "Baseline: `torch`" in k and "guessed" not in k
    assert "| test_op[token_gather-torch-B] | torch | 1 ms | 20.0 | 1.50 GB/s | 5 | 1.00x (baseline) |" in k
    assert "| compiled | 50 µs | 5.0 | 6.00 GB/s | 5 | **4.00x** |" in k
    assert "cpp\\|x" in k and "**0.50x**" in k  # pipes escaped
    # data group: baseline guessed from the "official" label, clips/s shown
    d = _section(md, "data-cpu")
    assert "Baseline: `official-style (PyAV + PIL per frame)` (guessed from its name)" in d
    assert "703 ms" in d and "45.5 clips/s" in d and "68.4 clips/s" in d
    assert "**1.50x**" in d
    # missing extra_info and group: a row with the test id as arm and no ratio column
    bare = _section(md, report.NO_GROUP)
    assert "| test_bare[a-b] | a-b | 2 ms | 2,000.0 | — | 5 |" in bare
    assert "speed-up" not in bare
    odd = _section(md, "odd")
    assert "| test_odd | test_odd | 1 ms | 1,000.0 | — | 5 |" in odd


# per-call seconds of each group's timed rows, in order: us_per_call, else median / calls_per_round, else median
PER_CALL = {"token_gather B B=2": [20e-6, 5e-6, 40e-6], "data-cpu": [0.703, 0.468], report.NO_GROUP: [0.002],
            "odd": [0.001]}
GREY, BLUE, RED = "#969696", "#4285cc", "#d6604d"  # baseline, faster (or no baseline), slower


def test_png(results, tmp_path):
    from matplotlib.colors import to_hex

    _, groups = report.load(results)
    assert report.chart(groups, tmp_path / "report.png", title="a run") is None
    fig, _ = report.figure(groups, title="a run")
    fig.canvas.draw()  # the layout the PNG was saved with
    with Image.open(tmp_path / "report.png") as img:
        assert img.format == "PNG" and img.size == (1100, round(fig.bbox.height))
        png = np.asarray(img.convert("RGB")).astype(int)
    assert [ax.get_title(loc="left") for ax in fig.axes] == list(PER_CALL)  # one panel per group
    for ax in fig.axes:
        bars = ax.patches
        assert [b.get_width() for b in bars] == pytest.approx(PER_CALL[ax.get_title(loc="left")])  # seconds
        assert [b.get_y() + b.get_height() / 2 for b in bars] == list(range(len(bars)))  # one row each, in order
        assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first row on top
    gather = fig.axes[0]
    assert [to_hex(b.get_facecolor()) for b in gather.patches] == [GREY, BLUE, RED]
    assert [t.get_text() for t in gather.texts] == ["20 µs  (baseline)", "5 µs  4.00x", "40 µs  0.50x"]
    assert [t.get_text() for t in gather.get_yticklabels()] == ["torch", "compiled", "cpp|x"]
    assert "speed-up vs torch" in gather.get_xlabel()
    assert "(guessed)" in fig.axes[1].get_xlabel()
    # the PNG: each bar's colour halfway along it
    for ax in fig.axes:
        for b in ax.patches:
            px, py = ax.transData.transform((b.get_width() / 2, b.get_y() + b.get_height() / 2))
            want = np.array([int(to_hex(b.get_facecolor())[i:i + 2], 16) for i in (1, 3, 5)])
            assert np.abs(png[int(round(fig.bbox.height) - py), int(px)] - want).max() <= 2


def test_png_without_matplotlib(results, tmp_path, no_matplotlib, capsys):
    _, groups = report.load(results)
    reason = report.chart(groups, tmp_path / "report.png")
    assert reason.startswith("report.png skipped: matplotlib is not importable") and "vmae2[plot]" in reason
    assert not (tmp_path / "report.png").exists()
    assert report.main([str(results), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "report.png skipped: matplotlib is not importable" in out and "7 benchmarks in 4 groups" in out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["report.md"]


def test_cli_baseline_option_and_module_entry_point(results, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.report", str(results), "--out", str(out),
                           "--baseline", "compiled"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "7 benchmarks in 4 groups" in proc.stdout
    md = (out / "report.md").read_text()
    # extra_info's baseline wins over --baseline; --baseline applies where none is named
    assert "Baseline: `torch`" in _section(md, "token_gather B B=2")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(results), "--out",
                           str(tmp_path / "script"), "--baseline", "vmae2 torch (PyAV + batched resize)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    d = _section((tmp_path / "script" / "report.md").read_text(), "data-cpu")
    assert "Baseline: `vmae2 torch (PyAV + batched resize)`" in d and "**0.67x**" in d


def test_empty_and_bad_input(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    assert report.main([str(empty), "--out", str(tmp_path / "e")]) == 0
    assert "No benchmarks" in (tmp_path / "e" / "report.md").read_text()
    with Image.open(tmp_path / "e" / "report.png") as img:
        assert img.size[0] == 1100
    fig, _ = report.figure([])
    assert [t.get_text() for t in fig.texts] == ["no benchmarks"] and fig.axes == []
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert report.main([str(bad), "--out", str(tmp_path / "b")]) == 2
    assert report.main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "m")]) == 2


def _real_group_doc(gpu: str) -> dict:
    """Two ops at a real shape, as the kernel benchmark suite records them (op, shape, batch, dtype)."""
    info = lambda provider, us, **kw: {"op": "token_gather", "provider": provider, "shape": "ViT-B", "batch": 32,  # noqa
                                       "dtype": "bfloat16", "device": gpu, "calls_per_round": 10, "us_per_call": us,
                                       **kw}
    loss = {"op": "recon_loss_fwd_bwd", "provider": "triton", "shape": "ViT-B", "batch": 32, "dtype": "bfloat16",
            "us_per_call": 400.0, "calls_per_round": 10}
    return {"machine_info": {**DOC["machine_info"], "gpu": gpu},
            "benchmarks": [_bench("token_gather ViT-B B=32", "test_op[token_gather-torch-ViT-B]", 10 * 40e-6,
                                  info("torch", 40.0, baseline="torch")),
                           _bench("token_gather ViT-B B=32", "test_op[token_gather-triton-ViT-B]", 10 * 20e-6,
                                  info("triton", 20.0)),
                           _bench("recon_loss_fwd_bwd ViT-B B=32", "test_loss_fwd_bwd[triton-ViT-B]", 10 * 400e-6,
                                  loss),
                           _bench("data-cpu", "test_vmae2_torch_loader", 0.468, {"loader": "torch"})]}


# token_gather ViT-B, batch 32, bf16 (160 visible of 1568 tokens, width 768): bf16 rows read and written
# (2 x 32*160*768*2 B), int64 ids (32*160*8 B), the fp32 position table read once (1568*768*4 B) = 20,586,496 B;
# the floor is that over HBM bandwidth (A100 1.9 TB/s: 10.8 µs, H100 3.0 TB/s: 6.9 µs).
GATHER_MB, GATHER_FLOOR_US = "20.6", {"A100-80GB": "10.8", "H100-80GB": "6.9"}
PREDICTED_S = {"A100-80GB": 25e-6, "H100-80GB": 8e-6}  # stand-ins for the model's time, to check what is shown


def _predict_with_known_times(monkeypatch):
    """The roofline model as is (traffic, floor, bound), with the predicted time set to PREDICTED_S."""
    model = report.roofline_module()
    real = model.predict

    def predict(op, shape, batch, dtype, gpu):
        p = real(op, shape, batch, dtype, gpu)
        return dataclasses.replace(p, predicted_s=PREDICTED_S[p.gpu])

    monkeypatch.setattr(model, "predict", predict)


def _report_with_known_times(tmp_path, monkeypatch, gpu: str) -> str:
    """report.md of a run on ``gpu`` (:func:`_real_group_doc`), the model predicting PREDICTED_S."""
    _predict_with_known_times(monkeypatch)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_real_group_doc(gpu)))
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    return (tmp_path / "out" / "report.md").read_text()


def test_predicted_gpu_times_beside_cpu_measurements(tmp_path, monkeypatch):
    md = _report_with_known_times(tmp_path, monkeypatch, "cpu")
    summary = _section(md, "Measured here vs PREDICTED on GPU")
    assert "not on a modelled GPU" in summary
    assert ("| token_gather ViT-B B=32 | triton | 20.0 | 25.0 (floor 10.8, memory-bound) | "
            "8.0 (floor 6.9, memory-bound) |") in summary
    assert "recon_loss_fwd_bwd ViT-B B=32" in summary and "data-cpu" not in summary  # no model for data loading
    g = _section(md, "token_gather ViT-B B=32")
    assert (f"PREDICTED on GPU (model, not measured; Triton implementation, batch 32, bfloat16, {GATHER_MB} MB must "
            f"move): A100-80GB **25.0 µs** (floor {GATHER_FLOOR_US['A100-80GB']} µs, memory-bound); "
            f"H100-80GB **8.0 µs** (floor {GATHER_FLOOR_US['H100-80GB']} µs, memory-bound)") in g
    assert "measured / PREDICTED" not in md  # a CPU run: no ratio column
    assert "PREDICTED" not in _section(md, "data-cpu")
    with Image.open(tmp_path / "out" / "report.png") as img:
        assert img.size[0] == 1100
    fig, _ = report.figure(report.load(tmp_path / "run.json")[1])
    assert "predicted A100 25 µs, H100 8 µs" in fig.axes[0].get_xlabel()


def test_measured_over_predicted_on_a_modelled_gpu(tmp_path, monkeypatch):
    md = _report_with_known_times(tmp_path, monkeypatch, "NVIDIA H100 80GB HBM3")
    assert "This run was on H100-80GB" in md
    g = _section(md, "token_gather ViT-B B=32")
    assert "measured / PREDICTED H100-80GB" in g
    # measured 40 and 20 µs per call over the H100's 8 µs
    assert "| torch | 400 µs | 40.0 | — | 5 | 1.00x (baseline) | 5.00x |" in g
    assert "| triton | 200 µs | 20.0 | — | 5 | **2.00x** | 2.50x |" in g


def test_step_groups_show_the_forward_macs_of_each_arm(tmp_path):
    """The step benchmark records forward GMACs per clip: the paper's count for the official arm beside vmae2's."""
    step = lambda arm, sec, gmacs: _bench("step vs_official ViT-S fp32 B=2", f"test_official_step[ViT-S-fp32-{arm}]",  # noqa
                                          sec, {"arm": arm, "clips_per_s": 2 / sec, "fwd_gmacs_per_clip": gmacs,
                                                "is_baseline": arm == "official"}, rounds=3)
    doc = {**DOC, "benchmarks": [step("official", 1.30, 7.840333824), step("vmae2", 1.00, 7.009861632)]}
    path = tmp_path / "steps.json"
    path.write_text(json.dumps(doc))
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "1.5 clips/s, 7.84 GMACs/clip forward" in md and "2.0 clips/s, 7.01 GMACs/clip forward" in md
