"""Items of the GPU check that decide without a GPU: compute-sanitizer run through a fake tool (found, clean, with
errors, absent), the card's MFU peak by name, the arms' first-step loss comparison, and the CUDA-only items' reasons
on the CPU."""
import types

import pytest
import torch

from benchmarks.gpu import items as G

FAKE_CUDA = types.SimpleNamespace(type="cuda")


def _fake_tool(tmp_path, errors: int, finishes: bool = True):
    tool = tmp_path / "compute-sanitizer"
    tool.write_text("#!/bin/sh\n"
                    + ('echo "probe done"\n' if finishes else "")
                    + f'echo "========= ERROR SUMMARY: {errors} errors" >&2\n'
                    + ("exit 99\n" if errors else "exit 0\n"))
    tool.chmod(0o755)
    return str(tool)


def test_memcheck_clean_run_reports_its_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "sanitizer_path", lambda: _fake_tool(tmp_path, 0))
    result = G.check_sanitizer(FAKE_CUDA, tmp_path)
    assert result == {"summary": "ERROR SUMMARY: 0 errors", "providers": ["triton"]}
    assert "ERROR SUMMARY: 0 errors" in (tmp_path / "memcheck.log").read_text()


def test_memcheck_errors_fail_the_item(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "sanitizer_path", lambda: _fake_tool(tmp_path, 2))
    with pytest.raises(AssertionError, match=r"memcheck rc 99: ========= ERROR SUMMARY: 2 errors"):
        G.check_sanitizer(FAKE_CUDA, tmp_path)


def test_memcheck_that_hangs_is_stopped(tmp_path, monkeypatch):
    tool = tmp_path / "compute-sanitizer"
    tool.write_text("#!/bin/sh\nsleep 300\n")
    tool.chmod(0o755)
    monkeypatch.setattr(G, "sanitizer_path", lambda: str(tool))
    with pytest.raises(AssertionError, match=r"memcheck did not finish within 1 s"):
        G.check_sanitizer(FAKE_CUDA, tmp_path, timeout_s=1.0)


def test_memcheck_without_the_tool_or_a_gpu_is_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "sanitizer_path", lambda: None)
    assert G.check_sanitizer(FAKE_CUDA, tmp_path) == {
        "status": "skip", "detail": "compute-sanitizer was not found (not on PATH, beside nvcc or in torch's CUDA home)"}
    assert G.check_sanitizer(torch.device("cpu"), tmp_path)["detail"] == "needs a CUDA device (this run is on cpu)"


def test_sanitizer_is_found_in_the_cuda_home(tmp_path, monkeypatch):
    from vmae2_kernels import build

    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "compute-sanitizer"
    tool.write_text("")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.setattr(build, "nvcc_path", lambda: None)
    monkeypatch.setattr(build, "torch_cuda_home", lambda: str(tmp_path))
    assert G.sanitizer_path() == str(tool)


@pytest.mark.parametrize("name,peak,matched", [
    ("NVIDIA H100 PCIe", 756.0, "H100 PCIe"), ("NVIDIA H100 80GB HBM3", 989.0, "H100"),
    ("NVIDIA H100 NVL", 835.0, "H100 NVL"), ("NVIDIA H200", 989.0, "H200"), ("NVIDIA H200 NVL", 835.0, "H200 NVL"),
    ("NVIDIA GH200 480GB", 989.0, "GH200"), ("NVIDIA A100-PCIE-40GB", 312.0, "A100"),
    ("NVIDIA A100-SXM4-80GB", 312.0, "A100")])
def test_card_peak_by_device_name(name, peak, matched):
    assert G.card_peak(name) == (peak * 1e12, matched)


def test_unknown_card_has_no_mfu_and_says_why():
    peak, why = G.card_peak("NVIDIA RTX 6000 Ada Generation")
    assert peak is None and why.startswith("no MFU: 'NVIDIA RTX 6000 Ada Generation' has no bf16 peak")
    assert G.check_card_peak(torch.device("cpu"))["status"] == "skip"


def _arms(dual, official, v1=2.0, precision="bf16"):
    return [{"stage": "d", "name": f"ViT-B {arm}", "status": "ok", "first_loss": loss, "precision": precision}
            for arm, loss in (("dual", dual), ("v1", v1), ("official", official))]


def test_first_step_losses_compared():
    result = G.compare_first_losses(_arms(1.000, 1.005), "ViT-B")
    assert result["dual_vs_official_rel"] == pytest.approx(0.005 / 1.005) and result["tolerance"] == 2e-2
    assert result["v1_vs_dual_rel"] == pytest.approx(1.0)
    with pytest.raises(AssertionError, match="dual and official first-step losses differ"):
        G.compare_first_losses(_arms(1.0, 1.1), "ViT-B")
    with pytest.raises(AssertionError, match="differ"):  # fp32 (the CPU smoke): a tighter tolerance
        G.compare_first_losses(_arms(1.0, 1.001, precision="fp32"), "ViT-B")
    with pytest.raises(AssertionError, match="not finite"):
        G.compare_first_losses(_arms(float("nan"), 1.0), "ViT-B")
    assert G.compare_first_losses(_arms(1.0, 1.0)[:2], "ViT-B")["status"] == "skip"  # official did not run


@pytest.mark.parametrize("check", [G.check_side_stream, G.check_graph_replay])
def test_cuda_only_items_skip_on_the_cpu_with_the_reason(check):
    assert check(torch.device("cpu")) == {"status": "skip", "detail": "needs a CUDA device (this run is on cpu)"}


def test_past_2_31_needs_the_memory_or_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2 ** 30, 80 * 2 ** 30))
    result = G.check_past_2_31(FAKE_CUDA, "token_scatter")
    assert result["status"] == "skip" and "GiB (+25 %) of free GPU memory, 3.0 GiB free" in result["detail"]
    assert G.check_past_2_31(torch.device("cpu"), "video")["status"] == "skip"  # the full size only on a GPU
