"""GPU code checked without a GPU: every Triton kernel compiled ahead of time for sm_80 and sm_90 (ViT-B shapes,
fp32 and bf16 activations, every autotune config) through ``python -m benchmarks.gpu.report``; the CUDA
sources through nvcc; and the roofline model's arithmetic. The full ViT-B/L/g set is the CLI's default run.

Fails when a kernel spills, uses local memory, needs more shared memory (or registers) than its budget, or a
memory-bound kernel's bulk streams are not 128-bit in the PTX.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import report as G
from benchmarks.gpu import roofline as R

ROOT = Path(__file__).resolve().parents[1]
TRITON_KERNELS = {"_row_copy_kernel", "_tubelet_gather_kernel", "_decoder_input_kernel", "_masked_rows_sum_kernel",
                  "_running_cell_kernel", "_tube_kernel", "_recon_loss_fwd_kernel", "_recon_loss_bwd_kernel"}


def _has_triton_nvidia() -> str | None:
    try:
        import triton  # noqa: F401
        from triton import knobs

        return None if Path(knobs.nvidia.ptxas.path).exists() else "the Triton wheel ships no ptxas"
    except Exception as exc:  # pragma: no cover - triton missing
        return f"triton with its NVIDIA backend is not importable ({exc})"


SKIP = _has_triton_nvidia()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One CLI run (ViT-B, ViT-g at 224 and 448 px, fp32 + bf16, sm_80 + sm_90, nvcc when present); the interpreter
    is switched off for it."""
    if SKIP:
        pytest.skip(SKIP)
    out = tmp_path_factory.mktemp("gpu_report")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.report", "--shape", "ViT-B", "--shape", "ViT-g",
                           "--shape", "ViT-g-448", "--quiet",
                           "--json", str(out / "report.json"), "--markdown", str(out / "report.md")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    doc = json.loads((out / "report.json").read_text())
    return proc, doc, (out / "report.md").read_text()


def _rows(doc):
    return doc["kernels"]


def test_cli_passes_and_compiles_every_kernel_for_both_archs(report):
    proc, doc, md = report
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert doc["problems"] == []
    seen = {(r["kernel"], r["arch"]) for r in _rows(doc)}
    assert seen == {(k, a) for k in TRITON_KERNELS for a in ("sm_80", "sm_90")}
    # every autotune config, for both activation dtypes and every launcher that uses the kernel
    for kernel, tiles, ops in (("_row_copy_kernel", R.ROW_TILES, {"token_gather", "token_scatter"}),
                               ("_tubelet_gather_kernel", (R.TUBELET_TILE,), {"tubelet_gather"}),
                               ("_decoder_input_kernel", R.ROW_TILES, {"decoder_input"}),
                               ("_recon_loss_fwd_kernel", R.LOSS_TILES, {"recon_loss"}),
                               ("_recon_loss_bwd_kernel", R.LOSS_TILES, {"recon_loss_backward"})):
        for arch in ("sm_80", "sm_90"):
            for dtype in ("float32", "bfloat16"):
                for op in ops:
                    configs = {r["config"] for r in _rows(doc) if r["kernel"] == kernel and r["arch"] == arch
                               and f"{op} ViT-B {dtype}" in [f"{r['op']} {r['shape']} {r['dtype']}"] + r["also"]}
                    fixed = {"BLOCK_P": 512} if tiles is R.LOSS_TILES else {}  # the loss: one fixed launch
                    want = {R.config_label({**fixed, **kw}, w, s) for kw, w, s, _ in tiles}
                    assert configs == want, (kernel, op, arch, dtype)
    assert "All " in md and "0 spills" in md


def test_no_spills_no_local_memory(report):
    _, doc, _ = report
    for r in _rows(doc):
        assert (r["spill_stores"], r["spill_loads"], r["local_bytes"]) == (0, 0, 0), r
        assert not any(k.startswith(("LDL", "STL")) for k in r["sass"]), r["sass"]
        assert not any(k.startswith(("ld.local", "st.local")) for k in r["ptx"]), r["ptx"]


def test_largest_mask_tile_compiles_without_spills(report):
    """_tube_kernel at 448 px (H'W' = 1024) stays within its register budget without spills (a 4-warp tile spills)."""
    _, doc, _ = report
    rows = [r for r in _rows(doc) if r["kernel"] in ("_tube_kernel", "_running_cell_kernel")
            and "ViT-g-448" in [r["shape"]] + [a.split()[1] for a in r["also"]]]
    assert {(r["kernel"], r["arch"]) for r in rows} == {(k, a) for k in ("_tube_kernel", "_running_cell_kernel")
                                                        for a in ("sm_80", "sm_90")}
    assert all((r["spill_stores"], r["spill_loads"], r["local_bytes"]) == (0, 0, 0) for r in rows), rows


def test_registers_and_shared_memory_within_budget(report):
    """The roofline model's assumed resources (the shared-memory budgets) hold for every compiled kernel."""
    _, doc, _ = report
    for r in _rows(doc):
        regs, smem = R.ASSUMED_RESOURCES[r["kernel"]]
        gpu = R.GPU_BY_ARCH[r["arch"]]
        assert r["regs"] <= regs, f"{r['kernel']} [{r['config']}] {r['arch']}: {r['regs']} > {regs} registers"
        assert r["smem"] <= min(smem, gpu.smem_per_block), (r["kernel"], r["config"], r["arch"], r["smem"])
        assert r["occupancy"]["limiter"] != "shared memory" and r["occupancy"]["blocks_per_sm"] >= 1, r


def test_memory_bound_kernels_are_128_bit(report):
    _, doc, _ = report
    for r in _rows(doc):
        if r["kernel"] not in G.STREAMS:
            assert r["vectorised"] is None and r["kernel"] in G.NOT_MEMORY_BOUND
            continue
        assert r["vectorised"] is True, (r["kernel"], r["config"], r["arch"], r["dtype"], r["vector_note"])
        assert r["streams"] and all(widths == [128] or f"EXEMPT {stream}" in r["vector_note"]  # ViT-g's 14-px rows
                                    for stream, widths in r["streams"].items()), r["streams"]
        if r["kernel"] == "_tubelet_gather_kernel" and "EXEMPT video rows" in r["vector_note"]:
            assert r["sass"].get("STG.128", 0) > 0 and r["ptx"].get("st.global.v4", 0) > 0  # ViT-g: only the stores
        else:
            assert r["sass"].get("LDG.128", 0) > 0 and r["ptx"].get("ld.global.v4", 0) > 0
        assert not any(k in r["sass"] for k in ("LDG.8", "LDG.16", "STG.8", "STG.16"))  # no element-wise bf16
    # the fused loss reads pred (and writes the gradient) as contiguous rows: no stride-3 access left
    bwd = [r for r in _rows(doc) if r["kernel"] == "_recon_loss_bwd_kernel"]
    assert bwd and all(r["sass"].get("STG.128", 0) > 0 for r in bwd)


# Per-SM limits of sm_80 (A100) and sm_90 (H100) from the CUDA programming guide's compute-capability table,
# written out here (not read from roofline.GPU) so that the occupancy in the report is checked against the hardware.
REGS_PER_SM, REG_ALLOC_UNIT, MAX_THREADS_PER_SM, MAX_BLOCKS_PER_SM = 65536, 256, 2048, 32
SMEM_PER_SM = {"sm_80": 164 * 1024, "sm_90": 228 * 1024}
SMEM_RESERVED_PER_BLOCK = 1024


def _blocks_per_sm(arch, regs, warps, smem):
    """Resident CTAs per SM and the limits that bind: registers go out per warp in units of 256."""
    regs_per_warp = -(-regs * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    limits = {"registers": REGS_PER_SM // regs_per_warp // warps, "threads": MAX_THREADS_PER_SM // (32 * warps),
              "blocks": MAX_BLOCKS_PER_SM, "shared memory": SMEM_PER_SM[arch] // (smem + SMEM_RESERVED_PER_BLOCK)}
    n = min(limits.values())
    return n, {k for k, v in limits.items() if v == n}


@pytest.mark.parametrize("arch,regs,warps,smem,blocks,limiter", [
    ("sm_80", 40, 4, 8192, 12, "registers"),  # 40 x 32 = 1280 regs/warp -> 51 warps -> 12 CTAs (smem: 18, threads: 16)
    ("sm_80", 85, 4, 2048, 5, "registers"),  # 2720 -> 2816 regs/warp -> 23 warps -> 5 CTAs
    ("sm_80", 127, 16, 4096, 1, "registers"),  # 4064 -> 4096 regs/warp -> 16 warps -> 1 CTA of 16 warps
    ("sm_90", 98, 16, 4096, 1, "registers"),  # 3136 -> 3328 regs/warp -> 19 warps -> 1 CTA
    ("sm_90", 161, 4, 1024, 3, "registers"),  # 5152 -> 5376 regs/warp -> 12 warps -> 3 CTAs
    ("sm_80", 22, 8, 0, 8, "threads"),  # 768 regs/warp -> 85 warps -> 10 CTAs; 2048 / 256 threads -> 8
    ("sm_80", 16, 1, 0, 32, "blocks"),  # 64 warps of registers, 64 CTAs of threads: the 32-CTA limit
    ("sm_80", 32, 4, 40 * 1024, 4, "shared memory"),  # 164 KB / (40 + 1) KB
    ("sm_90", 32, 4, 40 * 1024, 5, "shared memory"),  # 228 KB / (40 + 1) KB
])
def test_hand_computed_occupancy(arch, regs, warps, smem, blocks, limiter):
    """The hardware arithmetic below, worked by hand, and the roofline model on the same inputs."""
    assert _blocks_per_sm(arch, regs, warps, smem) == (blocks, {limiter})
    occ = R.occupancy(R.GPU_BY_ARCH[arch], regs, 32 * warps, smem)
    assert (occ.blocks_per_sm, occ.limiter) == (blocks, limiter)


def test_occupancy_in_report_matches_the_hardware_limits(report):
    """Every compiled kernel's occupancy in the report: the CTAs per SM its registers, threads and shared memory
    allow on that architecture, computed from the hardware limits above."""
    _, doc, _ = report
    for r in _rows(doc):
        blocks, binding = _blocks_per_sm(r["arch"], r["regs"], r["num_warps"], r["smem"])
        occ = r["occupancy"]
        assert occ["blocks_per_sm"] == blocks and occ["limiter"] in binding, r
        assert occ["warps_per_sm"] == blocks * r["num_warps"], r
        assert occ["fraction"] == pytest.approx(blocks * r["num_warps"] / 64), r  # 64 warps per SM


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_sources_in_the_report(report):
    _, doc, md = report
    rows = doc["cuda"]
    assert rows and all(r.get("kernel") for r in rows), [r for r in rows if not r.get("kernel")]
    for arch in ("sm_80", "sm_90"):
        assert sum(r["arch"] == arch for r in rows) >= 20
    assert all((r["spill_stores"], r["spill_loads"]) == (0, 0) for r in rows)
    assert "CUDA sources" in md


# -- the checks themselves (no compiler needed) -------------------------------------------------------------

LOSS_KERNELS = ROOT / "vmae2_kernels" / "loss" / "triton_kernels.py"  # the kernel the checks below read


def _ptx(lines):
    return '\t.file\t1 "{}"\n'.format(LOSS_KERNELS) + "\n".join(lines)


def _line(pattern):
    text = LOSS_KERNELS.read_text().splitlines()
    return next(i + 1 for i, t in enumerate(text) if pattern in t)


def _fn():
    """The Python function of a kernel (source file and lines), under the interpreter too."""
    from vmae2_kernels.loss import triton_kernels

    obj = triton_kernels._recon_loss_bwd_kernel
    while not callable(getattr(obj, "__code__", None)) and hasattr(obj, "fn"):
        obj = obj.fn
    holder = type("F", (), {})()
    holder.fn = obj
    return holder


def test_vector_verdict_flags_a_narrow_stream():
    """A stride-3 (element-wise) pred load or grad store fails; the ViT-g video exemption needs PATCH=14."""
    pytest.importorskip("triton")
    fn = _fn()
    video, pred, grad = (_line("tl.load(video_ptr"), _line("tl.load(pred_ptr"), _line("tl.store(grad_ptr"))

    def asm(line, text):
        return ["// begin inline asm", f"\t.loc\t1 {line} 12", "mov.u32 %r1, 0x0;", f"\t.loc\t1 {line + 1} 12",
                text, "// end inline asm"]

    good = (asm(video, "@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];")
            + asm(pred, "@%p1 ld.global.v4.b32 { %r5, %r6, %r7, %r8 }, [ %rd2 + 0 ];")
            + asm(grad, "@%p1 st.global.v4.b32 [ %rd3 + 0 ], { %r5, %r6, %r7, %r8 };"))
    ok, streams, _ = G.vector_verdict(fn, "_recon_loss_bwd_kernel", _ptx(good), {"PATCH": 16})
    assert ok and streams == {"video patch": [128], "pred row": [128], "grad row": [128]}
    narrow = good[:6] + asm(pred, "@%p1 ld.global.b16 { %rs1 }, [ %rd2 + 0 ];") + good[12:]
    ok, streams, note = G.vector_verdict(fn, "_recon_loss_bwd_kernel", _ptx(narrow), {"PATCH": 16})
    assert not ok and streams["pred row"] == [16] and "pred row" in note
    video64 = asm(video, "@%p1 ld.global.v2.b32 { %r1, %r2 }, [ %rd1 + 0 ];") + good[6:]
    assert not G.vector_verdict(fn, "_recon_loss_bwd_kernel", _ptx(video64), {"PATCH": 16})[0]
    ok, _, note = G.vector_verdict(fn, "_recon_loss_bwd_kernel", _ptx(video64), {"PATCH": 14})
    assert ok and note.startswith("EXEMPT video patch")
    missing = good[:6] + good[12:]
    assert not G.vector_verdict(fn, "_recon_loss_bwd_kernel", _ptx(missing), {"PATCH": 16})[0]


def test_problems_flags_spills_local_memory_and_smem():
    base = dict(op="x", kernel="_recon_loss_fwd_kernel", shape="ViT-B", dtype="bfloat16", arch="sm_80", config="w4",
                num_warps=4, num_stages=1, constexprs={}, signature="", grid=[1, 1, 1], regs=40, spill_stores=0,
                spill_loads=0, stack=0, local_bytes=0, smem=8192, sass={"LDG.128": 4}, ptx={}, global_bytes=64,
                vector_share=1.0, streams={}, occupancy={"blocks_per_sm": 12, "limiter": "registers"},
                memory_bound=True, vectorised=True, vector_note="", compile_s=0.1)
    assert G.problems([G.KernelReport(**base)]) == []
    bad = G.KernelReport(**{**base, "spill_stores": 8, "local_bytes": 8, "sass": {"STL.32": 1}, "smem": 9000,
                            "vectorised": False, "vector_note": "pred row: 16-bit"})
    found = "\n".join(G.problems([bad]))
    assert "spills 8 B" in found and "local memory" in found and "budget of 8192" in found and "16-bit" in found


def test_ptxas_and_sass_parsers():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
           "    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n")
    assert G.parse_ptxas(log) == {"regs": 255, "stack": 16, "spill_stores": 8, "spill_loads": 4,
                                  "static_smem": 2048}
    sass = ("        /*0100*/                   LDG.E.128 R4, desc[UR4][R2.64] ;\n"
            "        /*0110*/              @P0 LDG.E.U16 R9, desc[UR4][R6.64] ;\n"
            "        /*0120*/                   STG.E.64 desc[UR4][R2.64], R4 ;\n"
            "        /*0130*/                   STL [R1], R4 ;\n"
            "        /*0140*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;\n")
    assert G.sass_mix(sass) == {"BAR": 1, "LDG.128": 1, "LDG.16": 1, "STG.64": 1, "STL.32": 1}


# -- roofline -------------------------------------------------------------------------------------------------

def test_shapes_match_the_models_and_the_benchmarks():
    from vmae2.models.configs import SIZES

    for name, size in (("ViT-B", "base"), ("ViT-L", "large"), ("ViT-g", "giant")):
        s, cfg = R.SHAPES[name], SIZES[size]
        assert (s.patch, s.dim, s.dec_dim) == (cfg.patch_size, cfg.embed_dim, cfg.decoder_embed_dim)
    assert [(s.num_tokens, s.num_visible, s.num_dec, s.pred_dim) for s in R.SHAPES.values()] == [
        (1568, 160, 784, 1536), (1568, 160, 784, 1536), (2048, 208, 1024, 1176)]


def test_occupancy_rules():
    a100, h100 = R.GPUS["A100"], R.GPUS["H100"]
    assert R.occupancy(a100, 32, 128).blocks_per_sm == 16  # 2048 threads
    assert R.occupancy(a100, 40, 128).blocks_per_sm == 12  # 40 regs -> 1280 per warp -> 51 warps -> 12 CTAs
    assert R.occupancy(a100, 40, 128).limiter == "registers"
    assert R.occupancy(a100, 16, 32).blocks_per_sm == 32  # the block limit
    assert R.occupancy(a100, 32, 128, smem=40 * 1024).blocks_per_sm == 4  # 164 KB / 41 KB
    assert R.occupancy(h100, 32, 128, smem=40 * 1024).blocks_per_sm == 5  # 228 KB / 41 KB
    assert R.occupancy(a100, 32, 128, smem=200 * 1024).blocks_per_sm == 0  # above the per-CTA maximum


def test_traffic_and_predictions():
    b = R.traffic("token_gather", "ViT-B", 32, "bfloat16")
    rows = 32 * 160 * 768
    assert b.bytes == rows * 2 + 32 * 160 * 8 + 1568 * 768 * 4 + rows * 2  # table rows once (1568 < 32 * 160)
    assert b.logical_bytes == rows * (2 + 4 + 2) + 32 * 160 * 8 and b.flops == rows
    loss = R.traffic("recon_loss", "ViT-B", 32, "bfloat16")
    assert loss.bytes == 32 * 784 * (1536 * 2 + 1536 * 4 + 8 + 4 + 4)
    tubelets = R.traffic("tubelet_gather", "ViT-B", 32, "bfloat16")
    assert tubelets.bytes == 2 * 32 * 160 * 1536 * 2 + 32 * 160 * 8 and tubelets.flops == 0  # pixels read + written
    assert R.launches("tubelet_gather", "ViT-B")[0].ctas == 32 * 160 * 3  # 1536-pixel rows in 512-pixel programs
    assert R.sector_overfetch(R.SHAPES["ViT-B"]) == 1.0 and 1.4 < R.sector_overfetch(R.SHAPES["ViT-g"]) < 1.45
    assert R.sector_overfetch(R.SHAPES["ViT-g"], 2) == 2.0  # bf16: 28-byte rows touch 2 sectors on average
    # A streaming copy with enough CTAs: floor = bytes / HBM bandwidth; predicted = one launch gap + the bytes at
    # 90 % of it (A100: 1.9 TB/s, 2.5 µs; H100: 3.0 TB/s, 2.0 µs), on the byte count checked above.
    for gpu, hbm, gap in (("A100", 1.9e12, 2.5e-6), ("H100", 3.0e12, 2.0e-6)):
        p = R.predict("token_gather", "ViT-B", 32, "bfloat16", gpu)
        assert p.floor_s == pytest.approx(b.bytes / hbm) and p.floor_s == pytest.approx(20_586_496 / hbm)
        assert p.predicted_s == pytest.approx(gap + 20_586_496 / (0.9 * hbm)), gpu
    for op in ("token_gather", "tubelet_gather", "decoder_input", "mask_token_grad", "recon_loss",
               "recon_loss_backward"):
        a, h = R.predict(op, "ViT-B", gpu="A100"), R.predict(op, "ViT-B", gpu="H100")
        assert a.bound == h.bound == "memory", op
    assert R.predict("running_cell_ids", "ViT-B").bound == "launch"
    assert R.gpu_for("NVIDIA H100 80GB HBM3").name == "H100-80GB" and R.gpu_for("cpu") is None


def test_triton_configs_come_from_the_roofline_tiles():
    pytest.importorskip("triton")
    from vmae2_kernels import triton_common as T

    first = [(c.kwargs, c.num_warps, c.num_stages) for c in T.ROW_CONFIGS]
    tiles = [(kw, w, s) for kw, w, s, _ in R.ROW_TILES]
    assert first == (tiles[:1] if T.INTERPRET else tiles)
    assert all(reason for *_, reason in R.ROW_TILES + R.LOSS_TILES)


def test_roofline_cli():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.roofline", "--batch", "32"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PREDICTED" in proc.stdout and "| token_gather | ViT-B |" in proc.stdout
