"""The pieces around the training loop: distributed setup, schedules, atomic checkpoints, metrics output."""
from __future__ import annotations

import gc
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from vmae2.weights import atomic_write
from vmae2_kernels import optional

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # precision -> autocast dtype

CHECKPOINT_GLOB = "checkpoint-*.pt"


# -- distributed ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single process"  # "torchrun", "srun" or "single process"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_nodelist(nodelist: str) -> list[str]:
    """The host names of a Slurm node list, in order: ``gpu[01-03,07],cpu5`` -> ``gpu01 gpu02 gpu03 gpu07 cpu5``.
    Ranges keep their zero padding (the width of the range's first number); several bracketed groups in one name
    (``a[1-2]b[3-4]``) expand as their product. Parsed here, so no Slurm tool (``scontrol``) is needed."""
    hosts: list[str] = []
    for name in _split_top(nodelist.strip()):
        hosts += _expand_name(name, nodelist)
    if not hosts:
        raise ValueError(f"the Slurm node list {nodelist!r} names no node; set MASTER_ADDR to the first node's address")
    return hosts


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_name(name: str, whole: str) -> list[str]:
    """One comma-free host expression (``n[1-3]``, ``rack[1-2]-n[01-02]``, ``login``) as host names."""
    open_at = name.find("[")
    if open_at < 0:
        return [name]
    close_at = name.find("]", open_at)
    if close_at < 0:
        raise ValueError(f"the Slurm node list {whole!r} has an unclosed '[' in {name!r}; set MASTER_ADDR instead")
    head, body, tail = name[:open_at], name[open_at + 1:close_at], name[close_at + 1:]
    return [head + item + rest for item in _expand_range(body, whole) for rest in _expand_name(tail, whole)]


def _expand_range(body: str, whole: str) -> list[str]:
    """``01-03,07`` -> ``01 02 03 07`` (each range padded to the width of its first number)."""
    out = []
    for part in body.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"the Slurm node list {whole!r} has a range {part!r} that is not N or N-M; set "
                             f"MASTER_ADDR instead")
        width = len(lo) if lo.startswith("0") else 0
        out += [str(i).zfill(width) for i in range(int(lo), int(hi or lo) + 1)]
    return out


def launcher_env(environ=os.environ) -> tuple[str, dict[str, str]]:
    """``(launcher, variables)``: who started this process and the ``torch.distributed`` variables (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) it implies. ``torchrun``'s own variables win;
    else a Slurm task (``srun``) gives them from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and the first
    node of the step's node list (``MASTER_ADDR``/``MASTER_PORT`` from the environment win; the port is otherwise
    20000 + the job id mod 10000, the same on every task of a job)."""
    if "WORLD_SIZE" in environ and "RANK" in environ:
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        return "torchrun", {k: environ[k] for k in keys if k in environ}
    if "SLURM_PROCID" not in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return "single process", {}
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if "MASTER_ADDR" not in environ and not nodes:
        raise ValueError("srun launch: SLURM_JOB_NODELIST is not set, so the rendezvous node is unknown; export "
                         "MASTER_ADDR (the first node's address) and MASTER_PORT")
    port = environ.get("MASTER_PORT") or str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 10000)
    return "srun", {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ["SLURM_NTASKS"],
                    "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
                    "MASTER_ADDR": environ.get("MASTER_ADDR") or expand_nodelist(nodes)[0], "MASTER_PORT": port}


def setup_distributed(device_kind: str) -> Dist:
    """Join the process group that ``torchrun`` or ``srun`` describes (:func:`launcher_env`; NCCL on GPU, gloo on
    CPU); a single process otherwise. Exports the variables it used, so that everything after reads one launcher,
    and rank 0 prints a line naming the launcher."""
    launcher, env = launcher_env()
    world = int(env.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(launcher="single process")
    os.environ.update(env)
    rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", rank=rank, world_size=world)
    if rank == 0:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        job = os.environ.get("SLURM_JOB_ID") if launcher == "srun" else None
        job = f" (Slurm job {job})" if job else ""
        print(f"launcher: {launcher}{job}; {world} processes, rendezvous {where}", flush=True)
    return Dist(rank, world, local, launcher)


def finish_distributed() -> None:
    """Leave the process group cleanly. Drop DDP wrappers first (``del runner``): if a wrapper's reducer holds the
    last reference to a gloo group, destroying it joins gloo's worker threads while holding the GIL, and a worker
    still freeing a finished job's tensors waits for the GIL: a deadlock at exit (seen with torch 2.13). Barriers
    let every job finish before the group goes."""
    dist.barrier()
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def resolve_device(requested: str, d: Dist) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        # srun --gpus-per-task binds one GPU per task (CUDA_VISIBLE_DEVICES): the local rank then wraps onto it
        local = d.local_rank % torch.cuda.device_count()
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


# -- schedules --------------------------------------------------------------------------------------------

def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Official per-iteration schedule: ``linspace(0, base, warmup)`` (end point included), then
    ``final + (base - final) * (1 + cos(pi * i / L)) / 2`` for the remaining ``L`` steps."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(0.0, base, warmup_steps) if warmup_steps > 0 else np.array([])
    i = np.arange(total_steps - warmup_steps)
    rest = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(len(i), 1)))
    return np.concatenate([warm, rest])


def layer_id(name: str, depth: int) -> int:
    """Official layer-decay layer of a parameter: 0 for the embedding (``patch_embed``, ``pos_embed``,
    ``cls_token``, ``mask_token``), ``k + 1`` for ``blocks.k``, ``depth + 1`` for the rest (``fc_norm``, head)."""
    name = name.removeprefix("encoder.")
    if name.startswith(("patch_embed", "pos_embed", "cls_token", "mask_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW groups like the official optimizer factory: decay for >=2-D weights; none for 1-D params, biases
    and the mask token (by name, on the unwrapped model, so compile/DDP prefixes cannot change it). With
    ``layer_decay`` (fine-tuning), each group also carries ``lr_scale = layer_decay ** (depth + 1 - layer)``
    (:func:`layer_id`); the training loop multiplies the scheduled lr by it."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    depth = len(getattr(model, "blocks", getattr(getattr(model, "encoder", None), "blocks", [])))
    groups: dict[tuple[bool, int], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith(".bias") or name in skip)
        layer = layer_id(name, depth) if layer_decay is not None else 0
        key = (decay, layer)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "weight_decay": weight_decay if decay else 0.0, "apply_wd": decay,
                           "lr_scale": scale, "layer": layer}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[1], not k[0]))]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, eps: float,
                    fused: bool = True, layer_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; fused (one kernel for all parameters, ~3x faster than the
    per-parameter loop on CPU) unless the parameters are FSDP-sharded."""
    return torch.optim.AdamW(param_groups(model, weight_decay, layer_decay), lr=lr, betas=tuple(betas), eps=eps,
                             fused=fused)


def compile_blocks(model: torch.nn.Module, mode: str, device: torch.device) -> int:
    """``--compile``: ``on`` compiles every transformer block in place (``Block.compile()``: the state_dict keys do not
    change, identical blocks share one compiled graph, compile time stays per block); ``auto`` does so on a GPU and
    not on a CPU, where compiled blocks measured no faster (benchmarks/README.md). Returns the blocks compiled."""
    from vmae2.models.layers import Block

    if mode == "off" or (mode == "auto" and device.type == "cpu"):
        return 0
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:  # static shapes: each block shape is one graph, and the attention choice a constant
        block.compile(dynamic=False)
    return len(blocks)


def set_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """This step's lr (times each group's ``lr_scale``) and weight decay (groups that take decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group["apply_wd"]:
            group["weight_decay"] = weight_decay


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf: the run stops (exit 3) without saving."""


def stop_signals() -> list[int]:
    """Catch SIGTERM/SIGINT: the returned list collects them; the loop saves and exits when it is not empty."""
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    return received


def agreed_stop(received: list[int], d: Dist, device: torch.device) -> bool:
    """Whether any rank got a stop signal (a collective: call it on every rank at the same step, e.g. log steps),
    so that all ranks leave the loop together instead of one waiting in a gradient all-reduce."""
    if d.world_size == 1:
        return bool(received)
    flag = torch.tensor(int(bool(received)), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def frees_grads_before_backward(device: torch.device) -> bool:
    """Where the step frees last step's gradients: just before the first backward on a CPU (glibc then hands the freed
    blocks to the new gradients instead of fresh pages to fault in: 7-10% of a ViT-S/B step, benchmarks/README.md),
    right after the optimizer step elsewhere (a GPU's caching allocator reuses memory either way, and the forward's
    peak stays without the gradients)."""
    return device.type == "cpu"


def optimizer_step(optimizer: torch.optim.Optimizer, scaler, parameters, max_norm: float | None,
                   free_grads: bool = True, norm: bool = True) -> torch.Tensor | None:
    """Unscale (fp16), clip or (``norm``) measure the gradient norm, step, and (``free_grads``) free the gradients;
    returns the norm on the device (no sync), or None when neither clipping nor ``norm`` asked for it."""
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = clip_or_norm(parameters, max_norm) if max_norm or norm else None
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if free_grads:
        optimizer.zero_grad(set_to_none=True)
    return grad_norm


def clip_or_norm(parameters, max_norm: float | None) -> torch.Tensor:
    """Clip to ``max_norm`` (when given) and return the total gradient norm, on the device (no sync)."""
    parameters = list(parameters)
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])  # no rescaling pass


# -- RNG state --------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """Every RNG state in plain containers and tensors (so ``torch.load(weights_only=True)`` reads it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """A generator for the masks of one micro-batch, from ``(seed, step, micro)`` only: resumable, and the
    same on every rank (each rank then takes its rows of the global batch)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, step, micro]).generate_state(1, np.uint64)[0] >> 1))
    return g


# -- checkpoints ------------------------------------------------------------------------------------------

class Checkpoints:
    """``DIR/checkpoints/checkpoint-{step:08d}.pt``: written atomically (:func:`vmae2.weights.atomic_write`), the
    last ``keep`` kept. A failed write (full disk, crash) leaves the previous one intact."""

    def __init__(self, output_dir: str | os.PathLike, keep: int):
        self.dir = Path(output_dir) / "checkpoints"
        self.keep = keep

    def paths(self) -> list[Path]:
        return sorted(self.dir.glob(CHECKPOINT_GLOB)) if self.dir.is_dir() else []

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, state: dict, step: int) -> Path:
        path = atomic_write(self.dir / f"checkpoint-{step:08d}.pt", lambda tmp: torch.save(state, tmp))
        for old in self.paths()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)


def check_output_dir(output_dir: str | os.PathLike, needed_bytes: int) -> None:
    """Fail before training when the output folder is not writable or the disk cannot hold two checkpoints."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--output_dir {output_dir} is not writable ({exc}); choose another folder") from exc
    free = shutil.disk_usage(path).free
    if free < 2 * needed_bytes:
        raise ValueError(f"--output_dir {output_dir} has {free / 2**30:.2f} GiB free; checkpoints need about "
                         f"{needed_bytes / 2**30:.2f} GiB each and two must fit. Free space or choose another folder")


# -- metrics ----------------------------------------------------------------------------------------------

class _EndsProgress:
    """A text stream that ends the shown progress line before anything is written to it."""

    def __init__(self, stream, progress: ProgressLine):
        self._stream, self._progress = stream, progress

    def write(self, text: str) -> int:
        if text:
            self._progress.end()
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class ProgressLine:
    """A line rewritten in place on a terminal (:meth:`show`). While it is shown, a write to ``sys.stdout`` or
    ``sys.stderr`` (prints, warnings) or a record reaching a root logging handler first ends it, so that output
    starts on a fresh line."""

    def __init__(self):
        self.shown = False
        self._saved: tuple = ()  # (sys.stdout, sys.stderr, their replacements) while shown

    def show(self, text: str) -> None:
        """Write ``text`` to ``sys.stdout`` over the shown line (the cursor stays at its end)."""
        if not self.shown:
            out, err = _EndsProgress(sys.stdout, self), _EndsProgress(sys.stderr, self)
            self._saved = (sys.stdout, sys.stderr, out, err)
            sys.stdout, sys.stderr = out, err
            for handler in logging.getLogger().handlers:
                handler.addFilter(self._end_before)
            self.shown = True
        stdout = self._saved[0]
        stdout.write("\r" + text)
        stdout.flush()

    def end(self) -> None:
        """End the shown line, if any: what is written next starts on a fresh line."""
        if not self.shown:
            return
        self.shown = False
        stdout, stderr, out, err = self._saved
        if sys.stdout is out:
            sys.stdout = stdout
        if sys.stderr is err:
            sys.stderr = stderr
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._end_before)
        stdout.write("\n")
        stdout.flush()

    def _end_before(self, record: logging.LogRecord) -> bool:
        self.end()
        return True


class MetricsLog:
    """``DIR/metrics.jsonl`` (one JSON object per log step), a progress line (rewritten in place on a terminal), and
    TensorBoard when installed."""

    def __init__(self, output_dir: str | os.PathLike, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.total, self.start_step = total_steps, start_step
        self.enabled = enabled
        self.progress = ProgressLine() if sys.stdout.isatty() else None
        self.start = time.perf_counter()
        self.tb = None
        if enabled:
            # tensorboard is optional: without it the JSONL file is the record
            if optional.importable("tensorboard"):
                writer, _ = optional.load("torch.utils.tensorboard")
                self.tb = writer and writer.SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])
        step = record["step"]
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(step - self.start_step, 1) * (self.total - step)
        rel = f"  vs flat colour {record['recon_vs_flat']:.2f}x" if "recon_vs_flat" in record else ""
        line = (f"step {step}/{self.total}  loss {record['loss']:.4f}{rel}  lr {record['lr']:.2e}  "
                f"clips/s {record['clips_per_s']:.1f}  ETA {_duration(eta)}")
        if self.progress is not None:
            self.progress.show(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.end()
        if self.tb is not None:
            self.tb.close()


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
