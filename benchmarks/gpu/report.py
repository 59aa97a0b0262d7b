"""Ahead-of-time GPU report: compile every Triton kernel of vmae2_kernels for A100 (sm_80) and H100 (sm_90) on a
machine with no GPU, and read what the compiled code will do.

    python -m benchmarks.gpu.report                      # ViT-B/L/g x fp32/bf16 x sm_80/sm_90, every autotune config
    python -m benchmarks.gpu.report --shape ViT-B --arch sm_90 --json report.json

**What is compiled.** The launchers of :mod:`vmae2_kernels.triton_ops` (every op family's) are called on ``meta``
tensors of the real shapes (batch 32) with each kernel's ``run`` intercepted, so every specialisation is the one the
launcher really passes: dtypes, constexprs, grid, and Triton's own argument specialisation (its JIT binder decides
which integers and pointers get ``tt.divisibility = 16``; pointers are taken as 16-byte aligned, as fresh CUDA
allocations are).
Autotuned kernels are compiled once per config (the autotuner may pick any of them). ``triton.compile`` with a
``GPUTarget`` needs no driver; the PTX goes through the ptxas, cuobjdump and nvdisasm shipped in the Triton wheel.

**What is reported** per kernel, config and arch: registers, spill bytes (ptxas ``-v`` with Triton's flags), local
memory, stack frame, shared memory (Triton's dynamic allocation + static), the global load/store mix of the SASS by
width (``LDG.E.128`` ...), local (``LDL``/``STL``) and shared traffic, the PTX vector instructions
(``ld.global.v4``), the launch grid and the theoretical occupancy (:func:`benchmarks.gpu.roofline.occupancy`).
Then the checks (:func:`problems`): 0 spills and no local memory anywhere; shared memory within its budget; and
for the memory-bound kernels, 128-bit global access (:func:`vector_verdict`). ``--predict`` adds the roofline
model's PREDICTED times computed with the compiled registers and shared memory.

The CUDA sources of ``csrc/cuda`` get the same register/spill/SASS report from ``nvcc -Xptxas -v`` when nvcc is
on PATH (:func:`nvcc_report`).

Under ``TRITON_INTERPRET=1`` (the CPU test setting) Triton builds no JIT kernels, so the CLI re-runs itself in a
subprocess without that variable.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmae2_kernels import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, optional
from benchmarks.gpu import roofline as R

ARCHS = {"sm_80": 80, "sm_90": 90}
DTYPES = ("float32", "bfloat16")

# Kernels that stream data: their global accesses must be 128-bit (see vector_verdict).
MEMORY_BOUND = ("_row_copy_kernel", "_tubelet_gather_kernel", "_decoder_input_kernel", "_masked_rows_sum_kernel",
                "_recon_loss_fwd_kernel", "_recon_loss_bwd_kernel")
# Kernels that are not bandwidth-bound, and why 128-bit access is not expected of them.
NOT_MEMORY_BOUND = {
    "_running_cell_kernel": "index kernel: writes each kept id (int64) to a data-dependent prefix-sum slot, so "
                            "every store is one 64-bit element; 0.2 MB per call, launch-bound",
    "_tube_kernel": "index kernel: O(HW^2) key comparisons on one CTA per sample, ids stored at prefix-sum slots; "
                    "latency/compute-bound, < 0.2 MB per call",
}
# The bulk data streams of each memory-bound kernel, by the source text of their tl.load / tl.store (and, for a
# stream that only some specialisations have, the constexpr that enables it): every global access the PTX
# attributes (.loc) to those lines must be 128-bit. Ids and per-CTA scalars are not streams.
STREAMS = {
    "_row_copy_kernel": {"src rows": "tl.load(src_ptr", "pos rows": ("tl.load(pos_ptr", "HAS_POS", True),
                         "dst rows": "tl.store(dst_ptr"},
    "_tubelet_gather_kernel": {"video rows": "tl.load(video_ptr", "out rows": "tl.store(out_ptr"},
    "_decoder_input_kernel": {"x_vis rows": "tl.load(x_ptr", "pos rows": "tl.load(pos_ptr",
                              "out rows": "tl.store(out_ptr"},
    "_masked_rows_sum_kernel": {"grad rows": "tl.load(grad_ptr"},
    "_recon_loss_fwd_kernel": {"video patch": "tl.load(video_ptr", "pred row": "tl.load(pred_ptr"},
    "_recon_loss_bwd_kernel": {"video patch": "tl.load(video_ptr", "pred row": "tl.load(pred_ptr",
                               "grad row": "tl.store(grad_ptr"},
}
# Explicit exemptions from the 128-bit rule: (kernel, stream, constexpr, value) -> reason.
VECTOR_EXEMPT = {
    ("_tubelet_gather_kernel", "video rows", "PATCH", 14):
        "ViT-g's patch rows are 14 pixels (28 bytes in bf16, 56 in fp32) starting at multiples of 14 pixels: 4-byte "
        "(bf16) or 8-byte (fp32) alignment at most, so no 128-bit load of them exists; Triton emits the widest the "
        "alignment allows. The output rows (1176 pixels, 16-byte aligned) stay 128-bit (checked)",
    ("_recon_loss_fwd_kernel", "video patch", "PATCH", 14):
        "ViT-g's patch rows are 14 pixels = 56 bytes of fp32 video starting at multiples of 56 bytes: only 8-byte "
        "alignment is guaranteed, so no 128-bit load of them exists; Triton emits the 64-bit loads that do. The "
        "pred row stays 128-bit (checked)",
    ("_recon_loss_bwd_kernel", "video patch", "PATCH", 14):
        "as the forward: 56-byte video rows at 8-byte alignment allow 64-bit loads at most (emitted); the pred and "
        "grad rows stay 128-bit (checked)",
}

# -- tools --------------------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """Path of ``ptxas`` / ``cuobjdump`` / ``nvdisasm`` as Triton resolves them (the wheel's copies by default)."""
    from triton import knobs

    return getattr(knobs.nvidia, name).path


def _tool_home() -> str:
    """Where ``ptxas`` comes from, without this machine's paths: the Triton wheel's folder, or the folder named."""
    import triton

    folder = Path(tool("ptxas")).parent.resolve()
    wheel = Path(triton.__file__).parent.resolve()
    return f"Triton's wheel (triton/{folder.relative_to(wheel)})" if folder.is_relative_to(wheel) else str(folder)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


PTXAS_RE = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill": re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"),
    "smem": re.compile(r"(\d+) bytes smem"),
}
SASS_MEM = re.compile(r"\b(LDG|STG|LDL|STL|LDS|STS|LDSM|STSM|LDGSTS|ATOMG|RED|ATOMS|LD|ST)((?:\.[A-Z0-9_]+)*)\s")
SASS_OTHER = re.compile(r"\b(BAR|SHFL|MUFU)((?:\.[A-Z0-9_]+)*)\s")


def _bits(mods: str) -> int:
    m = mods.split(".")
    for w in ("128", "64"):
        if w in m:
            return int(w)
    if "U16" in m or "S16" in m:
        return 16
    if "U8" in m or "S8" in m:
        return 8
    return 32


def sass_mix(sass: str) -> dict[str, int]:
    """Static instruction counts that matter: global/local/shared memory ops by width, barriers, shuffles."""
    mix: Counter = Counter()
    for line in sass.splitlines():
        if "/*" not in line:
            continue
        for op, mods in SASS_MEM.findall(line):
            if op in ("LD", "ST"):  # generic-address accesses (not expected from Triton)
                op = op + "_GENERIC"
            mix[f"{op}.{_bits(mods)}" if op in ("LDG", "STG", "LDL", "STL", "LDS", "STS") else op] += 1
        for op, _ in SASS_OTHER.findall(line):
            mix[op] += 1
    return dict(sorted(mix.items()))


def ptx_mix(ptx: str) -> dict[str, int]:
    mix = Counter()
    for m in re.finditer(r"\b(ld|st)\.(global|local|shared)((?:\.[a-z0-9]+)*)", ptx):
        kind, space, mods = m.groups()
        vec = next((v for v in (".v4", ".v2") if v in mods), "")
        mix[f"{kind}.{space}{vec}"] += 1
    return dict(sorted(mix.items()))


def parse_ptxas(log: str) -> dict:
    """Registers, spills, stack frame and static shared memory of the (single) entry in a ptxas ``-v`` log."""
    regs = PTXAS_RE["regs"].search(log)
    spill = PTXAS_RE["spill"].search(log)
    smem = PTXAS_RE["smem"].search(log)
    return {"regs": int(regs.group(1)) if regs else 0,
            "stack": int(spill.group(1)) if spill else 0,
            "spill_stores": int(spill.group(2)) if spill else 0,
            "spill_loads": int(spill.group(3)) if spill else 0,
            "static_smem": int(smem.group(1)) if smem else 0}


# -- capture the launchers' specialisations -------------------------------------------------------------------


@dataclass
class Spec:
    """One kernel launch as a launcher makes it (arguments on meta tensors)."""

    op: str
    kernel: str
    obj: object  # the Autotuner or JITFunction
    args: tuple
    kwargs: dict
    grid: object
    shape: str
    dtype: str

    @property
    def configs(self) -> list:
        return list(getattr(self.obj, "configs", None) or [None])


def _kernels(module) -> dict:
    import triton
    from triton.runtime.jit import JITFunction

    return {name: obj for family in module.MODULES for name, obj in vars(family).items()
            if isinstance(obj, (JITFunction, triton.runtime.autotuner.Autotuner))}


def jit_function(obj):
    from triton.runtime.jit import JITFunction

    fn = obj
    while not isinstance(fn, JITFunction):
        if not hasattr(fn, "fn"):
            raise TypeError(f"{obj!r} is not a Triton JIT kernel (TRITON_INTERPRET=1 builds interpreted ones)")
        fn = fn.fn
    return fn


def capture(shape: str = "ViT-B", dtype: str = "bfloat16", batch: int = R.BATCH) -> list[Spec]:
    """Call every launcher of triton_ops on meta tensors of ``shape`` and record the kernel launches.

    Activations (x, x_vis, pred, the scatter's source) in ``dtype``; position tables, mask token, video and the
    decoder-input gradient fp32; ids int64: the training setting (``reference.decoder_input`` promotes to fp32).
    The tubelet gather's video, its only tensor, is in ``dtype`` too (fp32 is the training clip, bf16 a clip cast
    before the embedding), so both widths are compiled.
    """
    import torch

    from vmae2_kernels import triton_ops as T

    s = R.ALL_SHAPES[shape]
    act = getattr(torch, dtype)
    kernels = _kernels(T)
    for obj in kernels.values():
        jit_function(obj)  # raises under the interpreter
    calls: list[Spec] = []
    current = {"op": ""}

    def recorder(name, obj):
        def run(*args, grid=None, warmup=False, **kwargs):
            calls.append(Spec(current["op"], name, obj, args, kwargs, grid, shape, dtype))
        return run

    def meta(*size, dt=torch.float32):
        return torch.empty(*size, device="meta", dtype=dt)

    B, N, Nv, Nd, C, D = batch, s.num_tokens, s.num_visible, s.num_dec, s.dim, s.dec_dim
    vis, dec = meta(B, Nv, dt=torch.int64), meta(B, Nd, dt=torch.int64)
    video, weights = meta(B, 3, s.frames, s.image, s.image), meta(B, Nd)
    mean, std = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    loss_args = (video, dec, weights, s.patch, s.tubelet, 1, mean, std)  # the VideoMAE target
    mae_args = (video, dec, weights, s.patch, s.tubelet, 2, mean, std)  # MAE's: one statistic over the whole patch
    launches = [
        ("token_gather", lambda: T.token_gather(meta(B, N, C, dt=act), vis, meta(N, C))),
        ("token_scatter", lambda: T.token_scatter(meta(B, Nv, C, dt=act), vis, N)),
        ("tubelet_gather", lambda: T.tubelet_gather(meta(B, 3, s.frames, s.image, s.image, dt=act), vis, s.patch,
                                                    s.tubelet)),
        ("decoder_input", lambda: T.decoder_input(meta(B, Nv, D, dt=act), vis, dec, meta(1, 1, D), meta(N, D))),
        ("mask_token_grad", lambda: T.mask_token_grad(meta(B, Nv + Nd, D), Nv)),
        ("running_cell_ids", lambda: T.running_cell_ids(meta(B, dt=torch.int64), s.grid, s.masked_per_cell)),
        ("tube_ids", lambda: T.tube_ids(meta(B, s.hw), s.grid[0], s.masked_per_frame)),
        ("recon_loss", lambda: T.recon_loss(meta(B, Nd, s.pred_dim, dt=act), *loss_args)),
        ("recon_loss_backward", lambda: T.recon_loss_backward(meta(()), meta(B, Nd, s.pred_dim, dt=act), *loss_args)),
        ("recon_loss", lambda: T.recon_loss(meta(B, Nd, s.pred_dim, dt=act), *mae_args)),
        ("recon_loss_backward", lambda: T.recon_loss_backward(meta(()), meta(B, Nd, s.pred_dim, dt=act), *mae_args)),
    ]
    try:
        for name, obj in kernels.items():
            obj.run = recorder(name, obj)  # instance attribute: kernel[grid](...) calls it instead of launching
        for op, call in launches:
            current["op"] = op
            call()
    finally:
        for obj in kernels.values():
            obj.__dict__.pop("run", None)
    return calls


# -- compile and analyse ------------------------------------------------------------------------------------


@dataclass
class KernelReport:
    op: str
    kernel: str
    shape: str
    dtype: str
    arch: str
    config: str
    num_warps: int
    num_stages: int
    constexprs: dict
    signature: str
    grid: list
    regs: int
    spill_stores: int
    spill_loads: int
    stack: int
    local_bytes: int  # cuobjdump LOCAL (per thread)
    smem: int  # Triton's dynamic shared memory + static
    sass: dict
    ptx: dict
    global_bytes: int  # static count: sum of LDG/STG widths (bytes) per thread
    vector_share: float  # of global_bytes, the share in 128-bit accesses
    streams: dict  # memory-bound kernels: stream -> access widths (bits) seen in the PTX
    occupancy: dict
    memory_bound: bool
    vectorised: bool | None  # None: not a memory-bound kernel
    vector_note: str
    compile_s: float
    also: list = field(default_factory=list)  # other (shape, dtype, op) launches with this exact specialisation

    @property
    def ctas(self) -> int:
        return math.prod(self.grid)


def _label(spec: Spec, config) -> tuple[str, int, int, dict]:
    if config is None:
        warps = spec.kwargs.get("num_warps", 4)
        stages = spec.kwargs.get("num_stages")  # labelled only when the launcher fixes it (the loss kernels)
        blocks = {k: v for k, v in spec.kwargs.items() if k.startswith("BLOCK")}
        return R.config_label(blocks, warps, stages), warps, stages or 3, {}
    return R.config_label(config.kwargs, config.num_warps, config.num_stages), config.num_warps, config.num_stages, \
        config.all_kwargs()


def specialise(spec: Spec, config, cap: int):
    """``(jit fn, target, ASTSource args, options, grid)`` exactly as Triton's JIT would build them at launch."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = jit_function(spec.obj)
    target = GPUTarget("cuda", cap, 32)
    backend = make_backend(target)
    kwargs = dict(spec.kwargs)
    if config is not None:
        kwargs.update(config.all_kwargs())
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*spec.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    grid = spec.grid(bound) if callable(spec.grid) else spec.grid
    grid = [int(g) for g in grid] + [1] * (3 - len(grid))
    return fn, target, signature, constexprs, attrs, options, grid


def _key(fn, target, signature, constexprs, attrs, options) -> str:
    return repr((fn.__name__, target.arch, sorted(signature.items()), sorted(constexprs.items()),
                 sorted((k, repr(v)) for k, v in attrs.items()), sorted(options.__dict__.items(), key=str)))


def ptx_accesses(ptx: str, source: str) -> list[tuple[int, str, int]]:
    """``(source line, "ld"/"st", bits)`` of every global access in Triton's PTX, attributed through ``.loc`` to
    lines of ``source`` (the kernels' file; accesses inlined from elsewhere get line 0)."""
    files = {m.group(1) for m in re.finditer(r'\.file\s+(\d+)\s+"([^"]+)"', ptx)
             if Path(m.group(2)).resolve() == Path(source).resolve()}
    out, line, in_asm, asm_line = [], 0, False, None
    for text in ptx.splitlines():
        if "begin inline asm" in text:
            in_asm, asm_line = True, None
        elif "end inline asm" in text:
            in_asm = False
        loc = re.search(r"\.loc\s+(\d+)\s+(\d+)\s+\d+", text)
        if loc:
            here = int(loc.group(2)) if loc.group(1) in files else 0
            # LLVM numbers the lines of an inline-asm block (Triton's loads/stores) up from the call's line:
            # the block's first .loc is the source line.
            if not in_asm:
                line = here
            elif asm_line is None:
                asm_line = line = here
        acc = re.search(r"\b(ld|st)\.global((?:\.[a-z0-9]+)*)", text)
        if acc:
            mods = acc.group(2).split(".")
            vec = 4 if "v4" in mods else 2 if "v2" in mods else 1
            bits = next((int(m[1:]) for m in mods if m[:1] in "bufs" and m[1:].isdigit()), 32)
            out.append((line, acc.group(1), vec * bits))
    return out


def stream_lines(fn, pattern: str) -> set[int]:
    """Line numbers (in the kernels' file) of the source lines that contain ``pattern``."""
    import inspect

    lines = Path(inspect.getsourcefile(fn.fn)).read_text().splitlines()
    return {i + 1 for i, text in enumerate(lines) if pattern in text}


def vector_verdict(fn, kernel: str, ptx: str, constexprs: dict) -> tuple[bool | None, dict, str]:
    """``(vectorised, {stream: widths seen}, note)``; vectorised is None for kernels that are not memory-bound.

    A memory-bound kernel passes when every stream of :data:`STREAMS` appears in the PTX and each of its global
    accesses is 128-bit (``ld.global.v4.b32`` etc.), unless :data:`VECTOR_EXEMPT` exempts that stream for the
    kernel's constexprs (the reason is reported).
    """
    import inspect

    if kernel not in STREAMS:
        return None, {}, NOT_MEMORY_BOUND.get(kernel, "not classified")
    accesses = ptx_accesses(ptx, inspect.getsourcefile(fn.fn))
    widths, bad, notes = {}, [], []
    for stream, pattern in STREAMS[kernel].items():
        if isinstance(pattern, tuple):
            pattern, name, value = pattern
            if constexprs.get(name) != value:
                continue
        lines = stream_lines(fn, pattern)
        seen = sorted({bits for line, _, bits in accesses if line in lines})
        widths[stream] = seen
        exempt = [why for (k, st, name, value), why in VECTOR_EXEMPT.items()
                  if k == kernel and st == stream and constexprs.get(name) == value]
        if not seen:
            bad.append(f"{stream}: no global access found in the PTX")
        elif seen != [128]:
            if exempt:
                notes.append(f"EXEMPT {stream} ({'/'.join(map(str, seen))}-bit): {exempt[0]}")
            else:
                bad.append(f"{stream}: {'/'.join(map(str, seen))}-bit accesses")
    if bad:
        return False, widths, "not 128-bit: " + "; ".join(bad)
    return True, widths, "; ".join(notes)


def analyse(spec: Spec, config, arch: str, workdir: Path) -> tuple[str, KernelReport | None, object]:
    """Compile one (spec, config, arch); returns ``(key, report, compiled)`` (report None when only the key)."""
    import triton
    from triton.compiler import ASTSource

    cap = ARCHS[arch]
    fn, target, signature, constexprs, attrs, options, grid = specialise(spec, config, cap)
    key = _key(fn, target, signature, constexprs, attrs, options)
    t0 = time.perf_counter()
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    compile_s = time.perf_counter() - t0
    label, warps, stages, _ = _label(spec, config)
    stem = workdir / re.sub(r"\W", "_", f"{spec.kernel}_{abs(hash(key))}")
    ptx_path, cubin_path = stem.with_suffix(".ptx"), stem.with_suffix(".cubin")
    ptx_path.write_text(compiled.asm["ptx"])
    cubin_path.write_bytes(compiled.asm["cubin"])
    gpu_name = f"sm_{cap}a" if cap >= 90 else f"sm_{cap}"
    log = _run([tool("ptxas"), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu_name}", str(ptx_path),
                "-o", str(stem.with_suffix(".o"))])
    if log.returncode:
        raise RuntimeError(f"ptxas failed on {spec.kernel}: {log.stderr[-2000:]}")
    res = parse_ptxas(log.stdout + log.stderr)
    usage = _run([tool("cuobjdump"), "-res-usage", str(cubin_path)]).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    reg, _stack, _shared, local = (int(x) for x in m.groups()) if m else (res["regs"], res["stack"], 0, 0)
    sass = sass_mix(_run([tool("cuobjdump"), "-sass", str(cubin_path)]).stdout)
    cexpr = {str(fn.arg_names[k[0]]): v for k, v in constexprs.items() if not isinstance(v, type(None))}
    vectorised, streams, note = vector_verdict(fn, spec.kernel, compiled.asm["ptx"], cexpr)
    glob = {k: v for k, v in sass.items() if k.startswith(("LDG.", "STG."))}
    total = sum(int(k.split(".")[1]) // 8 * v for k, v in glob.items())
    share = sum(16 * v for k, v in glob.items() if k.endswith(".128")) / total if total else 0.0
    # ptxas' static shared memory, not cuobjdump's SHARED: on sm_90 that includes the 1 KB the driver reserves
    # per CTA, which occupancy() adds itself.
    smem = int(compiled.metadata.shared) + res["static_smem"]
    gpu = R.GPU_BY_ARCH[arch]
    occ = R.occupancy(gpu, reg, 32 * warps, smem)
    sig = ", ".join(f"{fn.arg_names[k[0]] if isinstance(k, tuple) else k}:{v}" for k, v in signature.items()
                    if v != "constexpr")
    report = KernelReport(
        op=spec.op, kernel=spec.kernel, shape=spec.shape, dtype=spec.dtype, arch=arch, config=label,
        num_warps=warps, num_stages=stages, constexprs={k: v for k, v in cexpr.items() if not k.startswith("num_")},
        signature=sig, grid=grid, regs=reg, spill_stores=res["spill_stores"], spill_loads=res["spill_loads"],
        stack=res["stack"], local_bytes=local, smem=smem, sass=sass, ptx=ptx_mix(compiled.asm["ptx"]),
        global_bytes=total, vector_share=round(share, 3), streams=streams, occupancy=asdict(occ),
        memory_bound=spec.kernel in MEMORY_BOUND, vectorised=vectorised, vector_note=note,
        compile_s=round(compile_s, 3))
    if reg != res["regs"]:  # the cubin Triton built and the ptxas -v rerun must agree
        report.vector_note += f" [ptxas -v rerun reports {res['regs']} registers, cubin {reg}]"
    return key, report, compiled


def build_report(shapes=("ViT-B", "ViT-L", "ViT-g"), dtypes=DTYPES, archs=tuple(ARCHS), batch: int = R.BATCH,
                 jobs: int = 2, log=None) -> list[KernelReport]:
    """Compile every launcher's kernels (every autotune config) for each shape, dtype and arch; identical
    specialisations (same signature, constexprs, divisibility, options and arch) are compiled once and list the
    other launches they cover in ``also``."""
    work = []
    for shape in shapes:
        for dtype in dtypes:
            for spec in capture(shape, dtype, batch):
                for config in spec.configs:
                    for arch in archs:
                        work.append((spec, config, arch))
    from triton import knobs

    reports: dict[str, KernelReport] = {}
    keys = []
    # A private, fresh Triton cache: a cached kernel keeps the line numbers (.loc) of the source it was compiled
    # from, and Triton's cache key ignores where the function sits in its file.
    with tempfile.TemporaryDirectory(prefix="vmae2_gpu_report_") as tmp, knobs.cache.scope():
        knobs.cache.dir = str(Path(tmp) / "triton_cache")
        # Dedupe first (specialising is cheap), then compile the unique ones in a small thread pool (ptxas and
        # cuobjdump run as subprocesses).
        unique: dict[str, tuple] = {}
        for spec, config, arch in work:
            fn, target, signature, constexprs, attrs, options, _ = specialise(spec, config, ARCHS[arch])
            key = _key(fn, target, signature, constexprs, attrs, options)
            keys.append(key)
            unique.setdefault(key, (spec, config, arch))

        def one(item):
            spec, config, arch = item
            return analyse(spec, config, arch, Path(tmp))[:2]

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for key, rep in pool.map(one, unique.values()):
                reports[key] = rep
                if log:
                    log(f"  {rep.arch} {rep.kernel:24s} {rep.config:32s} {rep.regs:3d} regs  {rep.compile_s:.2f} s")
    for key, (spec, _config, _arch) in zip(keys, work):
        rep = reports[key]
        tag = f"{spec.op} {spec.shape} {spec.dtype}"
        first = f"{rep.op} {rep.shape} {rep.dtype}"
        if tag != first and tag not in rep.also:
            rep.also.append(tag)
    return list(reports.values())


# -- checks -------------------------------------------------------------------------------------------------


def problems(reports: list[KernelReport]) -> list[str]:
    """Everything the acceptance criteria forbid, one line each (empty: all good)."""
    out = []
    for r in reports:
        where = f"{r.kernel} [{r.config}] {r.arch} ({r.op} {r.shape} {r.dtype})"
        gpu = R.GPU_BY_ARCH[r.arch]
        if r.spill_stores or r.spill_loads:
            out.append(f"{where}: spills {r.spill_stores} B stores / {r.spill_loads} B loads")
        if r.local_bytes or any(k.startswith(("LDL", "STL")) for k in r.sass):
            out.append(f"{where}: local memory ({r.local_bytes} B/thread, {r.sass})")
        budget = R.ASSUMED_RESOURCES.get(r.kernel, (255, gpu.smem_per_block))[1]
        if r.smem > budget or r.smem > gpu.smem_per_block:
            out.append(f"{where}: {r.smem} B of shared memory exceeds its budget of {budget} B")
        if r.occupancy["limiter"] == "shared memory":
            out.append(f"{where}: shared memory limits occupancy ({r.occupancy})")
        if r.occupancy["blocks_per_sm"] < 1:
            out.append(f"{where}: cannot run ({r.occupancy})")
        if r.memory_bound and not r.vectorised:
            out.append(f"{where}: global access not vectorised: {r.vector_note}")
    return out


# -- nvcc: the CUDA sources ---------------------------------------------------------------------------------


def _demangle(names: list[str]) -> dict[str, str]:
    for exe in ("cu++filt", "c++filt"):
        path = shutil.which(exe) or (shutil.which("nvcc") and str(Path(shutil.which("nvcc")).parent / exe))
        if path and Path(path).exists():
            out = _run([path], input="\n".join(names))
            if out.returncode == 0:
                return dict(zip(names, out.stdout.splitlines()))
    return {n: n for n in names}


def nvcc_report(archs=tuple(ARCHS), sources: list[Path] | None = None, nvcc: str | None = None) -> list[dict]:
    """``nvcc -cubin -Xptxas -v`` of every ``csrc/cuda/*.cu`` per arch: one dict per kernel instantiation with
    registers, spills, stack, static shared memory, the SASS global access mix and the register-limited occupancy
    (the block size is the launcher's choice, so the occupancy shown is the register limit at 256 threads)."""
    nvcc = nvcc or shutil.which("nvcc")
    root = Path(__file__).resolve().parents[2]
    sources = sources if sources is not None else sorted((root / "csrc" / "cuda").glob("*.cu"))
    if not nvcc or not sources:
        return []
    rows = []
    with tempfile.TemporaryDirectory(prefix="vmae2_nvcc_") as tmp:
        for src in sources:
            for arch in archs:
                cubin = Path(tmp) / f"{src.stem}_{arch}.cubin"
                proc = _run([nvcc, "-cubin", "-std=c++17", "-O3", f"-arch={arch}", "-I", str(src.parent), str(src),
                             "-o", str(cubin), "-Xptxas", "-v"])
                if proc.returncode:
                    rows.append({"source": src.name, "arch": arch, "kernel": None,
                                 "error": (proc.stderr or proc.stdout)[-2000:]})
                    continue
                log = proc.stdout + proc.stderr
                blocks = re.split(r"(?=ptxas info\s+: Compiling entry function ')", log)[1:]
                sass_by_fn = {}
                dump = _run([tool("cuobjdump"), "-sass", str(cubin)]).stdout
                for part in re.split(r"\n\s*Function : ", dump)[1:]:
                    name, _, body = part.partition("\n")
                    sass_by_fn[name.strip()] = sass_mix(body)
                names = [re.search(r"entry function '([^']+)'", b).group(1) for b in blocks]
                pretty = _demangle(names)
                gpu = R.GPU_BY_ARCH[arch]
                for name, block in zip(names, blocks):
                    res = parse_ptxas(block)
                    full = pretty.get(name, name)
                    short = re.sub(r"^void ", "", full.split("(")[0])
                    occ = R.occupancy(gpu, res["regs"], 256, res["static_smem"])
                    rows.append({"source": src.name, "arch": arch, "kernel": short, "mangled": name,
                                 **res, "sass": sass_by_fn.get(name, {}), "occupancy_256": asdict(occ)})
    return rows


# -- text ---------------------------------------------------------------------------------------------------


def _mix_text(sass: dict) -> str:
    keys = [k for k in sass if k.startswith(("LDG", "STG", "LDL", "STL"))]
    text = " ".join(f"{k}x{sass[k]}" for k in keys)
    shared = sum(v for k, v in sass.items() if k.startswith(("LDS", "STS", "LDSM", "STSM")))
    return text + (f" smem-ops x{shared}" if shared else "")


def _span(values: list, unit: str = "") -> str:
    return f"{values[0]}-{values[-1]}{unit}" if values[0] != values[-1] else f"{values[0]}{unit}"


def summary(reports: list[KernelReport]) -> list[str]:
    """One row per kernel and arch over all its specialisations (configs, dtypes, shapes)."""
    head = ["kernel", "arch", "specialisations", "regs", "spill B", "smem B (max)", "128-bit streams",
            "theoretical occupancy"]
    out = ["## Summary", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = MEMORY_BOUND + tuple(NOT_MEMORY_BOUND)
    for kernel in sorted({r.kernel for r in reports}, key=lambda k: order.index(k) if k in order else 99):
        for arch in sorted({r.arch for r in reports}):
            rs = [r for r in reports if r.kernel == kernel and r.arch == arch]
            if not rs:
                continue
            regs = sorted({r.regs for r in rs})
            warps = sorted({r.occupancy["warps_per_sm"] for r in rs})
            max_warps = R.GPU_BY_ARCH[arch].max_threads_per_sm // 32
            if all(r.vectorised is None for r in rs):
                vec = "n/a (index kernel)"
            else:
                vec = "yes" if all(r.vectorised for r in rs) else "**NO**"
                exempt = sorted({w for r in rs for w in re.findall(r"EXEMPT [^(]*\(([\d/]+)-bit\)", r.vector_note)})
                if exempt:
                    vec += f" (ViT-g video: exempt, {'/'.join(exempt)}-bit)"
            cells = [kernel, arch, len(rs), f"{regs[0]}-{regs[-1]}" if len(regs) > 1 else regs[0],
                     sum(r.spill_stores + r.spill_loads for r in rs), max(r.smem for r in rs), vec,
                     _span([round(100 * w / max_warps) for w in warps], " %") + f" ({_span(warps, ' warps')}/SM)"]
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return out


def markdown(reports: list[KernelReport], cuda_rows: list[dict] | None = None, predictions: str = "") -> str:
    out = ["# vmae2_kernels GPU report (ahead-of-time compilation; nothing here ran on a GPU)", ""]
    import triton

    out.append(f"Triton {triton.__version__}; ptxas/cuobjdump from {_tool_home()}. Per thread: "
               "regs, spill and stack bytes; per CTA: smem (bytes, without the 1 KB the driver reserves). `vec`: every "
               "bulk stream of a memory-bound kernel is 128-bit in the PTX (in brackets: the share of the static "
               "SASS global bytes in 128-bit accesses, ids and scalars included); occupancy = theoretical "
               "blocks/SM (warps/SM, limiter).")
    out.append("")
    out += summary(reports) + ["", "## Every specialisation", ""]
    head = ["kernel", "op", "shape", "dtype", "arch", "config", "grid", "regs", "spill", "stack", "smem", "vec",
            "global access (SASS, static)", "occupancy"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {k: i for i, k in enumerate(MEMORY_BOUND + tuple(NOT_MEMORY_BOUND))}
    for r in sorted(reports, key=lambda r: (order.get(r.kernel, 99), r.op, r.shape, r.dtype, r.config, r.arch)):
        vec = "n/a" if r.vectorised is None else ("yes" if r.vectorised else "**NO**")
        if r.vector_note.startswith("EXEMPT"):
            vec += " (exempt)"
        occ = r.occupancy
        cells = [r.kernel, r.op, r.shape + (f" (+{len(r.also)})" if r.also else ""), r.dtype, r.arch, r.config,
                 "x".join(map(str, r.grid)), r.regs, r.spill_stores + r.spill_loads, r.stack, r.smem,
                 f"{vec} ({r.vector_share:.2f})", _mix_text(r.sass),
                 f"{occ['blocks_per_sm']} ({occ['warps_per_sm']} warps, {occ['limiter']})"]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    notes = sorted({(r.kernel, r.vector_note) for r in reports if r.vector_note})
    if notes:
        out += ["", "Notes:"] + [f"- `{k}`: {n}" for k, n in notes]
    if cuda_rows is not None:
        out += ["", "## CUDA sources (nvcc -Xptxas -v)", ""]
        if not cuda_rows:
            out.append("_nvcc not found (or no csrc/cuda/*.cu): skipped._")
        else:
            head = ["source", "arch", "kernel", "regs", "spill", "stack", "smem", "global access (SASS)",
                    "occupancy @256 threads"]
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for c in sorted(cuda_rows, key=lambda c: (c["source"], c.get("kernel") or "", c["arch"])):
                if c.get("kernel") is None:
                    out.append(f"| {c['source']} | {c['arch']} | **compile error** | | | | | | |")
                    continue
                o = c["occupancy_256"]
                out.append(f"| {c['source']} | {c['arch']} | `{c['kernel']}` | {c['regs']} | "
                           f"{c['spill_stores'] + c['spill_loads']} | {c['stack']} | {c['static_smem']} | "
                           f"{_mix_text(c['sass'])} | {o['blocks_per_sm']} ({o['warps_per_sm']} warps) |")
    if predictions:
        out += ["", "## PREDICTED times (roofline model with the compiled registers / shared memory)", "",
                predictions]
    return "\n".join(out)


def compiled_resources(reports: list[KernelReport], arch: str, shape: str, dtype: str) -> dict:
    """``{(kernel, config): (regs, smem)}`` of one arch / shape / dtype, for :func:`roofline.predict`."""
    out = {}
    for r in reports:
        tags = [f"{r.op} {r.shape} {r.dtype}"] + r.also
        if r.arch == arch and any(t.split()[1:] == [shape, dtype] for t in tags):
            out[(r.kernel, r.config)] = (r.regs, r.smem)
            out.setdefault(r.kernel, (r.regs, r.smem))
    return out


def prediction_table(reports: list[KernelReport], shapes, dtype: str, batch: int) -> str:
    ops = ("token_gather", "token_scatter", "tubelet_gather", "decoder_input", "mask_token_grad", "running_cell_ids",
           "tube_ids", "recon_loss", "recon_loss_backward")
    head = ["op", "shape"] + [f"{g.name} {w}" for g in R.GPUS.values() for w in ("floor µs", "PREDICTED µs")] + [
        "bound", "kernel config (H100)"]
    out = [f"Batch {batch}, {dtype} activations.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op in ops:
        for shape in shapes:
            cells = [op, shape]
            last = None
            for g in R.GPUS.values():
                res = compiled_resources(reports, g.arch, shape, dtype)
                last = R.predict(op, shape, batch, dtype, g, res or None)
                cells += [R.fmt_us(last.floor_s), R.fmt_us(last.predicted_s)]
            triton_k = [kt for kt in last.kernels if kt.launch.config != "torch"]
            cells += [last.bound, "; ".join(kt.launch.config for kt in triton_k) or "-"]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# -- CLI ----------------------------------------------------------------------------------------------------


def _interpreted() -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    try:
        from vmae2_kernels.gather import triton_kernels

        jit_function(triton_kernels._row_copy_kernel)
    except TypeError:
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="repeatable (default: all)")
    parser.add_argument("--shape", action="append", choices=sorted(R.ALL_SHAPES), help="repeatable (default: all)")
    parser.add_argument("--dtype", action="append", choices=DTYPES, help="activation dtype, repeatable (default: all)")
    parser.add_argument("--batch", type=int, default=R.BATCH)
    parser.add_argument("--json", metavar="FILE", help="write the full report as JSON ('-' for stdout)")
    parser.add_argument("--markdown", metavar="FILE", help="write the markdown report to FILE instead of stdout")
    parser.add_argument("--no-cuda", action="store_true", help="skip the nvcc report of csrc/cuda")
    parser.add_argument("--predict", action="store_true", help="add the roofline model's PREDICTED times")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    _, reason = optional.load("vmae2_kernels.triton_ops")
    if reason:
        print(f"error: the compile report needs Triton: {reason}", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    if _interpreted():  # interpreted kernels cannot be compiled: rerun without the interpreter
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "benchmarks.gpu.report", *argv], env=env)
    shapes = args.shape or list(R.ALL_SHAPES)
    dtypes = args.dtype or list(DTYPES)
    archs = args.arch or list(ARCHS)
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    say(f"compiling for {', '.join(archs)}: {', '.join(shapes)} x {', '.join(dtypes)}, batch {args.batch}")
    with ThreadPoolExecutor(max_workers=1) as pool:  # nvcc runs beside the Triton compiles
        cuda_future = None if args.no_cuda else pool.submit(nvcc_report, archs)
        reports = build_report(shapes, dtypes, archs, args.batch, args.jobs, log=say)
        cuda_rows = None if cuda_future is None else cuda_future.result()
    found = problems(reports) + [f"{c['source']} {c['arch']} {c['kernel']}: spills" for c in cuda_rows or []
                                 if c.get("kernel") and (c["spill_stores"] or c["spill_loads"])]
    found += [f"{c['source']} {c['arch']}: nvcc failed" for c in cuda_rows or [] if c.get("kernel") is None]
    preds = "\n\n".join(prediction_table(reports, shapes, d, args.batch) for d in dtypes) if args.predict else ""
    text = markdown(reports, cuda_rows, preds)
    text += "\n\n" + (f"**{len(found)} problem(s):**\n" + "\n".join(f"- {p}" for p in found) if found else
                      f"All {len(reports)} compiled specialisations: 0 spills, no local memory, shared memory within "
                      "budget, 128-bit global access in every memory-bound kernel (exemptions listed above).")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    elif args.json != "-":
        print(text)
    if args.json:
        doc = {"triton": __import__("triton").__version__, "batch": args.batch, "archs": archs, "shapes": shapes,
               "dtypes": dtypes, "kernels": [asdict(r) for r in reports], "cuda": cuda_rows, "problems": found}
        payload = json.dumps(doc, indent=1, default=str)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    say(f"{len(reports)} specialisations compiled in {time.perf_counter() - t0:.1f} s; {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
