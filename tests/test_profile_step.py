"""The side-by-side step comparison (``python -m benchmarks.profile_step``): its statistics and its results file."""
import json
import statistics
import sys

import pytest

from benchmarks import profile_step
from benchmarks.official_repo import official_module


def test_bootstrap_interval_brackets_the_median_and_is_reproducible():
    values = [1.10, 1.30, 1.25, 1.22, 1.40, 1.18, 1.27, 1.21]
    low, high = profile_step.bootstrap_median(values)
    assert min(values) <= low <= statistics.median(values) <= high <= max(values)
    assert profile_step.bootstrap_median(values) == (low, high)  # seeded
    assert profile_step.bootstrap_median([1.3] * 8) == (1.3, 1.3)


def test_summary_pairs_each_official_step_with_the_next_vmae2_step():
    s = profile_step.summarize([1.0, 2.0, 3.0], [0.5, 1.0, 1.0])
    assert s["ratios"] == [2.0, 2.0, 3.0] and s["ratio_median"] == 2.0
    assert s["ratio_of_medians"] == 2.0 and s["official"]["ms"] == [1000.0, 2000.0, 3000.0]


def test_alternated_order_swaps_every_round():
    calls = []
    profile_step.alternated_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]


@pytest.mark.slow
def test_results_file_records_machine_pairs_profile_and_choices(tmp_path):
    out = tmp_path / "results.json"
    assert profile_step.main(["--size", "ViT-S", "--precision", "bf16", "--rounds", "2", "--steps", "1",
                              "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["command"].startswith("python -m benchmarks.profile_step --size ViT-S")
    assert {"cpu", "cpu_flags", "cores", "threads", "load_average", "torch"} <= set(results["machine"])
    (run,) = results["runs"]
    assert run["size"] == "ViT-S" and run["precision"] == "bf16"
    assert len(run["timing"]["ratios"]) == 2 and run["timing"]["ratio_ci95"][0] <= run["timing"]["ratio_median"]
    assert run["facts"]["official"]["official_model"] == "oracle/ (restated)"
    assert run["arms"] == ["official", "vmae2"] and set(run["profile_ms_per_step"]) == {"official", "vmae2"}
    assert run["profile_ms_per_step"]["vmae2"]["GEMM (mm, addmm, linear)"] > 0


def test_an_official_checkout_must_hold_the_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="VideoMAEv2 checkout"):
        official_module(tmp_path)


def test_an_official_checkout_is_imported_as_the_package_models_without_a_path_edit(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "__init__.py").write_text("from .modeling_pretrain import marker\n")
    (models / "modeling_pretrain.py").write_text("from .helper import VALUE\nmarker = VALUE\n")
    (models / "helper.py").write_text("VALUE = 42\n")
    path = list(sys.path)
    monkeypatch.delitem(sys.modules, "models", raising=False)
    try:
        module = official_module(tmp_path)
        assert module.marker == 42 and module.__file__ == str(models / "modeling_pretrain.py")
        assert official_module(tmp_path) is module and sys.path == path
    finally:
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]
