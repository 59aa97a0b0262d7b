"""``python -m benchmarks.gpu.check``, the one prepared GPU check: its plan fits the 8-minute budget (``--dry-run``, as
CI runs it), every stage runs at toy sizes on this CPU (``--smoke``), a run cut off or failing keeps what it did, an
item past its time limit is stopped, and a stage a subprocess that dies fails only the item it was running."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("triton", reason="the GPU check needs Triton")


def _run(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it itself on CPU
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu.check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dry_run_plan_fits_eight_minutes():
    """The dry run (no model work) prints every stage and item with its seconds; they add up to the total,
    which fits 480 s."""
    proc = _run("--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stages = {m[0]: (int(m[1]), float(m[2]))
              for m in re.findall(r"^  stage (\S+)\s+(\d+) items\s+(\d+) s$", proc.stdout, re.M)}
    assert set(stages) == {"a", "native", "b", "tests", "memcheck", "c", "d", "report"}, stages
    assert all(seconds > 0 for _, seconds in stages.values()), stages
    items = [float(s) for s in re.findall(r"^\s{6}\s*([\d.]+) s  \S", proc.stdout, re.M)]
    assert len(items) == sum(n for n, _ in stages.values()) and all(s > 0 for s in items)
    startup = float(re.search(r"^  startup\s+(\d+) s$", proc.stdout, re.M).group(1))
    total = float(re.search(r"total estimate\s+(\d+) s of a 480 s budget", proc.stdout).group(1))
    assert 0 < total <= 480 and abs(total - startup - sum(items)) < 1
    assert "ViT-g-448" in proc.stdout and "steps ['ViT-B', 'ViT-g']" in proc.stdout
    assert "(3 warm-up and 5 timed steps each)" in proc.stdout
    planned = dict((name, float(sec)) for sec, name in re.findall(r"^\s{6}\s*([\d.]+) s  (.+)$", proc.stdout, re.M))
    for name in NEW_ITEMS:  # each coverage item is planned with its own estimate
        assert planned.get(name, 0) > 0, (name, sorted(planned))


# The coverage items: backward, ragged shapes, past 2^31, side stream, graph replay, the native backend's run of
# them, torch.compile, compute-sanitizer, the card's MFU peak and the arms' first-step losses.
NEW_ITEMS = ["backward: loss at patch 14, fp32, offset upstream gradient",
             "backward: x, mask-token and position-table gradients, non-contiguous upstream",
             "ragged shapes and layouts (K, C odd; B = 0, K = 0; fp16; expanded, strided, offset)",
             "past 2^31 elements: token_scatter output", "past 2^31 elements: video (tubelet_gather, loss)",
             "ops on a side stream", "CUDA-graph replay after 3 warm-ups (and an untuned key captured)",
             "native cuda: backward, ragged shapes, side stream, graph replay",
             "torch.compile(fullgraph=True) of the ViT-S step", "compute-sanitizer --tool memcheck, toy sizes",
             "MFU peak of this card", "first-step loss ViT-B: dual vs v1 vs official",
             "first-step loss ViT-g: dual vs v1 vs official"]


def test_dry_run_refuses_a_plan_over_budget():
    proc = _run("--dry-run", "--budget-s", "60", timeout=120)
    assert proc.returncode == 1 and "DOES NOT FIT" in proc.stdout
    assert "over the 60 s budget (--budget-s): drop items" in proc.stderr, proc.stderr


def test_smoke_runs_every_stage_on_cpu(tmp_path):
    proc = _run("--smoke", "--out", str(tmp_path), "--budget-s", "100000", "--device", "cpu", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    status = {i["name"]: i["status"] for i in doc["items"]}
    assert "fail" not in status.values(), [i for i in doc["items"] if i["status"] == "fail"]
    assert {i["stage"] for i in doc["items"]} == {"a", "native", "b", "tests", "memcheck", "c", "d", "report"}
    assert (tmp_path / "stage_a_child1" / "results.json").exists()  # stage a ran in a subprocess
    assert status["native cuda backend vs reference"] == "skip"
    gpu_tests = next(i for i in doc["items"] if i["stage"] == "tests")
    assert gpu_tests["status"] == "skip" and gpu_tests["detail"] == "needs a CUDA device (this run is on cpu)"
    for op in ("token_gather", "token_scatter", "decoder_input"):  # every autotune config, forced
        assert [status[f"{op} ViT-B float32 config {c}"] for c in range(3)] == ["ok"] * 3
    assert status["loss fwd+bwd rerun bit-identical"] == "ok"
    assert status["VMAE2_DEBUG=1 out-of-range id (subprocess)"] == "ok"
    sync = {i["name"]: i for i in doc["items"] if i["stage"] == "b" and "sync debug" in i["name"]}
    assert [i["status"] for i in sync.values()] == ["ok", "ok"], sync
    # VMAE2_BACKEND=cuda serves CUDA tensors only: this CPU step (its ids included) stays on auto, as a GPU step's
    # CPU-made ids do; Triton serves CPU tensors under the interpreter
    forced_cuda = sync["ViT-S step under sync debug 'error' (cuda)"]
    assert forced_cuda["token_ops"] != "cuda" and forced_cuda["cpu_ids"] != "cuda"
    assert sync["ViT-S step under sync debug 'error' (triton)"]["token_ops"] == "triton"
    steps = [i for i in doc["items"] if i["stage"] == "d" and i["name"].startswith("ViT-S ")]
    assert [i["status"] for i in steps] == ["ok"] * 3 and all(i["ms_per_step"] > 0 for i in steps)
    _smoke_coverage_items(doc["items"])
    report = (tmp_path / "report.md").read_text()
    assert "## a. correctness" in report and "## d. whole step" in report


def test_a_cut_off_or_failing_run_keeps_what_it_did(tmp_path):
    from benchmarks.gpu import check as gpu_check

    plan = gpu_check.Plan("cpu", 1, [], [], [], [])
    rec = gpu_check.Recorder(tmp_path, plan, budget_s=5.0)
    rec.run("a", "first", 1.0, lambda: {"value": 1})
    rec.run("a", "broken", 1.0, lambda: 1 / 0)
    rec.run("a", "after the failure", 1.0, lambda: None)
    rec.run("c", "too long for the budget", 60.0, lambda: pytest.fail("must not run"))
    doc = json.loads((tmp_path / "results.json").read_text())  # written after every item
    assert [(i["name"], i["status"]) for i in doc["items"]] == [
        ("first", "ok"), ("broken", "fail"), ("after the failure", "ok"), ("too long for the budget", "skip")]
    assert "ZeroDivisionError" in doc["items"][1]["detail"] and "out of time budget" in doc["items"][3]["detail"]


def test_an_item_past_its_limit_is_a_timeout_and_the_check_goes_on(tmp_path, monkeypatch):
    import time

    from benchmarks.gpu import check as gpu_check

    monkeypatch.setattr(gpu_check, "MIN_TIMEOUT_S", 0.0)  # the limit is then 3 x the estimate: 0.3 s
    rec = gpu_check.Recorder(tmp_path, gpu_check.Plan("cpu", 1, [], [], [], []), budget_s=60.0)

    def slow():
        try:
            time.sleep(30)
        except Exception:  # an item's own handler does not swallow the timeout
            return {"status": "fail"}

    rec.run("a", "slow", 0.1, slow)
    rec.run("a", "after the slow one", 0.1, lambda: {"value": 2})
    items = json.loads((tmp_path / "results.json").read_text())["items"]
    assert [(i["name"], i["status"]) for i in items] == [("slow", "timeout"), ("after the slow one", "ok")]
    assert items[0]["seconds"] < 5 and "stopped after its 0.3 s limit (estimate 0.1 s)" in items[0]["detail"]
    assert 50 < rec.limit(100.0) <= 60  # never past the 60 s budget
    assert gpu_check.Recorder(tmp_path, rec.plan, 60.0, item_limits=False).limit(0.1) is None


def test_a_crash_mid_way_leaves_every_finished_result(tmp_path):
    from benchmarks.gpu import check as gpu_check

    rec = gpu_check.Recorder(tmp_path, gpu_check.Plan("cpu", 1, [], [], [], []), budget_s=60.0)
    rec.run("a", "first", 1.0, lambda: {"value": 1})
    rec.run("a", "second", 1.0, lambda: {"value": 2})

    def crash():
        raise KeyboardInterrupt  # not an item failure: it ends the whole check

    with pytest.raises(KeyboardInterrupt):
        rec.run("a", "crashes the check", 1.0, crash)
    items = json.loads((tmp_path / "results.json").read_text())["items"]
    assert [(i["name"], i["status"], i["value"]) for i in items] == [("first", "ok", 1), ("second", "ok", 2)]


FAKE_ITEMS = """
import os


def items(plan, device):
    def dies():
        os._exit(1)

    return [("before", lambda: {"device": str(device)}), ("dies", dies), ("after", lambda: {"value": 3})]
"""


def test_stage_a_child_that_dies_fails_its_item_and_the_check_goes_on(tmp_path, monkeypatch):
    """Stage a runs in a child process: one that dies (an illegal memory access kills the CUDA context) fails the
    item it was running with its exit code, and a fresh child runs the rest."""
    from benchmarks.gpu import check as gpu_check

    (tmp_path / "fake_items.py").write_text(FAKE_ITEMS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "out"
    rec = gpu_check.Recorder(out, gpu_check.make_plan(True, "cpu"), budget_s=600.0)
    gpu_check.run_in_children(rec, [("before", 1.0), ("dies", 1.0), ("after", 1.0)], True, "cpu",
                              factory="fake_items:items")
    items = json.loads((out / "results.json").read_text())["items"]
    assert [(i["name"], i["status"]) for i in items] == [("before", "ok"), ("dies", "fail"), ("after", "ok")]
    assert items[0]["device"] == "cpu" and items[2]["value"] == 3
    assert "exited with code 1 during this item" in items[1]["detail"], items[1]
    assert (out / "stage_a_child2" / "results.json").exists()  # "after" ran in a fresh child


def test_bare_checkout_imports_vmae2_kernels_from_its_root():
    """The GPU image has no vmae2 installed: run from the checkout's root (no site-packages at all here), the
    packages import by their folder names, and no top-level ``kernels`` exists to hide Hugging Face's package."""
    probe = ("import importlib.util as u; print(u.find_spec('vmae2_kernels').origin); "
             "print(u.find_spec('oracle').origin); print(u.find_spec('kernels'))")
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = out.stdout.split()
    assert lines == [str(ROOT / "vmae2_kernels" / "__init__.py"), str(ROOT / "oracle" / "__init__.py"), "None"], out


def test_step_peak_memory_is_each_arms_own(monkeypatch):
    """Stage d on CUDA, driven by a fake allocator: each arm reports the peak above what was allocated before it,
    not stage c's copy buffers (the peak statistics are reset before the arm), the cached clips of stage a/c or an
    earlier arm's step (freed before it)."""
    import types

    import torch

    from benchmarks import cases, official_step
    from benchmarks.gpu import check as gpu_check

    mib = 2 ** 20

    class Allocator:
        allocated = peak = 0

        def alloc(self, n):
            self.allocated += n * mib
            self.peak = max(self.peak, self.allocated)

        def free(self, n):
            self.allocated -= n * mib

    mem = Allocator()

    def reset_peak(device=None):
        mem.peak = mem.allocated

    for name, fn in {"memory_allocated": lambda device=None: mem.allocated,
                     "max_memory_allocated": lambda device=None: mem.peak, "reset_peak_memory_stats": reset_peak,
                     "empty_cache": lambda: None, "synchronize": lambda device=None: None}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    mem.alloc(2048)  # stage c's copy buffers: freed, but the peak statistics remember them
    mem.free(2048)
    clips = [512]  # a clip batch cached by stage a/c
    mem.alloc(512)
    monkeypatch.setattr(cases, "make_video", types.SimpleNamespace(
        cache_clear=lambda: [mem.free(clips.pop()) for _ in list(clips)]))

    class Step:
        def __init__(self):
            mem.alloc(100)  # model, optimizer state, inputs
            self.cycle = self  # freed by the garbage collector only, as a model with hooks

        def step(self):
            mem.alloc(300)  # activations
            mem.free(300)
            FakeEvent.now += 1.0
            return torch.tensor(1.5)

        def __del__(self):
            mem.free(100)

    monkeypatch.setattr(official_step, "make_step", lambda *args: (Step(), {"model_tflop_per_step": 1.0}))
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    for arm in ("dual", "v1", "official"):
        result = gpu_check.bench_step("ViT-S", arm, torch.device("cuda"), 1, 2)
        assert result["peak_mib"] == 400, (arm, result)
        assert result["held_before_mib"] == 0, (arm, result)


class FakeEvent:
    """torch.cuda.Event on a fake clock (milliseconds) that the fake steps advance."""
    now = 0.0

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.at = None

    def record(self):
        self.at = FakeEvent.now

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return end.at - self.at


@pytest.mark.parametrize("gpu,peak_tflops", [("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                             ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                             ("NVIDIA L4", None)])
def test_step_time_is_the_median_of_event_timed_steps_after_three_warm_ups(monkeypatch, gpu, peak_tflops):
    """Stage d: 3 untimed warm-up steps (the first one's loss kept), then each step between two CUDA events, the
    median reported; MFU against the peak of the card by its name (PCIe is not SXM), none for an unknown card."""
    import torch

    from benchmarks import cases, official_step
    from benchmarks.gpu import check as gpu_check

    durations = [500.0, 400.0, 300.0, 10.0, 40.0, 20.0]  # 3 warm-ups (compiles, autotuning), then 3 timed steps
    losses = iter([2.5, 2.0, 1.9, 1.8, 1.7, 1.6])

    class Step:
        def step(self):
            FakeEvent.now += durations.pop(0)
            return torch.tensor(next(losses))

    for name, fn in {"memory_allocated": lambda device=None: 0, "max_memory_allocated": lambda device=None: 0,
                     "reset_peak_memory_stats": lambda device=None: None, "empty_cache": lambda: None,
                     "get_device_name": lambda device=None: gpu}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(cases.make_video, "cache_clear", lambda: None)
    monkeypatch.setattr(official_step, "make_step", lambda *args: (Step(), {"model_tflop_per_step": 1.0}))
    result = gpu_check.bench_step("ViT-S", "dual", torch.device("cuda"), 4, 3)
    assert durations == [] and result["warmup_steps"] == 3 and result["first_loss"] == 2.5
    assert result["step_ms"] == [10.0, 40.0, 20.0] and result["ms_per_step"] == 20.0
    assert result["clips_per_s"] == 4 / 0.02 and result["tflops"] == 1.0 / 0.02
    if peak_tflops is None:
        assert result["mfu"] is None and "no MFU: 'NVIDIA L4' has no bf16 peak" in result["mfu_reason"]
    else:
        assert result["mfu"] == pytest.approx(50.0 / peak_tflops) and result["mfu_reason"] is None


def _smoke_coverage_items(items):
    """The coverage items in the CPU smoke run: the Triton ones ran under the interpreter (the 2^31 ones scaled down,
    and saying so), the CUDA-only ones were skipped with the reason."""
    by_name = {i["name"]: i for i in items}
    ran = {"backward: loss at patch 14, fp32, offset upstream gradient": "grad_vs_torch",
           "backward: x, mask-token and position-table gradients, non-contiguous upstream": "decoder_input",
           "ragged shapes and layouts (K, C odd; B = 0, K = 0; fp16; expanded, strided, offset)": "cases",
           "past 2^31 elements: token_scatter output": "tail_vs_reference",
           "past 2^31 elements: video (tubelet_gather, loss)": "loss_vs_reference",
           "torch.compile(fullgraph=True) of the ViT-S step": "eager_loss",
           "first-step loss ViT-S: dual vs v1 vs official": "dual_vs_official_rel"}
    for name, key in ran.items():
        assert by_name[name]["status"] == "ok" and key in by_name[name], by_name[name]
    assert by_name["ragged shapes and layouts (K, C odd; B = 0, K = 0; fp16; expanded, strided, offset)"][
        "cases"] > 200
    for name in ("past 2^31 elements: token_scatter output", "past 2^31 elements: video (tubelet_gather, loss)"):
        assert by_name[name]["scaled_down"] is True
    assert by_name["torch.compile(fullgraph=True) of the ViT-S step"]["backend"] == "aot_eager"
    cpu_reason = "needs a CUDA device (this run is on cpu)"
    for name in ("ops on a side stream", "CUDA-graph replay after 3 warm-ups (and an untuned key captured)",
                 "compute-sanitizer --tool memcheck, toy sizes"):
        assert (by_name[name]["status"], by_name[name]["detail"]) == ("skip", cpu_reason)
    assert by_name["MFU peak of this card"]["detail"] == f"no MFU on the CPU: {cpu_reason}"
    assert by_name["native cuda: backward, ragged shapes, side stream, graph replay"]["status"] == "skip"
    steps = [i for i in items if i["stage"] == "d" and "ms_per_step" in i]
    assert all(i["mfu"] is None and i["mfu_reason"] == "no MFU on the CPU" and "first_loss" in i for i in steps)
    assert all(i["status"] in ("ok", "skip") and (i["status"] == "ok" or i["detail"]) for i in items)
