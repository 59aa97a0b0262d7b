"""The memory plan of ``python -m vmae2.plan`` and of ``--with_checkpoint auto``: per activation-checkpointing mode,
the PREDICTED peak memory of one pretraining step on a GPU, and the mode with the least recomputation that fits.

Peak = what :func:`vmae2.training.step_memory.simulate_step` counts for the step (saved activations, autocast's bf16
weight copies, gradients as backward makes them, backward's working set; exact, on fake tensors at the real shapes, CUDA
autocast policy and FlashAttention) + what exists before it: fp32 weights, AdamW's two fp32 moments, DDP's gradient
buckets (more than one GPU; DDP's default ``gradient_as_bucket_view=False``), the accumulated gradients
(``accum_steps > 1``), the input batch (fp32 video, int64 ids), cuBLAS and cuBLASLt workspaces (32 MiB each). It
must fit the GPU's capacity less ``reserve_gib`` (memory outside the caching allocator) less ``margin`` of the
rest (the allocator's rounding and fragmentation). Recomputation is priced in FLOPs (the simulation counts every
op's, the recomputed forward included); the PREDICTED step-time gain over full checkpointing assumes the same
FLOP/s. Not modelled: FSDP sharding and ``torch.compile``'s own recomputation (both lower the peak), data loader
buffers outside torch's allocator (DALI: inside ``reserve_gib``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vmae2 import masking
from vmae2.models import create_model, model_config
from vmae2.training.distributed import AMP_DTYPES
from vmae2.training.gpu_memory import GPUS, MARGIN, RESERVE_GIB
from vmae2.training.step_memory import StepMemory, simulate_step

if TYPE_CHECKING:  # the commands' configs, for annotations only: vmae2.plan names this module's run
    from vmae2.plan import PlanConfig
    from vmae2.train import TrainConfig

GIB = 2 ** 30
MODES = ("none", "attn", "mlp", "every:8", "every:4", "every:3", "every:2", "full")
WORKSPACES = 2 * 32 * 2 ** 20  # cuBLAS + cuBLASLt workspaces (torch's defaults on sm80/sm90 are at most 32 MiB)


@dataclass
class ModePlan:
    """One checkpointing mode: the simulated step and the bytes that exist before it (``static``)."""

    mode: str
    step: StepMemory
    static: dict[str, int]

    @property
    def peak(self) -> int:
        return sum(self.static.values()) + self.step.peak


@dataclass
class Plan:
    """Every mode of :data:`MODES` for one run on one GPU; ``budget`` is what the peak may reach."""

    cfg: TrainConfig
    capacity: int
    reserve_gib: float
    margin: float
    budget: int
    world_size: int
    num_visible: int
    num_decoded: int | None
    modes: list[ModePlan]

    def fits(self, m: ModePlan) -> bool:
        return m.peak <= self.budget

    def mode(self, name: str) -> ModePlan:
        return next(m for m in self.modes if m.mode == name)

    @property
    def choice(self) -> ModePlan | None:
        """The fitting mode with the fewest FLOPs (the least recomputation); ``None`` when none fits."""
        return min((m for m in self.modes if self.fits(m)), key=lambda m: m.step.flops, default=None)


def memory_plan(cfg: TrainConfig, capacity: int, world_size: int = 1, reserve_gib: float = RESERVE_GIB,
                margin: float = MARGIN, modes: tuple[str, ...] = MODES) -> Plan:
    """The plan of ``cfg``'s pretraining run on a GPU of ``capacity`` bytes (as torch reports it) among ``world_size``
    GPUs. ``cfg.batch_size * cfg.num_sample`` clips per GPU; precision as ``cfg.run_precision("cuda")``; attention
    with FlashAttention's memory unless ``cfg.attn_backend`` is ``math``."""
    grid = cfg.grid
    enc = (masking.tube_ids if cfg.mask_type == "tube" else masking.random_ids)(1, grid, cfg.mask_ratio)
    dec = None if cfg.decoder_mask_type == "none" else \
        masking.decoder_ids(cfg.decoder_mask_type, 1, grid, cfg.decoder_mask_ratio)
    nv, nd = enc.shape[1], None if dec is None else dec.shape[1]
    clips = cfg.batch_size * cfg.num_sample
    video = (clips, 3, cfg.num_frames, cfg.input_size, cfg.input_size)
    plans = []
    for mode in modes:
        with torch.device("meta"):
            model = create_model(cfg.model, num_frames=cfg.num_frames, img_size=cfg.input_size,
                                 tubelet_size=cfg.tubelet_size, decoder_depth=cfg.decoder_depth,
                                 drop_path_rate=cfg.drop_path, use_checkpoint=mode, embed_tokens=cfg.embed_tokens,
                                 attn_backend="math" if cfg.attn_backend == "math" else "sdpa")
        params = sum(p.numel() for p in model.parameters())
        static = {"weights (fp32)": 4 * params, "AdamW moments (fp32)": 8 * params,
                  "DDP gradient buckets (fp32)": 4 * params if world_size > 1 else 0,
                  "gradients, accumulating (fp32)": 4 * params if cfg.accum_steps > 1 else 0,
                  "input batch (fp32 video, ids)": 4 * clips * 3 * cfg.num_frames * cfg.input_size ** 2
                  + 8 * clips * (nv + (nd or 0)),
                  "cuBLAS + cuBLASLt workspaces": WORKSPACES}
        step = simulate_step(model, video, nv, nd, amp_dtype=AMP_DTYPES[cfg.run_precision("cuda")], cuda=True,
                             normalize_target=cfg.normalize_target, grads_allocated=cfg.accum_steps > 1)
        plans.append(ModePlan(mode, step, static))
    budget = int((capacity - reserve_gib * GIB) * (1 - margin))
    return Plan(cfg, capacity, reserve_gib, margin, budget, world_size, nv, nd, plans)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _stack_rows(plan: Plan, stack: str) -> list[tuple[str, list[str]]]:
    """Saved bytes of ``stack``'s blocks by part, summed over its blocks."""
    depth = model_config(plan.cfg.model).depth if stack == "encoder" else plan.cfg.decoder_depth
    parts = (("norm", "LayerNorms (inputs, stats)"), ("attn", "attention (in, qkv, out, lse)"),
             ("mlp", "MLP (in, fc1, GELU)"), ("kept", "block outputs kept"))
    return [(f"  {stack} x{depth}: {text}", [_gib(sum(v for k, v in m.step.saved.items()
                                                     if k.startswith(stack + ".") and k.endswith("." + part)))
                                             for m in plan.modes]) for part, text in parts]


def format_plan(plan: Plan) -> str:
    """The plan as a table (GiB per mode) with the choice; every number is a PREDICTION."""
    cfg, modes = plan.cfg, plan.modes
    precision = cfg.run_precision("cuda")
    masked = cfg.grid[0] * cfg.grid[1] * cfg.grid[2] - plan.num_visible
    decoded = f"v1: all {masked} masked tokens decoded" if plan.num_decoded is None else \
        f"{cfg.decoder_mask_type} {cfg.decoder_mask_ratio}: {plan.num_decoded} decoded tokens"
    head = [f"PREDICTED memory plan of one training step of {cfg.model}",
            f"  --batch_size {cfg.batch_size} videos x --num_sample {cfg.num_sample} = "
            f"{cfg.batch_size * cfg.num_sample} clips per GPU of {cfg.num_frames}x{cfg.input_size}, {plan.world_size} "
            f"GPU{'s (DDP)' if plan.world_size > 1 else ''}",
            f"  {cfg.mask_type} {cfg.mask_ratio}: {plan.num_visible} visible tokens ({cfg.embed_tokens} tubelets "
            f"embedded), {decoded}, decoder depth {cfg.decoder_depth}",
            f"  {precision} ({'CUDA autocast' if precision != 'fp32' else 'no autocast'}), "
            f"{'math' if cfg.attn_backend == 'math' else 'FlashAttention'} attention",
            f"  budget for the peak {_gib(plan.budget)} GiB = (capacity {_gib(plan.capacity)} GiB as torch reports it",
            f"  - {plan.reserve_gib:.2f} GiB outside the allocator) x (1 - {plan.margin:g} fragmentation margin)"]
    rows: list[tuple[str, list[str]]] = [("GiB", [m.mode for m in modes]), ("before the step", [])]
    for key in modes[0].static:
        if any(m.static[key] for m in modes):
            rows.append((f"  {key}", [_gib(m.static[key]) for m in modes]))
    rows.append(("at the peak", []))
    for kind, text in (("activations", "saved activations still held"),
                       ("weight copies", "bf16 weight copies (autocast cache)"),
                       ("gradients", "gradients made so far (fp32)"),
                       ("backward", "backward working set")):
        rows.append((f"  {text}", [_gib(m.step.at_peak[kind]) for m in modes]))
    rows.append(("PEAK", [_gib(m.peak) for m in modes]))
    rows.append((f"fits {_gib(plan.budget)} GiB", ["yes" if plan.fits(m) else "no" for m in modes]))
    rows.append(("saved at the end of the forward", []))
    rows += _stack_rows(plan, "encoder") + _stack_rows(plan, "decoder")
    rows.append(("  outside the blocks (embedding, heads)", [_gib(m.step.saved.get("other", 0)) for m in modes]))
    rows.append(("  loss (the prediction it keeps)", [_gib(m.step.saved.get("loss", 0)) for m in modes]))
    rows.append(("  total", [_gib(m.step.saved_bytes) for m in modes]))
    full = plan.mode("full").step.flops if "full" in [m.mode for m in modes] else None
    rows.append(("step TFLOP (recomputation included)", [f"{m.step.flops / 1e12:.1f}" for m in modes]))
    if full:
        rows.append(("TFLOP saved vs full checkpointing", [f"{(full - m.step.flops) / 1e12:.1f}" for m in modes]))
        rows.append(("PREDICTED speed-up vs full", [f"{full / m.step.flops:.3f}x" for m in modes]))
    width = max(len(label) for label, _ in rows) + 1
    lines = head + [(label.ljust(width) + "".join(v.rjust(9) for v in values)).rstrip() for label, values in rows]
    return "\n".join(lines + [_verdict(plan, full)])


def _verdict(plan: Plan, full: int | None) -> str:
    choice = plan.choice
    if choice is None:
        return (f"plan: nothing fits {_gib(plan.budget)} GiB, not even full checkpointing; lower --batch_size "
                f"(gradient accumulation: --accum_steps) or shard with --fsdp")
    gain = f";\n  PREDICTED {full / choice.step.flops:.3f}x the speed of full checkpointing" if full else ""
    return (f"plan: --with_checkpoint {choice.mode}, the least recomputation that fits (peak "
            f"{_gib(choice.peak)} of {_gib(plan.budget)} GiB){gain}")


def run(cfg: PlanConfig) -> int:
    """Print the plan of ``cfg`` on ``cfg.gpu``; exit code 0, or 1 when no mode fits."""
    plan = memory_plan(cfg, int(GPUS[cfg.gpu] * GIB), cfg.world_size, cfg.reserve_gib, cfg.margin)
    notes = [note for flag, note in ((cfg.fsdp, "--fsdp shards weights, gradients and optimizer state: not modelled, "
                                                "the plan is an upper bound"),
                                     (cfg.compile != "off", "--compile may recompute on its own: not modelled"))
             if flag]
    print(format_plan(plan), *notes, sep="\n")
    return 0 if plan.choice else 1


def resolve_checkpoint(cfg: TrainConfig, device: torch.device, world_size: int) -> str:
    """``cfg.with_checkpoint`` with ``auto`` resolved (and printed): on a CUDA device the plan's choice for its
    capacity, ``full`` when nothing fits; elsewhere ``none``."""
    if cfg.with_checkpoint != "auto":
        return cfg.with_checkpoint
    if device.type != "cuda":
        print(f"--with_checkpoint auto: none (on {device.type} there is no memory budget to fit)", flush=True)
        return "none"
    plan = memory_plan(cfg, torch.cuda.get_device_properties(device).total_memory, world_size)
    mode = plan.choice.mode if plan.choice else "full"
    print(f"--with_checkpoint auto -> {mode} ({_gib(plan.capacity)} GiB GPU, python -m vmae2.plan shows the table)\n"
          f"{_verdict(plan, plan.mode('full').step.flops)}", flush=True)
    return mode
