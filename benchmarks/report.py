"""Markdown + PNG report of a pytest-benchmark JSON file.

    pytest benchmarks/ --benchmark-only --benchmark-json=results.json
    python -m benchmarks.report results.json --out report/        # or: python benchmarks/report.py ...

Writes ``report/report.md`` (machine header, then one table per benchmark group) and ``report/report.png``
(horizontal bars of the per-call time, one panel per group, each with its own scale; drawn with matplotlib,
``pip install vmae2[plot]``: without it the reason is printed and report.md alone is written).

Per benchmark, from pytest-benchmark's ``stats`` and the suite's ``extra_info`` (every field optional):

* **arm**: ``extra_info`` ``provider``, ``loader`` or ``arm``; else the test id in brackets; else the name.
* **median**: ``stats.median``, the time of one round (one timed call of the benchmarked function).
* **per call**: ``us_per_call``; else ``median / calls_per_round``; else the median (one call per round).
  Rounds of different arms may hold different numbers of calls, so ratios use per-call times.
* **throughput**: ``gbps`` (GB/s) and/or ``clips_per_s``.
* **speed-up** ``= baseline per-call time / this per-call time`` (> 1: faster than the baseline), shown when
  the group has a baseline arm: one whose ``extra_info`` says ``is_baseline: true``, or whose arm/name equals
  a ``baseline`` field of any ``extra_info`` in the group; else the first ``--baseline`` arm found in the
  group; else (marked "guessed") an arm whose label starts with ``official``.
* **predicted GPU time**: for groups whose ``extra_info`` names an ``op``, ``shape``, ``batch`` and ``dtype`` the
  roofline model knows (``benchmarks/gpu/roofline.py``), the PREDICTED device time of the Triton implementation on an
  A100-80GB and an H100-80GB at that batch and dtype, with the floor (bytes / bandwidth): a model, not a
  measurement, shown beside whatever was measured (CPU times on a CPU run). When the run itself was on an A100 or
  H100, each row also gets ``measured / predicted`` for that GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

NO_GROUP = "(no group)"


# -- data ---------------------------------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    arm: str
    median_s: float | None
    per_call_s: float | None
    rounds: int | None
    gbps: float | None
    clips_per_s: float | None
    extra: dict = field(default_factory=dict)
    is_baseline: bool = False
    speedup: float | None = None


@dataclass
class Group:
    name: str
    rows: list[Row]
    baseline: Row | None = None
    baseline_guessed: bool = False
    predictions: list = field(default_factory=list)  # roofline.Prediction per modelled GPU (A100, H100)


def _num(value: Any) -> float | None:
    """A finite float, or None for anything missing / non-numeric / nan."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _arm(bench: dict, extra: dict) -> str:
    for key in ("provider", "loader", "arm"):
        if extra.get(key) not in (None, ""):
            return str(extra[key])
    name = str(bench.get("name") or bench.get("fullname") or "?")
    m = re.search(r"\[(.*)\]$", name)
    return m.group(1) if m else name


def _row(bench: dict) -> Row:
    stats = bench.get("stats")
    extra = bench.get("extra_info")
    extra = extra if isinstance(extra, dict) else {}
    if not isinstance(stats, dict):
        stats = {}
    median = _num(stats.get("median"))
    per_call = _num(extra.get("us_per_call"))
    if per_call is not None:
        per_call *= 1e-6
    elif median is not None:
        calls = _num(extra.get("calls_per_round"))
        per_call = median / calls if calls and calls > 0 else median
    rounds = _num(stats.get("rounds"))
    return Row(name=str(bench.get("name") or bench.get("fullname") or "?"), arm=_arm(bench, extra),
               median_s=median, per_call_s=per_call, rounds=None if rounds is None else int(rounds),
               gbps=_num(extra.get("gbps")), clips_per_s=_num(extra.get("clips_per_s")), extra=extra,
               is_baseline=extra.get("is_baseline") is True)


def _pick_baseline(rows: list[Row], preferred: Sequence[str]) -> tuple[Row | None, bool]:
    timed = [r for r in rows if r.per_call_s]
    for r in timed:
        if r.is_baseline:
            return r, False
    named = [str(r.extra["baseline"]) for r in rows if isinstance(r.extra.get("baseline"), str)]
    for want in named:
        for r in timed:
            if want in (r.arm, r.name):
                return r, False
    for want in preferred:
        for r in timed:
            if want in (r.arm, r.name):
                return r, False
    for r in timed:
        if r.arm.lower().startswith("official"):
            return r, True
    return None, False


def roofline_module():
    """The roofline model (``benchmarks/gpu/roofline.py``), or None where it cannot load (no predictions then)."""
    try:
        from benchmarks.gpu import roofline
    except ImportError:  # pragma: no cover - run outside the checkout's root
        return None
    return roofline


def predictions_for(rows: list[Row]) -> list:
    """PREDICTED GPU times of the op a group measures (first row naming op, shape, batch), one per modelled GPU."""
    model = roofline_module()
    if model is None:
        return []
    for r in rows:
        op, shape, batch = r.extra.get("op"), r.extra.get("shape"), _num(r.extra.get("batch"))
        if op in model.OPS and shape in model.SHAPES and batch and batch >= 1:
            dtype = str(r.extra.get("dtype") or "float32").replace("torch.", "")
            dtype = dtype if dtype in model.DTYPES else "float32"
            return [model.predict(op, shape, int(batch), dtype, gpu) for gpu in model.GPUS]
    return []


def load(path: str | Path, baselines: Sequence[str] = ()) -> tuple[dict, list[Group]]:
    """``(json document, groups in order of first appearance)`` with baselines and speed-ups resolved."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a pytest-benchmark JSON document (top level is {type(doc).__name__})")
    groups: dict[str, list[Row]] = {}
    for bench in doc.get("benchmarks") or []:
        if not isinstance(bench, dict):
            continue
        row = _row(bench)
        groups.setdefault(str(bench.get("group") or NO_GROUP), []).append(row)
    out = []
    for name, rows in groups.items():
        base, guessed = _pick_baseline(rows, baselines)
        if base is not None:
            for r in rows:
                r.speedup = base.per_call_s / r.per_call_s if r.per_call_s else None
        out.append(Group(name, rows, base, guessed, predictions_for(rows)))
    return doc, out


# -- formatting ---------------------------------------------------------------------------------------------

def fmt_time(seconds: float | None) -> str:
    """``703 ms``, ``5 µs``."""
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}" if seconds / scale < 100 else f"{seconds / scale:.0f} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_us(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    us = seconds * 1e6
    return f"{us:,.1f}" if us < 1e5 else f"{us:,.0f}"


def _throughput(r: Row) -> str:
    parts = []
    if r.gbps is not None:
        parts.append(f"{r.gbps:.2f} GB/s")
    if r.clips_per_s is not None:
        parts.append(f"{r.clips_per_s:.1f} clips/s")
    gmacs = _num(r.extra.get("fwd_gmacs_per_clip"))
    if gmacs is not None:
        parts.append(f"{gmacs:.2f} GMACs/clip forward")
    return ", ".join(parts) or "—"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _version(info: dict, *keys: str) -> str:
    for k in keys:
        v = info.get(k)
        if v not in (None, ""):
            return str(v)
    return "not recorded"


def machine_lines(doc: dict) -> list[str]:
    info = doc.get("machine_info") if isinstance(doc.get("machine_info"), dict) else {}
    cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
    cpu_name = cpu.get("brand_raw") or cpu.get("brand") or info.get("processor") or info.get("machine") or "unknown"
    cores = info.get("cpu_count") or cpu.get("count")
    gpu = info.get("gpu") or "not recorded"
    if info.get("gpu_capability"):
        gpu = f"{gpu} ({info['gpu_capability']})"
    lines = [
        f"- **CPU**: {cpu_name}" + (f", {cores} logical cores" if cores else "")
        + (f", torch threads {info['torch_threads']}" if info.get("torch_threads") else "")
        + (f", 1-min load {float(info['loadavg_1min']):.2f}" if _num(info.get("loadavg_1min")) is not None else ""),
        f"- **GPU**: {gpu}",
        f"- **torch** {_version(info, 'torch')}"
        + (f" (CUDA {info['torch_cuda']})" if info.get("torch_cuda") else "")
        + f", **triton** {_version(info, 'triton')}, **DALI** {_version(info, 'dali', 'nvidia_dali', 'nvidia-dali')}"
        + f", **python** {_version(info, 'python', 'python_version')}",
    ]
    env = [f"{k}={info[k]}" for k in ("triton_interpret", "vmae2_backend_env", "bench_full", "bench_batch")
           if info.get(k) not in (None, "", "unset")]
    if env:
        lines.append("- **env**: " + ", ".join(env))
    when = [x for x in (doc.get("datetime"), doc.get("version") and f"pytest-benchmark {doc['version']}") if x]
    commit = doc.get("commit_info") if isinstance(doc.get("commit_info"), dict) else {}
    if commit.get("id"):
        when.append(f"commit {str(commit['id'])[:12]}" + (" (dirty)" if commit.get("dirty") else ""))
    if when:
        lines.append("- **run**: " + ", ".join(str(w) for w in when))
    return lines


def run_gpu(doc: dict) -> str | None:
    """The modelled GPU ("A100-80GB" / "H100-80GB") this run was measured on, if any."""
    info = doc.get("machine_info") if isinstance(doc.get("machine_info"), dict) else {}
    model = roofline_module()
    gpu = model.gpu_for(str(info.get("gpu") or "")) if model is not None else None
    return gpu.name if gpu is not None else None


def _prediction_cell(p) -> str:
    return f"{fmt_us(p.predicted_s)} (floor {fmt_us(p.floor_s)}, {p.bound}-bound)"


def prediction_summary(groups: list[Group], on_gpu: str | None) -> list[str]:
    """One line per group with a prediction: the fastest measured arm beside the PREDICTED GPU times."""
    rows = [g for g in groups if g.predictions]
    if not rows:
        return []
    gpus = [p.gpu for p in rows[0].predictions]
    out = ["## Measured here vs PREDICTED on GPU", "",
           "Predicted = roofline model of the Triton implementation (`python -m benchmarks.gpu.roofline`, "
           "`benchmarks/gpu/roofline.py`): device time at the benchmark's batch and dtype, not a measurement. "
           + ("This run was on " + on_gpu + ": compare its rows with that column." if on_gpu else
              "This run was not on a modelled GPU: the measured column is what ran here (e.g. CPU), the predicted "
              "columns are what an A100 / H100 should show for the same call."), ""]
    head = ["group", "fastest measured (arm)", "per call (µs)"] + [f"PREDICTED {g} (µs)" for g in gpus]
    out += ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for g in rows:
        timed = [r for r in g.rows if r.per_call_s]
        best = min(timed, key=lambda r: r.per_call_s) if timed else None
        cells = [g.name, best.arm if best else "—", fmt_us(best.per_call_s) if best else "—"]
        cells += [_prediction_cell(p) for p in g.predictions]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out + [""]


def markdown(doc: dict, groups: list[Group], source: str = "") -> str:
    out = ["# Benchmark report", ""]
    if source:
        out += [f"Source: `{source}`", ""]
    out += machine_lines(doc) + [""]
    out.append("Median = one round (pytest-benchmark); per call = median / calls per round (`us_per_call` when "
               "the suite records it). Speed-up = baseline per-call time / per-call time (> 1 = faster).")
    out.append("")
    on_gpu = run_gpu(doc)
    out += prediction_summary(groups, on_gpu)
    if not groups:
        out.append("_No benchmarks in this file._")
    for g in groups:
        out += [f"## {_cell(g.name)}", ""]
        if g.baseline is not None:
            out += [f"Baseline: `{_cell(g.baseline.arm)}`" + (" (guessed from its name)" if g.baseline_guessed
                                                              else ""), ""]
        match = next((p for p in g.predictions if p.gpu == on_gpu), None)
        head = ["benchmark", "provider / arm", "median", "per call (µs)", "throughput", "rounds"]
        if g.baseline is not None:
            head.append(f"speed-up vs {g.baseline.arm}")
        if match is not None:
            head.append(f"measured / PREDICTED {match.gpu}")
        out += ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
        for r in g.rows:
            cells = [r.name, r.arm, fmt_time(r.median_s), fmt_us(r.per_call_s), _throughput(r),
                     "—" if r.rounds is None else r.rounds]
            if g.baseline is not None:
                cells.append("—" if r.speedup is None else
                             (f"**{r.speedup:.2f}x**" if r is not g.baseline else "1.00x (baseline)"))
            if match is not None:
                cells.append("—" if not r.per_call_s else f"{r.per_call_s / match.predicted_s:.2f}x")
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        if g.predictions:
            p0 = g.predictions[0]
            out += ["", f"PREDICTED on GPU (model, not measured; Triton implementation, batch {p0.batch}, {p0.dtype}, "
                        f"{p0.traffic.bytes / 1e6:.1f} MB must move): "
                    + "; ".join(f"{p.gpu} **{fmt_us(p.predicted_s)} µs** (floor {fmt_us(p.floor_s)} µs, "
                                f"{p.bound}-bound)" for p in g.predictions)]
        out.append("")
    return "\n".join(out)


# -- chart --------------------------------------------------------------------------------------------------

COLORS = {"faster": "#4285cc", "slower": "#d6604d", "baseline": "#969696"}  # bars: vs the group's baseline


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _color(g: Group, r: Row) -> str:
    if r is g.baseline:
        return COLORS["baseline"]
    return COLORS["slower"] if r.speedup is not None and r.speedup < 1 else COLORS["faster"]


def _bar_text(g: Group, r: Row) -> str:
    if r.speedup is None:
        return fmt_time(r.per_call_s)
    return fmt_time(r.per_call_s) + ("  (baseline)" if r is g.baseline else f"  {r.speedup:.2f}x")


def figure(groups: list[Group], title: str = ""):
    """``(Figure, None)``: one panel per group (own scale), a horizontal bar per timed row (per-call seconds, the
    first row on top; a row without a timing gets none), labelled with the time and the speed-up; ``(None,
    reason)`` without matplotlib. 11 inches wide at 100 dpi, ~0.3 inch per row."""
    from vmae2 import plot

    rows = sum(max(len(g.rows), 1) for g in groups)
    fig, reason = plot.figure(figsize=(11, 1.2 + 0.9 * len(groups) + 0.3 * rows), dpi=100, layout="constrained")
    if fig is None:
        return None, reason
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    if title:
        fig.suptitle(_short(title, 120), fontweight="bold")
    if not groups:
        fig.text(0.5, 0.5, "no benchmarks", ha="center", va="center", color="gray")
        return fig, None
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=[max(len(g.rows), 1) for g in groups])[:, 0]
    for ax, g in zip(axes, groups):
        timed = [(y, r) for y, r in enumerate(g.rows) if r.per_call_s]
        bars = ax.barh([y for y, _ in timed], [r.per_call_s for _, r in timed], height=0.6,
                       color=[_color(g, r) for _, r in timed])
        ax.bar_label(bars, [_bar_text(g, r) for _, r in timed], padding=4, fontsize=8)
        for y, r in enumerate(g.rows):
            if not r.per_call_s:
                ax.text(0, y, " no timing", va="center", color="gray", fontsize=8)
        ax.set_yticks(range(len(g.rows)), [_short(r.arm) for r in g.rows], fontsize=9)
        ax.set_ylim(len(g.rows) - 0.5, -0.5)  # the first row on top
        ax.set_xlim(0, 1.35 * max((r.per_call_s for _, r in timed), default=1.0))  # room for the bar labels
        ax.xaxis.set_major_formatter(EngFormatter(unit="s"))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(_short(g.name, 100), loc="left", fontweight="bold", fontsize=10)
        sub = "per call time, shorter is faster"
        if g.baseline is not None:
            sub += f"; speed-up vs {g.baseline.arm}" + (" (guessed)" if g.baseline_guessed else "")
        if g.predictions:
            sub += "; predicted " + ", ".join(f"{p.gpu.split('-')[0]} {fmt_time(p.predicted_s)}" for p in g.predictions)
        ax.set_xlabel(_short(sub, 160), fontsize=8, color="dimgray")
    fig.legend(handles=[Patch(color=COLORS["faster"], label="faster than or equal to the baseline (or no baseline)"),
                        Patch(color=COLORS["slower"], label="slower than the baseline"),
                        Patch(color=COLORS["baseline"], label="baseline")],
               loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig, None


def chart(groups: list[Group], path: str | Path, title: str = "") -> str | None:
    """Write :func:`figure` as the PNG ``path`` and return None; without matplotlib write nothing and return the
    one-line reason (``"report.png skipped: matplotlib is not importable (...)"``)."""
    from vmae2 import plot

    return plot.save(*figure(groups, title), path)


# -- CLI ----------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="pytest-benchmark JSON (pytest ... --benchmark-json=FILE)")
    parser.add_argument("--out", default="benchmark_report", help="output folder (default: %(default)s)")
    parser.add_argument("--baseline", action="append", default=[], metavar="ARM",
                        help="arm (provider / loader / test id) to compare against in groups whose extra_info "
                             "names no baseline; repeat to give fallbacks, e.g. --baseline official "
                             "--baseline torch")
    args = parser.parse_args(argv)
    try:
        doc, groups = load(args.results, args.baseline)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(doc, groups, source=str(args.results)) + "\n")
    info = doc.get("machine_info") if isinstance(doc.get("machine_info"), dict) else {}
    title = f"{Path(args.results).name}: {info.get('gpu') or 'device not recorded'}, torch {info.get('torch', '?')}"
    skipped = chart(groups, out / "report.png", title=title)
    if skipped:
        print(skipped)
    written = [out / "report.md"] + ([] if skipped else [out / "report.png"])
    print(f"wrote {' and '.join(map(str, written))}: {sum(len(g.rows) for g in groups)} benchmarks in "
          f"{len(groups)} groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
