"""Roofline model of the vmae2_kernels ops on an A100-80GB and an H100-80GB: bytes, FLOPs, floor and PREDICTED times.

Every GPU time this module returns is **predicted** by the model below, never measured: this project had no GPU.
It is pure Python (no torch, no triton) so that ``benchmarks/report.py`` can load it on any machine; the
compile-time facts it uses (registers, shared memory) are checked against the real compiled kernels by
``tests/test_gpu_report.py`` (see :data:`ASSUMED_RESOURCES`).

Per op, shape, batch and dtype:

* **bytes that must move** (:func:`traffic`): every input element read once and every output element written once.
  Position tables are shared by the batch and fit in L2 (ViT-g: 11.5 MB encoder table, 40 / 50 MB L2), so each
  row is counted once: ``min(rows gathered, N)``. ``logical_bytes`` counts them per gathered row instead (what the
  benchmark suite's GB/s divides by). **FLOPs**: the op's fp32 arithmetic (a fused multiply-add is 2 FLOPs).
  These are CUDA-core FP32 FLOPs: none of these ops is a matmul, so the bf16 tensor-core peak does not apply.
* **floor** = ``max(bytes / HBM bandwidth, FLOPs / FP32 peak)``: no implementation can be faster.
* **predicted**: the launches the implementation really makes (:func:`launches`: the Triton kernels as their
  launchers configure them, plus torch's helper kernels: zero fills and small reductions), each timed as
  ``launch + max(t_memory, t_compute, t_latency)`` (:func:`kernel_time`) where

  - ``t_memory`` = DRAM bytes / achieved bandwidth; achieved = ``min(STREAM_EFFICIENCY * HBM, bytes in flight /
    DRAM latency)`` (Little's law), bytes in flight = resident CTAs x the loads one CTA has outstanding; resident
    CTAs = ``min(grid, SMs x blocks per SM)`` and blocks per SM is the theoretical occupancy (:func:`occupancy`)
    from registers, shared memory and warps;
  - ``t_compute`` = FLOPs / (FP32 peak x the fraction of SMs the grid occupies);
  - ``t_latency`` = waves x one CTA's critical path (dependent DRAM round trips x latency + its arithmetic on one
    SM), waves = ``ceil(grid / (SMs x blocks per SM))``;
  - autotuned kernels take the config with the lowest predicted time (what the autotuner should find).

  Host-side launch overhead (Python, the custom-op dispatcher) is not included: on a GPU the ops whose device time
  is a few microseconds will measure the host overhead instead (tens of microseconds per call in eager mode).

GPU figures (:data:`GPUS`): bandwidth (A100 1.9 TB/s, H100 3.0 TB/s: below the datasheet's
2.04 / 3.35 TB/s, nearer what is sustained); SM counts from the datasheets (A100 SXM4: 108 SMs; H100 SXM5: 132 SMs);
FP32 peaks from ``vmae2.flops.PEAK_TFLOPS`` (also the table of the tensor-core peaks, which no op here uses); DRAM
latency under load and the device-side launch gap are assumptions (600 / 550 ns, 2.5 / 2.0 µs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from vmae2.flops import peak_for
from vmae2_kernels.gather.tiles import TUBELET_TILE
from vmae2_kernels.loss.tiles import LOSS_TILES
from vmae2_kernels.masks.tiles import tube_tile
from vmae2_kernels.tiles import ROW_TILES, next_pow2

# -- GPUs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPU:
    name: str
    arch: str  # the target the compile report (report.py) compiles for
    hbm_bytes_per_s: float
    fp32_flops: float  # CUDA-core FP32 peak, FMA = 2 FLOPs: the compute roof of these elementwise ops
    sms: int
    dram_latency_s: float  # loaded DRAM round trip (assumption): Little's law and per-CTA critical paths
    launch_s: float  # device-side gap of one kernel in a back-to-back stream (assumption)
    smem_per_sm: int  # bytes of shared memory an SM can give to CTAs (max carve-out)
    smem_per_block: int  # opt-in maximum for one CTA
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    max_regs_per_thread: int = 255
    reg_alloc_unit: int = 256  # registers are allocated per warp in units of 256
    smem_reserved_per_block: int = 1024  # the driver reserves 1 KB of shared memory per CTA (sm_80+)

    @property
    def lane_ops_per_sm_s(self) -> float:
        """FP32 lane operations per second of one SM (an FMA counts once here)."""
        return self.fp32_flops / 2 / self.sms


GPUS = {
    "A100": GPU("A100-80GB", "sm_80", 1.9e12, peak_for("A100", "fp32"), 108, 600e-9, 2.5e-6,
                smem_per_sm=164 * 1024, smem_per_block=163 * 1024),
    "H100": GPU("H100-80GB", "sm_90", 3.0e12, peak_for("H100 SXM", "fp32"), 132, 550e-9, 2.0e-6,
                smem_per_sm=228 * 1024, smem_per_block=227 * 1024),
}
GPU_BY_ARCH = {g.arch: g for g in GPUS.values()}
STREAM_EFFICIENCY = 0.9  # share of the HBM bandwidth a well-formed streaming kernel sustains (STREAM-copy class)


# -- occupancy ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float  # resident warps / maximum warps per SM
    limiter: str  # "registers", "shared memory", "threads", "blocks" (which limit set blocks_per_sm)


def occupancy(gpu: GPU, regs: int, threads: int, smem: int = 0) -> Occupancy:
    """Theoretical occupancy of a kernel with ``regs`` registers/thread, ``threads``/CTA and ``smem`` bytes/CTA."""
    warps = max(1, math.ceil(threads / 32))
    per_warp = math.ceil(max(regs, 1) * 32 / gpu.reg_alloc_unit) * gpu.reg_alloc_unit
    limits = {
        "registers": (gpu.regs_per_sm // per_warp) // warps,
        "threads": gpu.max_threads_per_sm // (warps * 32),
        "blocks": gpu.max_blocks_per_sm,
        "shared memory": gpu.smem_per_sm // (smem + gpu.smem_reserved_per_block),
    }
    if regs > gpu.max_regs_per_thread or smem > gpu.smem_per_block:
        limits["registers" if regs > gpu.max_regs_per_thread else "shared memory"] = 0
    limiter = min(limits, key=lambda k: (limits[k], k != "threads"))
    blocks = limits[limiter]
    max_warps = gpu.max_threads_per_sm // 32
    return Occupancy(blocks, blocks * warps, blocks * warps / max_warps, limiter)


# -- shapes -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One official VideoMAE V2 pretraining configuration: 16 x 224 x 224 clips, tubelet 2, 90 % tube masking
    for the encoder and 50 % running-cell masking for the decoder."""

    name: str
    patch: int
    dim: int  # encoder width
    dec_dim: int  # decoder width
    frames: int = 16
    image: int = 224
    tubelet: int = 2
    enc_ratio: float = 0.9
    dec_ratio: float = 0.5

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.frames // self.tubelet, self.image // self.patch, self.image // self.patch

    @property
    def hw(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.hw

    @property
    def masked_per_frame(self) -> int:
        return int(self.enc_ratio * self.hw)

    @property
    def num_visible(self) -> int:  # encoder-visible tokens
        return self.grid[0] * (self.hw - self.masked_per_frame)

    @property
    def masked_per_cell(self) -> int:
        return int(4 * self.dec_ratio)

    @property
    def num_dec(self) -> int:  # decoder-visible (reconstructed) tokens
        return self.num_tokens * (4 - self.masked_per_cell) // 4

    @property
    def pixels(self) -> int:  # pixels of one tubelet patch (per channel)
        return self.tubelet * self.patch * self.patch

    @property
    def pred_dim(self) -> int:
        return 3 * self.pixels


SHAPES = {s.name: s for s in (Shape("ViT-B", 16, 768, 384), Shape("ViT-L", 16, 1024, 512),
                              Shape("ViT-g", 14, 1408, 512))}  # the official 16 x 224 configurations
# Compiled and modelled too: fine-tuning resolutions beyond 224 px. ViT-g at 448 px has H'W' = 1024 tokens per
# frame, the largest tile of the mask kernels (one program holds a whole frame).
LARGE_SHAPES = {s.name: s for s in (Shape("ViT-g-448", 14, 1408, 512, image=448),)}
ALL_SHAPES = {**SHAPES, **LARGE_SHAPES}
BATCH = 32
DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8}


def esize(dtype: str) -> int:
    return DTYPES[str(dtype).replace("torch.", "")]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# Registers / shared memory per kernel that the model assumes when no compile report is given: the largest value
# any specialisation the compile report compiled needed (Triton 3.8, ptxas 12.9, sm_80 and sm_90, ViT-B/L/g and
# ViT-g at 448 px, fp32 and bf16, every autotune config). The shared-memory value is also the kernel's budget: report.py and
# tests/test_gpu_report.py fail when a compiled kernel needs more registers or shared memory than assumed here
# (the predicted occupancy, hence the predictions, would be optimistic).
ASSUMED_RESOURCES = {  # kernel: (registers per thread, shared memory bytes per CTA)
    "_row_copy_kernel": (80, 0),  # 16 x 256 tile, 4 warps, fp32 with a position table: 76 (the grid's b, k split)
    "_tubelet_gather_kernel": (32, 0),  # 28 (patch 16) to 32 (patch 14, sm_80) in bf16 and fp32
    "_decoder_input_kernel": (120, 8192),  # fp32 16 x 256 w4: 96-112; smem: the output tile's layout
    "_masked_rows_sum_kernel": (88, 2048),
    "_running_cell_kernel": (40, 128),  # smem: the prefix sum over one frame (H'W' = 1024 at 448 px)
    "_tube_kernel": (168, 4096),  # 224 px: 168 (4 warps); 448 px: 128 x 16 warps, the whole register file of an SM
    "_recon_loss_fwd_kernel": (40, 8192),  # smem: the pred row's gather into the (pixel, channel) tile
    "_recon_loss_bwd_kernel": (40, 8192),
}


# -- traffic: bytes and FLOPs that must move / happen -----------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    bytes: float  # DRAM bytes that must move (tables shared by the batch counted once)
    logical_bytes: float  # the same with every gathered table row counted (the benchmark suite's definition)
    flops: float  # fp32 FLOPs (FMA = 2)
    detail: str = ""


MASK_OPS = {"tube_mask_batch": "tube_ids", "running_cell_mask_batch": "running_cell_ids"}
FLOPS_PER_TARGET = {"recon_loss": 10, "recon_loss_backward": 9}  # see _loss_flops
OPS = ("token_gather", "token_scatter", "tubelet_gather", "decoder_input", "mask_token_grad", "running_cell_ids",
       "tube_ids", "recon_loss", "recon_loss_backward", "recon_loss_fwd_bwd", *MASK_OPS)


def _loss_flops(op: str, shape: Shape, batch: int) -> float:
    """Per target element: un-normalise (FMA, 2), mean (1), centre (1), squared deviation (FMA, 2), scale (1);
    forward: difference (1) + squared accumulation (FMA, 2) = 10; backward: difference (1) + scale (1) = 9."""
    return float(FLOPS_PER_TARGET[op] * batch * shape.num_dec * shape.pred_dim)


def traffic(op: str, shape: Shape | str, batch: int = BATCH, dtype: str = "bfloat16") -> Traffic:
    """Bytes that must move and FLOPs of one call of ``op``; ``dtype`` is the activations' (x, x_vis, pred, the
    gradient of the scatter). As in training: position tables, mask token and video fp32, ids int64, the decoder
    input fp32 (promoted by the fp32 table), its gradient fp32, fp32 loss weights."""
    s = ALL_SHAPES[shape] if isinstance(shape, str) else shape
    op = MASK_OPS.get(op, op)
    a, f, i = esize(dtype), 4, 8
    B, N, Nv, Nd = batch, s.num_tokens, s.num_visible, s.num_dec
    if op == "token_gather":
        C = s.dim
        rows = B * Nv * C
        logical = rows * a + B * Nv * i + rows * f + rows * a
        table = min(B * Nv, N) * C * f
        return Traffic(rows * a + B * Nv * i + table + rows * a, logical, float(rows),
                       "read x rows, ids, pos rows (table once), write rows; 1 add per element")
    if op == "token_scatter":
        C = s.dim
        b = B * Nv * C * a + B * Nv * i + B * N * C * a
        return Traffic(b, b, 0.0, "read src rows and ids, write the whole [B, N, C] output (zeros included)")
    if op == "tubelet_gather":  # the encoder-visible tubelets of a video in ``dtype``
        rows = B * Nv * s.pred_dim
        b = 2 * rows * a + B * Nv * i
        return Traffic(b, b, 0.0, "read the Nv tubelets' pixels and ids, write their rows")
    if op == "decoder_input":
        D, L = s.dec_dim, Nv + Nd
        out = B * L * D * f
        logical = B * Nv * D * a + B * L * i + B * L * D * f + D * f + out
        return Traffic(B * Nv * D * a + B * L * i + min(B * L, N) * D * f + D * f + out, logical, float(B * L * D),
                       "read x_vis, ids, pos rows (table once), mask token; write the fp32 sequence; 1 add each")
    if op == "mask_token_grad":
        D = s.dec_dim
        b = B * Nd * D * f + D * f
        return Traffic(b, b, float(B * Nd * D), "read the mask-token rows of the fp32 gradient; 1 add each")
    if op == "running_cell_ids":
        b = B * i + B * Nd * i
        return Traffic(b, b, 0.0, "read B phases, write the ids (integer index math only)")
    if op == "tube_ids":
        b = B * s.hw * f + B * Nv * i
        return Traffic(b, b, float(4 * B * s.hw * s.hw), "read keys, write ids; ~4 ops per key pair (ranking)")
    if op in ("recon_loss", "recon_loss_backward"):
        P3 = s.pred_dim
        b = B * Nd * P3 * a + B * Nd * P3 * f + B * Nd * (i + f)
        b += B * Nd * f if op == "recon_loss" else B * Nd * P3 * a
        what = "per-token losses" if op == "recon_loss" else "the gradient"
        return Traffic(b, b, _loss_flops(op, s, batch),
                       f"read pred, the Nd patches of the fp32 video, ids, weights; write {what}")
    if op == "recon_loss_fwd_bwd":
        fw, bw = traffic("recon_loss", s, batch, dtype), traffic("recon_loss_backward", s, batch, dtype)
        return Traffic(fw.bytes + bw.bytes, fw.logical_bytes + bw.logical_bytes, fw.flops + bw.flops,
                       "forward then backward (each reads pred and the video patches)")
    raise KeyError(f"no roofline model for op {op!r}; known: {', '.join(OPS)}")


# -- launches: what the implementation runs -----------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the model sees it."""

    kernel: str
    config: str
    ctas: int
    threads: int
    bytes: float  # DRAM bytes it moves
    flops: float
    inflight_per_cta: float  # bytes one CTA moves per round trip (loads + stores of its tile / loop iteration)
    steps: int  # dependent DRAM round trips on one CTA's critical path
    regs: int = 32
    smem: int = 0
    candidates: tuple = field(default=(), compare=False)  # other autotune configs: tuple of Launch


def config_label(kwargs: dict, num_warps: int, num_stages: int | None = None) -> str:
    parts = [f"{k}={v}" for k, v in kwargs.items()] + [f"w{num_warps}"]
    if num_stages is not None:
        parts.append(f"s{num_stages}")
    return " ".join(parts)


def _resources(kernel: str, label: str, resources: dict | None) -> tuple[int, int]:
    if resources and (kernel, label) in resources:
        return resources[(kernel, label)]
    if resources and kernel in resources:
        return resources[kernel]
    return ASSUMED_RESOURCES.get(kernel, (32, 0))


def _aux(name: str, nbytes: float, steps: int = 2) -> Launch:
    """A torch helper kernel (zero fill, small reduction, random draw), modelled as well-formed: the full streaming
    bandwidth, and ``steps`` dependent DRAM round trips (2 for a reduction: read, then combine)."""
    return Launch(name, "torch", 0, 256, nbytes, 0.0, 0.0, steps)


def _row_copy(kernel: str, rows_per_sample: int, batch: int, width: int, bytes_per_elem: float, moved: float,
              flops: float, resources: dict | None, steps: int = 2) -> Launch:
    """An autotuned row-copy style kernel: grid (B * cdiv(rows, BLOCK_K), cdiv(width, BLOCK_C))."""
    options = []
    for kw, warps, stages, _ in ROW_TILES:
        label = config_label(kw, warps, stages)
        regs, smem = _resources(kernel, label, resources)
        ctas = batch * cdiv(rows_per_sample, kw["BLOCK_K"]) * cdiv(width, kw["BLOCK_C"])
        tile = kw["BLOCK_K"] * kw["BLOCK_C"]
        options.append(Launch(kernel, label, ctas, 32 * warps, moved, flops,
                              tile * bytes_per_elem + 8 * kw["BLOCK_K"], steps, regs, smem))
    return Launch(**{**options[0].__dict__, "candidates": tuple(options)})


def launches(op: str, shape: Shape | str, batch: int = BATCH, dtype: str = "bfloat16",
             resources: dict | None = None) -> list[Launch]:
    """The kernel launches of one call of the Triton implementation (mirrors the launchers of the op families'
    ``triton_kernels`` modules).

    ``resources``: ``{(kernel, config label): (registers, shared bytes)}`` or ``{kernel: (...)}`` from a compile
    report; missing entries fall back to :data:`ASSUMED_RESOURCES`.
    """
    s = ALL_SHAPES[shape] if isinstance(shape, str) else shape
    a, f, i = esize(dtype), 4, 8
    B, N, Nv, Nd = batch, s.num_tokens, s.num_visible, s.num_dec
    t = traffic(op, s, batch, dtype)
    if op == "token_gather":
        return [_row_copy("_row_copy_kernel", Nv, B, s.dim, 2 * a + f, t.bytes, t.flops, resources)]
    if op == "token_scatter":  # new_zeros (a fill kernel), then the rows written over it
        zeros = B * N * s.dim * a
        rows = B * Nv * s.dim * a
        return [_aux("zero fill (torch)", zeros),
                _row_copy("_row_copy_kernel", Nv, B, s.dim, 2 * a, 2 * rows + B * Nv * i, 0.0, resources)]
    if op == "tubelet_gather":  # mirrors gather.triton_kernels.tubelet_gather: one fixed launch, no autotuning
        kw, warps, stages, _ = TUBELET_TILE
        label = config_label(kw, warps, stages)
        regs, smem = _resources("_tubelet_gather_kernel", label, resources)
        video = B * Nv * s.pred_dim * a
        ctas = B * Nv * cdiv(s.pred_dim, kw["BLOCK_F"])
        moved = t.bytes - video + video * sector_overfetch(s, a)
        return [Launch("_tubelet_gather_kernel", label, ctas, 32 * warps, moved, 0.0, 2 * kw["BLOCK_F"] * a + i, 2,
                       regs, smem)]
    if op == "decoder_input":
        share = Nv / (Nv + Nd)  # visible rows also read x_vis
        return [_row_copy("_decoder_input_kernel", Nv + Nd, B, s.dec_dim, 2 * f + share * a, t.bytes,
                          t.flops, resources)]
    if op == "mask_token_grad":  # mirrors decoder.triton_kernels.mask_token_grad
        total = B * Nd
        programs = max(1, min(256, cdiv(total, 256)))
        rows = cdiv(total, programs)
        block_d = min(256, next_pow2(s.dec_dim))
        regs, smem = _resources("_masked_rows_sum_kernel", "", resources)
        k = Launch("_masked_rows_sum_kernel", f"BLOCK_R=32 BLOCK_D={block_d} w4", programs * cdiv(s.dec_dim, block_d),
                   128, t.bytes, t.flops, 32 * block_d * f, cdiv(rows, 32) + 1, regs, smem)
        return [k, _aux("partial-row sum (torch)", programs * s.dec_dim * f)]
    if op == "running_cell_ids":
        regs, smem = _resources("_running_cell_kernel", "", resources)
        kept = s.hw * (4 - s.masked_per_cell) // 4
        return [Launch("_running_cell_kernel", f"BLOCK={next_pow2(s.hw)} w4", B * s.grid[0], 128, t.bytes, 0.0,
                       8 + 8 * kept, 2, regs, smem)]
    if op == "tube_ids":
        regs, smem = _resources("_tube_kernel", "", resources)
        tile = tube_tile(s.hw)
        block, block_j, warps = tile["BLOCK"], tile["BLOCK_J"], tile["num_warps"]
        pairs = block * cdiv(s.hw, block_j) * block_j  # [BLOCK, BLOCK_J] comparison tiles per sample
        moved = s.hw * f + s.grid[0] * (s.hw - s.masked_per_frame) * i
        return [Launch("_tube_kernel", config_label({"BLOCK": block, "BLOCK_J": block_j}, warps), B, 32 * warps,
                       t.bytes, 4.0 * B * pairs, moved, 2 + cdiv(s.hw, block_j), regs, smem)]
    if op in MASK_OPS:  # the public mask API: draw the randomness (one torch kernel), then the ids
        draw = B * (s.hw * f if op == "tube_mask_batch" else i)
        return [_aux("random draw (torch)", draw, steps=1)] + launches(MASK_OPS[op], s, batch, dtype, resources)
    if op in ("recon_loss", "recon_loss_backward"):
        kernel = "_recon_loss_fwd_kernel" if op == "recon_loss" else "_recon_loss_bwd_kernel"
        video = B * Nd * s.pred_dim * f
        moved = t.bytes - video + video * sector_overfetch(s, f)
        options = []
        for kw, warps, stages, _ in LOSS_TILES:
            label = config_label({"BLOCK_P": next_pow2(s.pixels), **kw}, warps, stages)
            regs, smem = _resources(kernel, label, resources)
            tile = s.pred_dim * (a + f) + (s.pred_dim * a if op == "recon_loss_backward" else 4)
            options.append(Launch(kernel, label, B * Nd, 32 * warps, moved, t.flops, tile, 2, regs, smem))
        fused = Launch(**{**options[0].__dict__, "candidates": tuple(options)})
        if op == "recon_loss":  # per_token.sum() / weights.sum()
            return [fused, _aux("sum of per-token losses (torch)", B * Nd * f),
                    _aux("sum of weights (torch)", B * Nd * f), _aux("divide (torch)", 8, steps=1)]
        return [_aux("sum of weights (torch)", B * Nd * f), _aux("scale (torch)", 8, steps=1), fused]
    if op == "recon_loss_fwd_bwd":  # + the weights gathered from the bool encoder mask (gather, float)
        return ([_aux("weights = gather(enc_mask) (torch)", B * Nd * (i + 1) + B * Nd),
                 _aux("weights.float() (torch)", B * Nd * 5)]
                + launches("recon_loss", s, batch, dtype, resources)
                + launches("recon_loss_backward", s, batch, dtype, resources))
    raise KeyError(f"no launch model for op {op!r}; known: {', '.join(OPS)}")


def sector_overfetch(shape: Shape, video_esize: int = 4) -> float:
    """DRAM bytes per useful byte of the patch rows the loss and the tubelet gather read: rows of ``patch`` pixels
    fetched in 32-byte sectors (no L2 sharing between neighbouring tokens assumed: an upper bound). 1.0 for patch 16
    in fp32 (64-byte rows on 64-byte boundaries); 1.43 for patch 14 (56-byte rows at 8-byte alignment touch 2.5
    sectors on average)."""
    row = shape.patch * video_esize
    sectors = [cdiv((ww * row) % 32 + row, 32) for ww in range(shape.image // shape.patch)]
    return 32 * sum(sectors) / len(sectors) / row


# -- time model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelTime:
    launch: Launch
    seconds: float
    t_memory: float
    t_compute: float
    t_latency: float
    occupancy: Occupancy
    achieved_bytes_per_s: float
    bound: str  # "memory", "compute", "latency" or "launch"


def kernel_time(k: Launch, gpu: GPU) -> KernelTime:
    """Predicted device time of one launch (see the module docstring); autotuned launches take their best config."""
    if k.candidates:
        return min((kernel_time(c, gpu) for c in k.candidates), key=lambda kt: kt.seconds)
    peak = STREAM_EFFICIENCY * gpu.hbm_bytes_per_s
    if k.ctas == 0:  # a torch helper kernel: streaming bandwidth, its round trips
        t_mem, t_lat = k.bytes / peak, k.steps * gpu.dram_latency_s
        body = max(t_mem, t_lat)
        bound = "launch" if gpu.launch_s > body else ("memory" if t_mem >= t_lat else "latency")
        return KernelTime(k, gpu.launch_s + body, t_mem, 0.0, t_lat, occupancy(gpu, 32, 256), peak, bound)
    occ = occupancy(gpu, k.regs, k.threads, k.smem)
    slots = max(1, gpu.sms * occ.blocks_per_sm)
    resident = min(k.ctas, slots)
    waves = cdiv(k.ctas, slots)
    bw = min(peak, resident * k.inflight_per_cta / gpu.dram_latency_s)
    t_mem = k.bytes / bw
    active = min(gpu.sms, k.ctas) / gpu.sms
    t_comp = k.flops / (gpu.fp32_flops * active)
    per_cta_ops = k.flops / 2 / k.ctas
    t_lat = waves * (k.steps * gpu.dram_latency_s + per_cta_ops / gpu.lane_ops_per_sm_s)
    body = max(t_mem, t_comp, t_lat)
    if gpu.launch_s > body:
        bound = "launch"
    else:
        bound = "memory" if body == t_mem else ("compute" if body == t_comp else "latency")
    return KernelTime(k, gpu.launch_s + body, t_mem, t_comp, t_lat, occ, bw, bound)


@dataclass(frozen=True)
class Prediction:
    op: str
    shape: str
    batch: int
    dtype: str
    gpu: str
    traffic: Traffic
    floor_s: float  # max(bytes / HBM, FLOPs / FP32 peak)
    predicted_s: float  # sum of the launches' predicted times
    kernels: tuple  # KernelTime per launch

    @property
    def bound(self) -> str:
        main = max(self.kernels, key=lambda kt: kt.seconds)
        return main.bound


def predict(op: str, shape: Shape | str, batch: int = BATCH, dtype: str = "bfloat16", gpu: GPU | str = "H100",
            resources: dict | None = None) -> Prediction:
    """Floor and PREDICTED device time of one call of ``op`` (Triton implementation) on ``gpu``."""
    s = ALL_SHAPES[shape] if isinstance(shape, str) else shape
    g = GPUS[gpu] if isinstance(gpu, str) else gpu
    t = traffic(op, s, batch, dtype)
    floor = max(t.bytes / g.hbm_bytes_per_s, t.flops / g.fp32_flops)
    times = tuple(kernel_time(k, g) for k in launches(op, s, batch, dtype, resources))
    return Prediction(op, s.name, batch, str(dtype).replace("torch.", ""), g.name, t, floor,
                      sum(kt.seconds for kt in times), times)


def gpu_for(device_name: str | None) -> GPU | None:
    """The modelled GPU a device name (``torch.cuda.get_device_name()``) refers to, if any."""
    name = (device_name or "").upper()
    for key, g in GPUS.items():
        if key in name:
            return g
    return None


# -- text -----------------------------------------------------------------------------------------------------


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.1f}" if us < 1000 else f"{us:,.0f}"


def table(shapes=("ViT-B", "ViT-L", "ViT-g"), batch: int = BATCH, dtype: str = "bfloat16",
          ops=("token_gather", "token_scatter", "tubelet_gather", "decoder_input", "mask_token_grad",
               "running_cell_ids", "tube_ids", "recon_loss", "recon_loss_backward"),
          resources: dict | None = None) -> str:
    """Markdown table: bytes, FLOPs, floor and predicted time per op and shape on both GPUs."""
    head = ["op", "shape", "MB", "MFLOP"] + [f"{g} {w}" for g in GPUS for w in ("floor µs", "predicted µs")] + [
        "bound (H100)", "Triton config (H100)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op in ops:
        for name in shapes:
            preds = [predict(op, name, batch, dtype, g, resources) for g in GPUS]
            cells = [op, name, f"{preds[0].traffic.bytes / 1e6:.1f}", f"{preds[0].traffic.flops / 1e6:.1f}"]
            for p in preds:
                cells += [fmt_us(p.floor_s), fmt_us(p.predicted_s)]
            configs = [kt.launch.config for kt in preds[-1].kernels if kt.launch.config != "torch"]
            cells += [preds[-1].bound, "; ".join(configs) or "-"]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.roofline",
                                     description="PREDICTED GPU times of the vmae2_kernels ops (a model).")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    print(f"Roofline model, batch {args.batch}, {args.dtype} activations: PREDICTED times, not measurements.\n")
    print(table(batch=args.batch, dtype=args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
