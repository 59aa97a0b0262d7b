"""One prepared check for the day a GPU is lent: ``python -m benchmarks.gpu.check --out DIR``.

Made for one H100/H200 and at most 8 minutes, on what such a machine has (torch >= 2.11 with CUDA, Triton >= 3.6,
nvcc and ninja; no flash-attn, xformers, DALI, PyAV, pytest-benchmark or network). Stages, in order:

  native  start building the CUDA extension in the background (``python -m vmae2_kernels.build``, when nvcc is
          there), waited for after stage a; its backend joins the checks once built.
  a       correctness on the GPU: every op x every autotune config of its Triton kernel (forced one at a time) x
          ViT-B / ViT-g (the mask ops also at 448 px) x fp32 / bf16, against the plain-torch reference; the fused
          loss and its gradient bit-identical on a rerun; ``VMAE2_DEBUG=1`` refusing an out-of-range id (a
          device-side assert, in a subprocess); the launch on ``cuda:1`` (with two GPUs); backward at patch 14 and
          the table gradients with non-contiguous upstream gradients; ragged shapes and layouts; one output and one
          video past 2^31 elements; the ops on a side stream; a CUDA-graph replay (:mod:`benchmarks.gpu.items`);
          the native CUDA backend (the same items). All in subprocesses (an illegal memory access poisons the whole
          CUDA context): one that dies fails the item it was running, with its exit code, and a fresh one goes on
          with the rest.
  b       the masked training step (ViT-B, bf16) under ``torch.cuda.set_sync_debug_mode("error")``, with
          ``VMAE2_BACKEND`` forcing triton, then cuda (the step's CPU-made ids stay on ``auto``); then
          ``torch.compile(fullgraph=True)`` of the ViT-S step's forward and loss against the eager step.
  tests   the test suite's GPU half: ``pytest -m gpu``, then tests/test_kernels.py's cases on CUDA tensors.
  memcheck ``compute-sanitizer --tool memcheck`` over the token ops at toy sizes (when the tool is there).
  c       kernel benchmarks at batch 32 bf16: µs, GB/s and the share of the measured device-copy bandwidth.
  d       the MFU peak of the card found (by device name: H100 SXM / PCIe / NVL, H200, A100); the whole step
          ViT-B/g, bf16: vmae2 dual masking vs v1 (no decoder masking) vs the official-style step from the same
          weights, 3 warm-up steps then each step timed by CUDA events (the median), clips/s, MFU and each arm's peak
          memory above what was allocated before it; the arms' first-step losses compared.
  report  ``report.md``, ``results.json`` (rewritten after every item: a run cut off keeps what it did) and
          ``gpu_check.png`` (when matplotlib is there).

Each item is stopped past ``TIMEOUT_FACTOR`` x its estimate (status ``timeout``; the check goes on), and no item
starts without its estimate left in the budget.

``--dry-run`` (CI, any machine): imports everything, checks the version floors, prints the schedule (every item's
estimate, each stage's and the total), and fails when the plan does not fit ``--budget-s``. ``--smoke`` runs every
stage at toy sizes on any device (on CPU: Triton under its interpreter, set before anything imports Triton; stage b
without the sync mode, its cuda arm on ``auto``; no item time limits, the estimates being the GPU's), proving the
script itself.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.gpu import items as G

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"torch": (2, 11), "triton": (3, 6)}
BUDGET_S = 480  # 8 minutes of device time
STARTUP_S = 20  # imports, CUDA context
CHILD_START_S = 8.0  # a stage a subprocess: imports, CUDA context
NATIVE_WAIT_S = 20.0  # the wait for the background native build after stage a (it started before stage a)
TIMEOUT_FACTOR = 3.0  # an item is stopped at TIMEOUT_FACTOR x its estimate, or MIN_TIMEOUT_S when that is longer
MIN_TIMEOUT_S = 10.0
NATIVE_CHECK = "native cuda backend vs reference"
CHILD_STARTUPS = "2 subprocess startups (planned, not an item)"
GPU_TESTS = "pytest -m gpu, then the kernel tests on CUDA tensors"
CUDA_KERNEL_CASES = "triton-cuda or cuda-cuda or torch-cuda"  # the cuda params' ids in tests/test_kernels.py
NATIVE_EXTRA = "native cuda: backward, ragged shapes, side stream, graph replay"
NATIVE_ITEMS = (NATIVE_CHECK, NATIVE_EXTRA)  # run in a child of their own once the build is there
LOSS_BWD = "backward: loss at patch 14, fp32, offset upstream gradient"
TABLE_GRADS = "backward: x, mask-token and position-table gradients, non-contiguous upstream"
RAGGED = "ragged shapes and layouts (K, C odd; B = 0, K = 0; fp16; expanded, strided, offset)"
PAST_SCATTER = "past 2^31 elements: token_scatter output"
PAST_VIDEO = "past 2^31 elements: video (tubelet_gather, loss)"
SIDE_STREAM = "ops on a side stream"
GRAPH_REPLAY = "CUDA-graph replay after 3 warm-ups (and an untuned key captured)"
MEMCHECK = "compute-sanitizer --tool memcheck, toy sizes"
CARD_PEAK = "MFU peak of this card"
OP_CHECK_S = 1.5  # a stage a op check: its Triton compile (cold cache) and two small runs
A_ESTIMATES = {"loss fwd+bwd rerun bit-identical": 3.0, "VMAE2_DEBUG=1 out-of-range id (subprocess)": 12.0,
               "launch on cuda:1": 2.0, NATIVE_CHECK: 10.0, NATIVE_EXTRA: 8.0, LOSS_BWD: 3.0, TABLE_GRADS: 2.0,
               RAGGED: 12.0, PAST_SCATTER: 4.0, PAST_VIDEO: 5.0, SIDE_STREAM: 2.0, GRAPH_REPLAY: 4.0}


@dataclass
class Plan:
    """What each stage will run and its estimated seconds on an H100/H200."""
    device: str
    batch: int
    shapes: list  # kernel shapes of stage a and c
    mask_shapes: list  # the mask ops also at these
    dtypes: list
    sizes: list  # step sizes of stage d
    arms: tuple = ("dual", "v1", "official")
    step_batch: int = 32
    timed_steps: int = 5
    warmup_steps: int = 3  # stage d: untimed steps before the timed ones
    sync_size: str = "ViT-B"  # the step of stage b
    sync_batch: int = 8
    clip_frames: int = 16  # frames of stage b's step and of the loss rerun
    compile_size: str = "ViT-S"  # the step torch.compile traces in stage b (compile time grows with the depth)
    compile_batch: int = 2
    native: bool = True
    smoke: bool = False  # toy sizes (--smoke)
    items: dict = field(default_factory=dict)  # stage -> [(name, seconds)]

    def total(self) -> float:
        return STARTUP_S + sum(s for items in self.items.values() for _, s in items)

    def estimate(self, name: str) -> float:
        return next(s for items in self.items.values() for n, s in items if n == name)


def make_plan(smoke: bool, device: str) -> Plan:
    from vmae2_kernels import ops

    if smoke:
        plan = Plan(device, batch=1, shapes=["ViT-B"], mask_shapes=["ViT-B"], dtypes=["float32"], sizes=["ViT-S"],
                    step_batch=1, timed_steps=1, warmup_steps=1, native=False, sync_size="ViT-S", sync_batch=1,
                    clip_frames=4, compile_batch=1, smoke=True)
    else:
        plan = Plan(device, batch=32, shapes=["ViT-B", "ViT-g"], mask_shapes=["ViT-B", "ViT-g", "ViT-g-448"],
                    dtypes=["float32", "bfloat16"], sizes=["ViT-B", "ViT-g"])
    plan.items["a"] = [(name, A_ESTIMATES.get(name, OP_CHECK_S)) for name, _ in stage_a_items(plan, device)] + [
        (CHILD_STARTUPS, 2 * CHILD_START_S)]
    plan.items["native"] = [("native CUDA build", NATIVE_WAIT_S)]
    plan.items["b"] = [(f"{plan.sync_size} step under sync debug 'error' ({b})", 15.0) for b in ("triton", "cuda")]
    plan.items["b"].append((compile_item(plan), 30.0))
    plan.items["tests"] = [(GPU_TESTS, 25.0)]
    plan.items["memcheck"] = [(MEMCHECK, 25.0)]
    providers = ["torch", "triton", "cuda"]
    plan.items["c"] = [("device copy bandwidth", 2.0)] + [
        (f"{op} {shape} {p}", 1.0) for shape in plan.shapes for op in BENCH_OPS for p in providers]
    step_s = {"ViT-S": 6.0, "ViT-B": 8.0, "ViT-L": 12.0, "ViT-g": 30.0}
    steps = [(f"{size} {arm}", step_s[size]) for size in plan.sizes for arm in plan.arms]
    plan.items["d"] = [(CARD_PEAK, 0.5)] + steps + [(first_loss_item(size), 0.5) for size in plan.sizes]
    plan.items["report"] = [("gpu_check.png", 5.0)]
    assert set(ops.OPS) >= set(CHECKED_OPS)
    return plan


CHECKED_OPS = ("token_gather", "token_scatter", "tubelet_gather", "decoder_input", "mask_token_grad",
               "running_cell_ids", "tube_ids", "recon_loss")
MASK_OPS = ("running_cell_ids", "tube_ids")
BENCH_OPS = ("token_gather", "token_scatter", "tubelet_gather", "decoder_input", "running_cell_ids", "tube_ids",
             "recon_loss")
AUTOTUNED = {"token_gather": ("gather", "_row_copy_kernel"), "token_scatter": ("gather", "_row_copy_kernel"),
             "decoder_input": ("decoder", "_decoder_input_kernel")}  # op -> (family, autotuned kernel)


def compile_item(plan: Plan) -> str:
    return f"torch.compile(fullgraph=True) of the {plan.compile_size} step"


def first_loss_item(size: str) -> str:
    return f"first-step loss {size}: dual vs v1 vs official"


def configs_of(op: str) -> list:
    """The launch configurations of ``op``'s Triton kernel: the autotune candidates, or the one fixed launch."""
    from vmae2_kernels.tiles import ROW_TILES

    return list(ROW_TILES) if op in AUTOTUNED else [None]


def version_problems() -> list[str]:
    import torch

    out = []
    found = {"torch": torch.__version__}
    try:
        import triton
        found["triton"] = triton.__version__
    except ImportError as exc:
        out.append(f"triton is not importable ({exc})")
    for name, version in found.items():
        have = tuple(int(p) for p in version.split("+")[0].split(".")[:2])
        if have < FLOORS[name]:
            out.append(f"{name} {version} is below the floor {'.'.join(map(str, FLOORS[name]))}")
    return out


# -- recording: results.json after every item ------------------------------------------------------------------

class ItemTimeout(BaseException):
    """Raised in an item that runs past its time limit (a BaseException: an item's own ``except Exception`` lets it
    through)."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`ItemTimeout` in the block after ``seconds`` (SIGALRM; the main thread only, None: no limit).
    A wait inside a C call ends when the call returns: the parent's limit on a stage a subprocess covers that."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise ItemTimeout

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Recorder:
    """Runs items one by one and rewrites results.json and report.md after each. ``item_limits``: stop an item at
    :meth:`limit` seconds (off for ``--smoke`` on the CPU, where the H100 estimates do not apply)."""

    def __init__(self, out: Path, plan: Plan, budget_s: float, item_limits: bool = True):
        self.out, self.plan, self.start, self.budget = out, plan, time.monotonic(), budget_s
        self.item_limits = item_limits
        self.doc = {"plan": {k: v for k, v in plan.__dict__.items() if k != "items"}, "items": [],
                    "estimate_s": plan.total(), "budget_s": budget_s}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def limit(self, estimate: float) -> float | None:
        """Seconds an item estimated at ``estimate`` may run: the larger of TIMEOUT_FACTOR x estimate and
        MIN_TIMEOUT_S, and never past the budget; None without item limits."""
        if not self.item_limits:
            return None
        return max(0.0, min(self.left(), max(TIMEOUT_FACTOR * estimate, MIN_TIMEOUT_S)))

    def run(self, stage: str, name: str, estimate: float, fn) -> dict:
        """Run one item unless the budget is spent; record ``ok``/``fail``/``skip``/``timeout`` with what it
        returned."""
        item = {"stage": stage, "name": name}
        t0 = time.monotonic()
        if self.left() < estimate:
            item.update(status="skip", detail=f"out of time budget ({self.left():.0f} s left, needs ~{estimate} s)")
        else:
            limit = self.limit(estimate)
            try:
                with time_limit(limit):
                    result = fn() or {}
                item.update(status=result.pop("status", "ok"), **result)
            except ItemTimeout:
                item.update(status="timeout", detail=f"stopped after its {limit:.1f} s limit (estimate {estimate} s)")
            except Exception as exc:  # one failed item never stops the check
                item.update(status="fail", detail=f"{type(exc).__name__}: {str(exc)[:800]}")
        item["seconds"] = round(time.monotonic() - t0, 2)
        return self.add(item)

    def add(self, item: dict, echo: bool = True) -> dict:
        """Record a finished item: results.json and report.md rewritten, one line printed with ``echo``."""
        self.doc["items"].append(item)
        self.save()
        if echo:
            print(f"[{time.monotonic() - self.start:6.1f}s] {item['stage']} {item['status']:4s} {item['name']}"
                  + (f": {item['detail']}" if item.get("detail") else ""), flush=True)
        return item

    def save(self) -> None:
        self.doc["elapsed_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "results.json").write_text(json.dumps(self.doc, indent=1, default=str))
        (self.out / "report.md").write_text(markdown(self.doc))


# -- stage a: correctness ----------------------------------------------------------------------------------------

class forced_config:
    """Make the autotuned ``kernel`` run only ``tile`` (a ROW_TILES entry) for the duration of the block."""

    def __init__(self, kernel, tile):
        self.kernel, self.tile = kernel, tile

    def __enter__(self):
        import triton

        kw, warps, stages, _ = self.tile
        self.saved = self.kernel.configs, dict(self.kernel.cache)
        self.kernel.configs = [triton.Config(kw, num_warps=warps, num_stages=stages)]
        self.kernel.cache.clear()

    def __exit__(self, *exc):
        self.kernel.configs, cache = self.saved
        self.kernel.cache.clear()
        self.kernel.cache.update(cache)


def compare(out, ref) -> dict:
    """Exact for ids and data movement in fp32; the shared fp32-accumulation tolerance otherwise."""
    import torch
    from oracle.tolerances import assert_close_fp

    out, ref = out.detach(), ref.detach()
    if torch.equal(out, ref):
        return {"match": "exact"}
    if out.dtype == torch.int64:
        raise AssertionError("ids differ from the reference")
    dtype = max(out.dtype, ref.dtype, key=lambda d: torch.finfo(d).eps)
    assert_close_fp(out.float(), ref.float(), dtype, growth=1 if dtype == torch.float32 else 2)
    return {"match": f"within the {str(dtype).replace('torch.', '')} tolerance",
            "max_abs_err": float((out.float() - ref.float()).abs().max())}


def check_op(op: str, shape_name: str, dtype: str, config: int, device, batch: int, provider: str = "triton"):
    import torch

    from benchmarks import cases
    import importlib

    from vmae2_kernels import ops
    from benchmarks.gpu.roofline import ALL_SHAPES

    setting = cases.Setting(device, batch, getattr(torch, "float32" if dtype == "int64" else dtype))
    if op == "mask_token_grad":  # the backward of decoder_input: no benchmark case of its own
        shape = ALL_SHAPES[shape_name]
        grad = cases.randn(setting, batch, shape.num_visible + shape.num_dec, shape.dec_dim, dtype=setting.dtype)
        run = lambda backend: ops.mask_token_grad(grad, shape.num_visible, backend)  # noqa: E731
    else:
        case = cases.build_case(op, ALL_SHAPES[shape_name], setting)
        run = lambda backend: case.public(backend)()  # noqa: E731
    ref = run("torch")
    tile = configs_of(op)[config]
    if tile is None or provider != "triton":
        return compare(run(provider), ref)
    family, kernel = AUTOTUNED[op]
    with forced_config(getattr(importlib.import_module(f"vmae2_kernels.{family}.triton_kernels"), kernel), tile):
        return compare(run(provider), ref)


def check_loss_rerun(device, batch: int, frames: int = 16) -> dict:
    """On the GPU: the fused loss and its gradient are the same bits on a rerun (and close to torch)."""
    import torch

    from benchmarks import cases
    from vmae2_kernels import ops
    from benchmarks.gpu.roofline import ALL_SHAPES

    shape = replace(ALL_SHAPES["ViT-B"], frames=frames)
    setting = cases.Setting(device, batch, torch.bfloat16 if device.type == "cuda" else torch.float32)
    _, dec = cases.mask_ids(shape, setting)
    video = cases.make_video(shape, setting)
    pred = cases.randn(setting, batch, shape.num_dec, shape.pred_dim, dtype=setting.dtype, seed=1)
    weights = torch.ones(batch, shape.num_dec, device=device)

    def run(backend):
        p = pred.clone().requires_grad_()
        loss = ops.recon_loss(p, video, dec, weights, shape.patch, shape.tubelet, 1, cases.MEAN, cases.STD,
                              backend)
        loss.backward()
        return loss.detach(), p.grad

    (la, ga), (lb, gb) = run("triton"), run("triton")
    if not (torch.equal(la, lb) and torch.equal(ga, gb)):
        raise AssertionError("the loss or its gradient changed between two identical runs")
    lr, gr = run("torch")
    return {"loss": float(la), "vs_torch": compare(la, lr)["match"], "grad_vs_torch": compare(ga, gr)["match"]}


DEBUG_PROBE = """
import torch
from vmae2_kernels import ops
x = torch.randn(2, 8, 4, device="{device}")
ids = torch.tensor([[0, {bad}], [2, 7]], device="{device}")
ops.token_gather(x, ids, None, "{backend}")
torch.cuda.synchronize() if x.is_cuda else None
print("returned")
"""


def check_debug_mode(device, backend: str = "triton") -> dict:
    """On the GPU: with VMAE2_DEBUG=1 an out-of-range id stops the op (device-side assert: the CUDA
    context is lost, hence a subprocess); without the bad id the same script returns."""
    env = {**os.environ, "VMAE2_DEBUG": "1"}
    runs = {}
    for bad in (8, 3):
        code = DEBUG_PROBE.format(device=device, bad=bad, backend=backend)
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        runs[bad] = proc
    refused, control = runs[8], runs[3]
    if refused.returncode == 0 or "returned" in refused.stdout:
        raise AssertionError("an out-of-range id was not refused under VMAE2_DEBUG=1")
    if control.returncode != 0:
        raise AssertionError(f"the control run failed: {control.stderr[-400:]}")
    return {"refusal": refused.stderr.strip().splitlines()[-1][:300]}


def check_second_device(device) -> dict:
    """On the GPU: tensors on cuda:1 while cuda:0 is current give the reference's result."""
    import torch

    from vmae2_kernels import ops

    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return {"status": "skip", "detail": "needs two GPUs"}
    x = torch.randn(4, 64, 256, device="cuda:1")
    ids = torch.stack([torch.randperm(64)[:16].sort().values for _ in range(4)]).to("cuda:1")
    with torch.cuda.device(0):
        out = ops.token_gather(x, ids, None, "triton")
        torch.cuda.synchronize(1)
    return compare(out, ops.token_gather(x, ids, None, "torch"))


def check_native(plan: Plan, device) -> dict:
    """Every checked op on the native CUDA backend against the reference (run once the build is done)."""
    return {op: check_op(op, plan.shapes[0], plan.dtypes[-1], 0, device, plan.batch, "cuda")["match"]
            for op in CHECKED_OPS}


def check_native_extra(device) -> dict:
    """The native CUDA backend: the backward, ragged-shape, side-stream and graph items of the Triton kernels."""
    return {"loss_backward_p14": G.check_loss_backward_p14(device, "cuda"),
            "table_gradients": G.check_table_gradients(device, "cuda"),
            "ragged": G.check_ragged(device, "cuda"), "side_stream": G.check_side_stream(device, "cuda"),
            "graph_replay": G.check_graph_replay(device, "cuda")}


def stage_a_items(plan: Plan, device) -> list:
    """Stage a as ``(name, function)`` pairs, built alike for the plan, the check and its subprocess."""
    items = []
    for op in CHECKED_OPS:
        for shape in plan.mask_shapes if op in MASK_OPS else plan.shapes:
            for dtype in ["int64"] if op in MASK_OPS else plan.dtypes:
                for config in range(len(configs_of(op))):
                    items.append((f"{op} {shape} {dtype} config {config}",
                                  functools.partial(check_op, op, shape, dtype, config, device, plan.batch)))
    return items + [("loss fwd+bwd rerun bit-identical", functools.partial(check_loss_rerun, device, plan.batch,
                                                                                  plan.clip_frames)),
                    ("VMAE2_DEBUG=1 out-of-range id (subprocess)", functools.partial(check_debug_mode, device)),
                    ("launch on cuda:1", functools.partial(check_second_device, device)),
                    (LOSS_BWD, functools.partial(G.check_loss_backward_p14, device)),
                    (TABLE_GRADS, functools.partial(G.check_table_gradients, device)),
                    (RAGGED, functools.partial(G.check_ragged, device)),
                    (PAST_SCATTER, functools.partial(G.check_past_2_31, device, "token_scatter", smoke=plan.smoke)),
                    (PAST_VIDEO, functools.partial(G.check_past_2_31, device, "video", smoke=plan.smoke)),
                    (SIDE_STREAM, functools.partial(G.check_side_stream, device)),
                    (GRAPH_REPLAY, functools.partial(G.check_graph_replay, device)),
                    (NATIVE_CHECK, functools.partial(check_native, plan, device)),
                    (NATIVE_EXTRA, functools.partial(check_native_extra, device))]


# -- stage a in subprocesses: an illegal memory access poisons the whole CUDA context ------------------------------

def run_in_children(rec: Recorder, items: list, smoke: bool, device, env: dict | None = None,
                    factory: str = "benchmarks.gpu.check:stage_a_items") -> None:
    """Run the stage a ``items`` (``(name, estimate)`` pairs, made by ``factory``) in a child process that records
    each as it finishes; its results join ``rec``'s. A child that dies or hangs fails the item it was running with
    its exit code, and a fresh child goes on with the rest."""
    left = list(items)
    for n in range(1, len(items) + 1):
        if not left:
            return
        folder = rec.out / f"stage_a_child{n}"
        folder.mkdir(parents=True, exist_ok=True)
        request = folder / "request.json"
        request.write_text(json.dumps({"factory": factory, "items": left}))
        cmd = [sys.executable, "-m", "benchmarks.gpu.check", "--child", str(request), "--out", str(folder),
               "--device", str(device), "--budget-s", str(max(rec.left(), 0.0))] + (["--smoke"] if smoke else [])
        limits = [rec.limit(estimate) for _, estimate in left]
        wait_s = None if None in limits else CHILD_START_S + sum(limits)
        with open(folder / "stderr.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stderr=log)
            try:
                rc = proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = f"killed after {wait_s:.0f} s"
        results = folder / "results.json"
        done = json.loads(results.read_text())["items"] if results.exists() else []
        for item in done:
            rec.add(item, echo=False)  # the child printed it
        finished = {item["name"] for item in done}
        left = [pair for pair in left if pair[0] not in finished]
        if left:
            stderr = (folder / "stderr.log").read_text()[-300:].strip()
            rec.add({"stage": "a", "name": left[0][0], "status": "fail",
                     "detail": f"the stage a subprocess exited with code {rc} during this item; its stderr ends: "
                               f"{stderr or '(empty)'}"})
            left = left[1:]


def run_child(request_file: Path, rec: Recorder, device) -> int:
    """The child side of :func:`run_in_children`: run the requested items, recording each."""
    request = json.loads(request_file.read_text())
    module, name = request["factory"].split(":")
    functions = dict(getattr(importlib.import_module(module), name)(rec.plan, device))
    for item, estimate in request["items"]:
        rec.run("a", item, estimate, functions[item])
    return 0


# -- native build (background) -----------------------------------------------------------------------------------

def start_native_build(out: Path):
    from vmae2_kernels import build

    if build.nvcc_path() is None:
        return None, "nvcc was not found"
    ext = out / "native_build"
    env = {**os.environ, "VMAE2_EXT_DIR": str(ext), "MAX_JOBS": str(os.cpu_count() or 4)}
    with open(out / "native_build.log", "w") as log:  # the child holds its own copy of the file
        proc = build.start_in_background(env, log, cwd=ROOT)
    return proc, str(ext)


def finish_native_build(proc, ext: str, wait_s: float) -> str | None:
    """None when the native CUDA backend is ready in this process, else why not."""
    from vmae2_kernels import build, dispatch

    try:
        rc = proc.wait(timeout=max(1.0, wait_s))
    except subprocess.TimeoutExpired:
        build.stop(proc)  # the build and its compilers
        return f"the build did not finish within {wait_s:.0f} s"
    if rc != 0:
        return f"the build failed (rc {rc}; see native_build.log)"

    sys.modules.pop("vmae2_kernels.native", None)  # a failed earlier import is retried with the new build
    build.BUILD_DIR = Path(ext)
    build.LIBRARY, build.INFO = build.BUILD_DIR / f"{build.NAME}.so", build.BUILD_DIR / "build_info.json"
    dispatch.reset()
    reasons = dispatch.not_supported_reasons("cuda", "token_gather", "cuda")
    return "; ".join(reasons) or None


# -- stage b: no host sync ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def syncs_are_errors(device):
    """On a GPU, every host sync inside the block raises (``torch.cuda.set_sync_debug_mode("error")``, the device
    synchronized around it); elsewhere nothing."""
    import torch

    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def check_no_sync(device, size_name: str, batch: int, backend: str, num_frames: int) -> dict:
    """The dual step with ``VMAE2_BACKEND=backend``: built (its ids are made on the CPU, which a GPU-only override
    leaves on ``auto``), warmed, then one step under ``torch.cuda.set_sync_debug_mode("error")``. On the CPU the same
    code runs without the sync mode (it needs a GPU; tests/test_integration counts syncs there)."""
    from benchmarks import official_step as O
    from vmae2_kernels import dispatch

    size = next(s for s in O.SIZES if s.name == size_name)
    cuda = device.type == "cuda"
    saved = os.environ.get(dispatch.ENV_VAR)
    os.environ[dispatch.ENV_VAR] = backend
    dispatch.reset()
    try:
        step, facts = O.make_step("dual", size, "bf16" if cuda else "fp32", batch, device, num_frames=num_frames)
        step.step()  # warm: autotuning times kernels (and syncs) on the first call
        with syncs_are_errors(device):
            step.step()
        return {"token_ops": facts["token_ops"], "cpu_ids": dispatch.choose("tube_ids", "cpu"),
                "attention": facts["attention"], "sync_debug": "error" if cuda else "off (needs a GPU)"}
    finally:
        if saved is None:
            os.environ.pop(dispatch.ENV_VAR)
        else:
            os.environ[dispatch.ENV_VAR] = saved
        dispatch.reset()


# -- stage tests: the test suite's GPU half --------------------------------------------------------------------------

def check_gpu_tests(device, out: Path) -> dict:
    """``pytest -m gpu`` over tests/, then tests/test_kernels.py's cuda cases, each log in ``out``; ok when both
    pass (a run that collects nothing fails: on a GPU both have tests). Skipped without a GPU or pytest."""
    import importlib.util

    if device.type != "cuda":
        return {"status": "skip", "detail": f"needs a CUDA device (this run is on {device.type})"}
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skip", "detail": "pytest is not installed (pip install pytest)"}
    runs = {"gpu_marked": ["-m", "gpu", "tests"], "kernels_on_cuda": ["tests/test_kernels.py", "-k", CUDA_KERNEL_CASES]}
    result, failed = {}, []
    for name, args in runs.items():
        log = out / f"pytest_{name}.log"
        with open(log, "w") as f:  # written as it runs: a timeout keeps what ran
            rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *args],
                                 cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        lines = log.read_text().strip().splitlines()
        result[name] = f"rc {rc}: {lines[-1] if lines else '(no output)'}"
        if rc != 0:
            failed.append(name)
    if failed:
        result.update(status="fail", detail=f"{', '.join(failed)} did not pass; see pytest_*.log")
    return result


# -- stage c: kernel benchmarks ------------------------------------------------------------------------------------

def bench_ms(fn, device) -> float:
    """Median milliseconds per call: Triton's do_bench on CUDA (L2 flushed between calls), a wall clock on CPU."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[1]


def copy_bandwidth(device, smoke: bool) -> dict:
    import torch

    n = (1 << 20) if smoke else (1 << 29)  # bf16 elements: 1 GiB per buffer on the GPU
    src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device)
    return {"gbps": 2 * src.numel() * src.element_size() / ms / 1e6, "bytes": 2 * src.numel() * 2}


def bench_op(op: str, shape_name: str, provider: str, device, batch: int, copy_gbps: float | None) -> dict:
    import torch

    from benchmarks import cases
    from vmae2_kernels import dispatch
    from benchmarks.gpu.roofline import ALL_SHAPES

    reasons = [] if provider == "torch" else dispatch.not_supported_reasons(provider, op, device.type)
    if provider == "triton" and device.type == "cpu":
        reasons = ["Triton on CPU runs only under its interpreter, whose timings say nothing"]
    if reasons:
        return {"status": "skip", "detail": "; ".join(reasons)}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    case = cases.build_case(op, ALL_SHAPES[shape_name], cases.Setting(device, batch, dtype))
    ms = bench_ms(case.public(provider), device)
    gbps = case.nbytes / ms / 1e6
    return {"us": 1e3 * ms, "bytes": case.nbytes, "gbps": gbps,
            "copy_share": gbps / copy_gbps if copy_gbps else None}


# -- stage d: the whole step ------------------------------------------------------------------------------------

def bench_step(size_name: str, arm: str, device, batch: int, timed_steps: int, warmup_steps: int = 3) -> dict:
    """One arm: build, ``warmup_steps`` untimed steps (the first one's loss kept: ``first_loss``), then
    ``timed_steps`` steps each timed alone (CUDA events on the GPU, the wall clock on the CPU); ``ms_per_step`` is
    their median. MFU against the dense bf16 peak of the card found (:func:`benchmarks.gpu.items.card_peak`; None with
    ``mfu_reason`` for an unknown card or the CPU). On CUDA its peak memory (:func:`arm_memory`)."""
    import statistics

    import torch

    from benchmarks import official_step as O
    from vmae2.flops import mfu

    size = next(s for s in O.SIZES if s.name == size_name)
    cuda = device.type == "cuda"
    precision = "bf16" if cuda else "fp32"

    def run():
        step, facts = O.make_step(arm, size, precision, batch, device)
        first = float(step.step())
        for _ in range(warmup_steps - 1):
            step.step()
        times = [_timed(step.step, device) for _ in range(timed_steps)]
        return dict(facts, first_loss=first), times

    (facts, times), memory = arm_memory(run, device) if cuda else (run(), {})
    ms = statistics.median(times)
    tflops = facts["model_tflop_per_step"] / (ms / 1e3)
    peak, why = G.card_peak(torch.cuda.get_device_name(device)) if cuda else (None, "no MFU on the CPU")
    return dict(facts, **memory, ms_per_step=ms, step_ms=times, warmup_steps=warmup_steps,
                clips_per_s=batch / (ms / 1e3), tflops=tflops, mfu=mfu(tflops * 1e12, 1.0, peak),
                mfu_reason=None if peak else why, batch=batch, precision=precision)


def _timed(fn, device) -> float:
    """Milliseconds of one ``fn()``: between two CUDA events on the GPU (read after a sync), else the wall clock."""
    import torch

    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def arm_memory(run, device) -> tuple[object, dict]:
    """``run()`` and its peak CUDA memory: earlier arms' garbage and the cached clips of stage a/c freed and the
    peak statistics reset before it; ``peak_mib`` is the peak above what was allocated before it (its model,
    optimizer state, inputs and activations), ``held_before_mib`` what was allocated then."""
    import gc

    import torch

    from benchmarks import cases

    cases.make_video.cache_clear()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = run()
    peak = torch.cuda.max_memory_allocated(device)
    return out, {"peak_mib": (peak - before) / 2 ** 20, "held_before_mib": before / 2 ** 20}


# -- report --------------------------------------------------------------------------------------------------------

def markdown(doc: dict) -> str:
    plan = doc["plan"]
    lines = [f"# GPU check ({plan['device']})", "",
             f"Elapsed {doc.get('elapsed_s', 0):.0f} s of a {doc['budget_s']:.0f} s budget "
             f"(estimate {doc['estimate_s']:.0f} s). Versions: {doc.get('versions', {})}.", ""]
    counts = {}
    for item in doc["items"]:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    lines += ["Items: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    stage_titles = {"a": "a. correctness", "b": "b. no host sync; torch.compile", "tests": "the test suite's GPU half",
                    "memcheck": "compute-sanitizer memcheck",
                    "c": "c. kernel benchmarks",
                    "d": "d. whole step", "native": "native build", "report": "report"}
    for stage, title in stage_titles.items():
        items = [i for i in doc["items"] if i["stage"] == stage]
        if not items:
            continue
        lines += [f"## {title}", "", "| item | status | result |", "|---|---|---|"]
        for i in items:
            rest = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in i.items()
                    if k not in ("stage", "name", "status")}
            lines.append(f"| {i['name']} | {i['status']} | {json.dumps(rest, default=str)[:400]} |")
        lines.append("")
    return "\n".join(lines)


def chart(doc: dict, path: Path) -> dict:
    from vmae2_kernels import optional

    plt, reason = optional.load("matplotlib.pyplot")
    if plt is None:
        return {"status": "skip", "detail": reason}
    kernels = [i for i in doc["items"] if i["stage"] == "c" and i["status"] == "ok" and "gbps" in i]
    steps = [i for i in doc["items"] if i["stage"] == "d" and i["status"] == "ok" and "ms_per_step" in i]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    ax1.barh([i["name"] for i in kernels], [i["gbps"] for i in kernels])
    ax1.set_xlabel("GB/s")
    ax1.set_title("kernels")
    ax2.barh([i["name"] for i in steps], [i["ms_per_step"] for i in steps])
    ax2.set_xlabel("ms per step")
    ax2.set_title("whole step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"png": str(path)}


# -- main -----------------------------------------------------------------------------------------------------------

def print_plan(plan: Plan, budget_s: float, items: bool) -> None:
    """The schedule: each stage's seconds, with ``items`` each item's, and the total against the budget."""
    print(f"gpu_check plan on {plan.device}: kernel batch {plan.batch}, shapes {plan.shapes} (mask ops "
          f"{plan.mask_shapes}), dtypes {plan.dtypes}; steps {plan.sizes} x {list(plan.arms)} at batch "
          f"{plan.step_batch} ({plan.warmup_steps} warm-up and {plan.timed_steps} timed steps each)")
    print(f"  each item is stopped at {TIMEOUT_FACTOR:g}x its estimate (at least {MIN_TIMEOUT_S:g} s); stage a runs "
          "in subprocesses")
    print(f"  startup                   {STARTUP_S:6.0f} s")
    for stage, stage_items in plan.items.items():
        print(f"  stage {stage:8s} {len(stage_items):4d} items {sum(s for _, s in stage_items):6.0f} s")
        for name, seconds in stage_items if items else ():
            print(f"      {seconds:5.1f} s  {name}")
    print(f"  total estimate            {plan.total():6.0f} s of a {budget_s:.0f} s budget"
          + ("" if plan.total() <= budget_s else "  (DOES NOT FIT)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for report.md, results.json and the PNG")
    parser.add_argument("--dry-run", action="store_true", help="imports, version floors and the plan; runs nothing")
    parser.add_argument("--smoke", action="store_true", help="every stage at toy sizes (any device)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # a stage a subprocess's request.json
    args = parser.parse_args(argv)

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports Triton
    from benchmarks import cases, official_step  # noqa: F401  (the imports the stages need, checked up front)
    from oracle.tolerances import assert_close_fp  # noqa: F401

    plan = make_plan(args.smoke, str(device))
    item_limits = not (args.smoke and device.type == "cpu")
    if args.child:
        return run_child(args.child, Recorder(args.out, plan, args.budget_s, item_limits), device)
    problems = version_problems()
    print_plan(plan, args.budget_s, items=args.dry_run)
    for problem in problems:
        print(f"version floor: {problem}")
    if args.dry_run and plan.total() > args.budget_s:
        print(f"the plan needs {plan.total():.0f} s, over the {args.budget_s:.0f} s budget (--budget-s): drop items or "
              "shapes in make_plan, or lower their estimates where a GPU run measured less", file=sys.stderr)
        return 1
    if args.dry_run:
        return 1 if problems else 0
    if args.out is None:
        parser.error("--out DIR is required (unless --dry-run)")
    if problems:
        return 2
    if device.type == "cpu" and not args.smoke:
        print("no GPU here: run with --smoke to exercise the script on CPU, or --dry-run for the plan")
        return 2
    rec = Recorder(args.out, plan, args.budget_s, item_limits)
    import triton

    rec.doc["versions"] = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                           "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    run_stages(rec, plan, device, args.smoke)
    return 0 if all(i["status"] != "fail" for i in rec.doc["items"]) else 1


def run_stages(rec: Recorder, plan: Plan, device, smoke: bool) -> None:
    def run(stage, name, fn):
        return rec.run(stage, name, plan.estimate(name), fn)

    proc, ext = start_native_build(rec.out) if plan.native else (None, "not built (--smoke)")
    run_in_children(rec, [pair for pair in plan.items["a"] if pair[0] not in (*NATIVE_ITEMS, CHILD_STARTUPS)],
                    smoke, device)

    def wait_for_build():
        reason = finish_native_build(proc, ext, min(NATIVE_WAIT_S, rec.left())) if proc else ext
        return {"status": "skip" if reason else "ok", "detail": reason or f"built in {ext}"}

    native_item = run("native", "native CUDA build", wait_for_build)  # skip, fail or timeout: its detail says why
    native_reason = None if native_item["status"] == "ok" else native_item["detail"]
    if native_reason is None:
        run_in_children(rec, [(name, plan.estimate(name)) for name in NATIVE_ITEMS], smoke, device,
                        {"VMAE2_EXT_DIR": ext})
    else:
        for name in NATIVE_ITEMS:
            run("a", name, lambda: {"status": "skip", "detail": native_reason})
    for backend in ("triton", "cuda"):  # on the CPU the cuda arm runs auto: the override serves CUDA tensors only
        run("b", f"{plan.sync_size} step under sync debug 'error' ({backend})",
            lambda: {"status": "skip", "detail": native_reason}
            if backend == "cuda" and native_reason and device.type == "cuda"
            else check_no_sync(device, plan.sync_size, plan.sync_batch, backend, plan.clip_frames))
    run("b", compile_item(plan), lambda: G.check_compile_step(device, plan.compile_size, plan.compile_batch))
    run("tests", GPU_TESTS, lambda: check_gpu_tests(device, rec.out))
    run("memcheck", MEMCHECK, lambda: G.check_sanitizer(device, rec.out, timeout_s=2 * plan.estimate(MEMCHECK)))
    copy = run("c", "device copy bandwidth", lambda: copy_bandwidth(device, smoke))
    for shape in plan.shapes:
        for op in BENCH_OPS:
            for provider in ("torch", "triton", "cuda"):
                run("c", f"{op} {shape} {provider}",
                    lambda: bench_op(op, shape, provider, device, plan.batch, copy.get("gbps")))
    run("d", CARD_PEAK, lambda: G.check_card_peak(device))
    for size in plan.sizes:
        for arm in plan.arms:
            run("d", f"{size} {arm}", lambda: bench_step(size, arm, device, plan.step_batch, plan.timed_steps,
                                                         plan.warmup_steps))
    for size in plan.sizes:
        run("d", first_loss_item(size), lambda: G.compare_first_losses(rec.doc["items"], size))
    run("report", "gpu_check.png", lambda: chart(rec.doc, rec.out / "gpu_check.png"))


if __name__ == "__main__":
    raise SystemExit(main())
