"""The process runtime of every command: the process group (``torchrun`` or ``srun``), the device, the autocast
dtype of each precision, stop signals agreed across ranks, compiled blocks, the per-step mask generator."""
from __future__ import annotations

import gc
import os
import signal
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # precision -> autocast dtype


# -- process group ------------------------------------------------------------------------------------------

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


def step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """A generator for the masks of one micro-batch, from ``(seed, step, micro)`` only: resumable, and the
    same on every rank (each rank then takes its rows of the global batch)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, step, micro]).generate_state(1, np.uint64)[0] >> 1))
    return g


