"""The run scaffold of the training entry points (pretraining, fine-tuning): one way to set up, resume, save,
guard, accumulate, log, stop and tear down.

A :class:`Task` brings what differs: its model (and the wrapper that runs it), its loader, its optimizer, one
micro-batch forward, the fields it logs, what it keeps in a checkpoint beyond the common state, what happens at an
epoch's end and at the end of the run. :func:`train` does the rest, the same way for both:

* setup: device, ``torch.distributed`` (``torchrun`` or ``srun``), seed, precision (``auto``: bf16 on GPU, fp32 on CPU);
* the official lr scaling (by the global batch of videos per optimizer step), warm-up + cosine lr and weight decay;
* the run folder (:mod:`vmae2.training.rundir`): locked while the run writes it; a folder continues only its own run
(its
  ``config.json`` against the new options), a new run (``--resume none``) starts only in a folder without one (or,
  with ``--overwrite``, once the old one is moved aside); a finished run is not run again;
* resume (``--resume auto``: the latest checkpoint), step-exact: model, optimizer, scaler, RNG, the data position;
  on another number of processes with the checkpoint's global batch, schedule and epoch order
  (:func:`fit_global_batch`; DDP and FSDP2 checkpoints load into either, :func:`vmae2.training.state.optimizer_keys`);
* gradient accumulation (``no_sync`` on all micro-batches but the last), autocast, GradScaler under fp16;
* the finite-loss guard: a device-side first-bad-step flag read on the host only on log and save steps (no
  per-step sync); every rank stops together, and a checkpoint never holds a diverged model;
* atomic checkpoints every ``--save_every_steps`` (and at epoch ends for tasks that evaluate per epoch);
* ``metrics.jsonl`` and the progress line; SIGINT/SIGTERM stop after the step, agreed by every rank, with a
  checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from vmae2.cli import TrainingConfig, to_dict
from vmae2.training import rundir
from vmae2.training.distributed import (
    AMP_DTYPES,
    Dist,
    NonFiniteLoss,
    agreed_stop,
    compile_blocks,
    finish_distributed,
    resolve_device,
    setup_distributed,
    stop_signals,
)
from vmae2.training.log import MetricsLog
from vmae2.training.optim import frees_grads_before_backward, optimizer_step, schedules, set_schedule
from vmae2.training.state import Checkpoints, check_output_dir, optimizer_keys, rng_state, set_rng_state
from vmae2_kernels import measure


@dataclass
class Setup:
    """Where a run happens: its config, device, process group and precision."""
    cfg: TrainingConfig
    device: torch.device
    dist: Dist
    precision: str

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.precision)


def setup(cfg: TrainingConfig) -> Setup:
    """Device, process group, seed and precision of a run.

    fp32 math on a GPU is the official code's (torch's defaults), set here so that a flag set earlier in the
    process does not change it: cuDNN convolutions (the Conv3d patch embedding) may use TF32, matmuls
    (``F.linear``, the ``explicit`` and ``math`` attention paths) run in full fp32. No effect on CPU runs.
    """
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False
    device = resolve_device(cfg.device, Dist())
    d = setup_distributed(device.type)
    device = resolve_device(cfg.device, d)
    cfg = fit_global_batch(cfg, d)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    return Setup(cfg, device, d, cfg.run_precision(device.type))


def resume_source(cfg: TrainingConfig) -> Path | None:
    """The checkpoint ``--resume`` names (``auto``: the latest in the output folder; ``none``: None)."""
    if cfg.resume == "auto":
        return Checkpoints(cfg.output_dir, cfg.keep_last).latest()
    return None if cfg.resume == "none" else Path(cfg.resume)


def global_batch(config: dict, world_size: int) -> int:
    """Videos per optimizer step of a run's options on ``world_size`` ranks."""
    return int(config["batch_size"]) * int(config["accum_steps"]) * world_size


def fit_global_batch(cfg: TrainingConfig, d: Dist) -> TrainingConfig:
    """``cfg`` with the global batch of the checkpoint it resumes when that was written on another number of ranks:
    the per-rank batch kept and ``accum_steps`` set (or, where it does not divide, the largest per-rank batch up to
    ``--batch_size`` that does), said in one line. ``ValueError`` with the fix when the world size does not divide
    the global batch. Unchanged for a new run, a run on its checkpoint's world size, or a split that already
    gives the checkpoint's global batch."""
    source = resume_source(cfg)
    if source is None or not Path(source).is_file():
        return cfg
    state = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    old_world, old = int(state.get("world_size", 1)), state.get("config", {})
    if old_world == d.world_size or "batch_size" not in old:
        return cfg
    total = global_batch(old, old_world)
    if global_batch(to_dict(cfg), d.world_size) == total:
        return cfg
    if total % d.world_size:
        fits = [w for w in range(1, total + 1) if total % w == 0]
        raise ValueError(f"{source} was written on {old_world} processes with a global batch of {total} videos "
                         f"({old['batch_size']} x {old_world} x {old['accum_steps']} accumulated), which "
                         f"{d.world_size} processes cannot split evenly; resume on a number of processes that divides "
                         f"{total} ({', '.join(map(str, fits[:12]))})")
    per_rank = total // d.world_size
    batch = max(b for b in range(1, min(cfg.batch_size, per_rank) + 1) if per_rank % b == 0)
    fitted = dataclasses.replace(cfg, batch_size=batch, accum_steps=per_rank // batch)
    if d.is_main:
        print(f"resuming a run of {old_world} process(es) on {d.world_size}: the global batch stays {total} videos "
              f"= --batch_size {fitted.batch_size} x {d.world_size} x --accum_steps {fitted.accum_steps} (was "
              f"{old['batch_size']} x {old_world} x {old['accum_steps']}); the schedule and the epoch's data order "
              f"continue by global step", flush=True)
    return fitted


class Task:
    """One training entry point's own parts. Subclasses set ``model`` (whose ``state_dict`` is saved), ``runner``
    (what the forward calls: ``model`` or its DDP/FSDP/compiled wrapper) and ``loader``, and override the hooks."""

    model: torch.nn.Module
    runner: torch.nn.Module
    loader: object  # len(), set_epoch(e), iterate(first_batch), telemetry, ledger
    ENTRY = ""  # "train" or "finetune": the run kind in config.json (vmae2.training.rundir)
    epoch_checkpoints = False  # log, evaluate and save at every epoch's end too
    log_divisor_per_rank = True  # the logged loss is a per-rank mean: divide its all-reduced sum by the world size

    def __init__(self, s: Setup):
        self.setup, self.cfg, self.dist = s, s.cfg, s.dist

    def build_optimizer(self, lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        """Called before each optimizer step's micro-batches (e.g. per-step seeding)."""

    def forward(self, batch, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One micro-batch under autocast: ``(objective, logged, probe)``. The engine back-propagates
        ``objective / accum_steps``, sums ``logged / accum_steps`` for the log and watches ``probe`` for
        non-finite values."""
        raise NotImplementedError

    def log_fields(self, clips_per_s: float) -> dict:
        """Task-specific fields of a log record (read on log steps only)."""
        return {}

    def after_epoch(self, step: int) -> dict:
        """At an epoch's end (``epoch_checkpoints`` tasks): e.g. validation; returns fields for the log record."""
        return {}

    def state(self) -> dict:
        """Model and optimizer state (and what the task keeps) for a checkpoint."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def nonfinite_detail(self, bad_step: int) -> str:
        return ""

    def describe(self) -> str:
        """The first part of the run's header line."""
        n_params = sum(p.numel() for p in self.model.parameters())
        return f"{self.cfg.model}: {n_params / 1e6:.2f}M params"

    def finish(self, step: int) -> None:
        """After the last step (not after a stop signal): final weights, reports, testing."""

    def close(self) -> None:
        """Release the process group's users before it is destroyed."""
        del self.runner


class _Guard:
    """The finite-loss flag: the first step whose loss was not finite, kept on the device (-1: none yet)."""

    def __init__(self, device: torch.device, d: Dist):
        self.first_bad, self.dist = torch.full((), -1, device=device, dtype=torch.long), d

    def watch(self, loss: torch.Tensor, step: int) -> None:
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()), step, self.first_bad)

    def bad_step(self) -> int:
        """The host read (a sync: log and save steps only), agreed by every rank."""
        if self.dist.world_size > 1:
            dist.all_reduce(self.first_bad, op=dist.ReduceOp.MAX)
        return int(self.first_bad.item())


def too_few_batches(loader, batch_size: int, accum_steps: int) -> str:
    """Why ``loader`` (a training loader: full batches only) gives fewer batches per epoch than ``accum_steps``, with
    the largest ``--batch_size`` that gives enough."""
    videos = loader.samples_per_epoch // loader.world_size  # this process's share of an epoch
    fits = videos // accum_steps
    if not fits:
        return (f"--accum_steps {accum_steps} is too large for this data: it needs {accum_steps} batches per epoch "
                f"per process, and each process has {videos} videos (even --batch_size 1 gives {videos} batches); "
                f"lower --accum_steps (at most {videos}) or add videos")
    return (f"--batch_size {batch_size} is too large for this data: it gives {len(loader)} batches per epoch per "
            f"process, and --accum_steps {accum_steps} needs at least {accum_steps}; pass a smaller --batch_size "
            f"(at most {fits}) or add videos")


class _Run:
    """The state of one run of a task: schedules, optimizer, scaler, checkpoints, guard, metrics, data position."""

    def __init__(self, task: Task):
        self.task, self.setup, self.cfg, self.dist = task, task.setup, task.cfg, task.dist
        cfg, d, loader = self.cfg, self.dist, task.loader
        if len(loader) < cfg.accum_steps:
            raise ValueError(too_few_batches(loader, cfg.batch_size, cfg.accum_steps))
        n_params = sum(p.numel() for p in task.model.parameters())
        if d.is_main:
            check_output_dir(cfg.output_dir, needed_bytes=n_params * 4 * 3 + 2**20)  # weights + 2 AdamW moments
        if d.world_size > 1:
            dist.barrier()
        self.global_videos = cfg.batch_size * d.world_size * cfg.accum_steps  # official: num_sample not counted
        self.lr = cfg.lr * self.global_videos / 256
        self.steps_per_epoch = max(len(loader) // cfg.accum_steps, 1)
        self.total_steps, self.lr_at, self.wd_at = schedules(cfg, self.steps_per_epoch, self.lr)
        if d.is_main and not cfg.max_steps and cfg.epochs * self.steps_per_epoch < cfg.min_steps:
            print(f"note: {cfg.epochs} epochs of {self.steps_per_epoch} steps are fewer than --min_steps "
                  f"{cfg.min_steps}: running {cfg.min_steps} steps ({cfg.min_steps / self.steps_per_epoch:.0f} "
                  f"epochs)", flush=True)
        task.optimizer = task.build_optimizer(self.lr)
        self.compiled_blocks = compile_blocks(task.model, cfg.compile, self.setup.device)
        self.early_free = frees_grads_before_backward(self.setup.device)
        self.scaler = torch.amp.GradScaler(self.setup.device.type) if self.setup.precision == "fp16" else None
        self.checkpoints = Checkpoints(cfg.output_dir, cfg.keep_last)
        self.guard = _Guard(self.setup.device, d)
        self.loss_sum = torch.zeros((), device=self.setup.device)  # device-side: read on log steps only
        self.step, self.finished = _start(task, cfg, self.checkpoints, self.scaler, self.total_steps)
        self.epoch, first_batch = divmod(self.step * cfg.accum_steps, len(loader))
        loader.set_epoch(self.epoch)
        self.batches = loader.iterate(first_batch)
        self.window_start, self.window_steps = time.perf_counter(), 0

    def check_finite(self) -> None:
        bad = self.guard.bad_step()
        if bad >= 0:
            raise NonFiniteLoss(f"the loss became non-finite at step {bad}{self.task.nonfinite_detail(bad)}; stopped "
                                f"without saving. The last good checkpoint is {self.checkpoints.latest()}. Lower --lr, "
                                f"set --clip_grad, or check the data; then --resume auto")

    def save(self) -> None:
        self.check_finite()  # a checkpoint never holds a diverged model
        state = {**self.task.state(), "scaler": self.scaler.state_dict() if self.scaler else None, "step": self.step,
                 "rng": rng_state(), "world_size": self.dist.world_size, "config": to_dict(self.cfg)}
        if self.dist.is_main:
            self.checkpoints.save(state, self.step)

    def next_batch(self):
        batch = next(self.batches, None)
        if batch is None:  # the next epoch
            self.epoch += 1
            self.task.loader.set_epoch(self.epoch)
            self.batches = self.task.loader.iterate(0)
            batch = next(self.batches)
        return batch

    def optimizer_step(self) -> torch.Tensor | None:
        """One optimizer step over ``accum_steps`` micro-batches; returns the gradient norm (on the device) when the
        step clips or logs, else None (the norm pass over every gradient is skipped)."""
        task, cfg, s = self.task, self.cfg, self.setup
        set_schedule(task.optimizer, float(self.lr_at[self.step]), float(self.wd_at[self.step]))
        task.before_step(self.step)
        for micro in range(cfg.accum_steps):
            batch = self.next_batch()
            last = micro == cfg.accum_steps - 1
            no_sync = task.runner.no_sync() if not last and hasattr(task.runner, "no_sync") else contextlib.nullcontext()
            with no_sync, torch.autocast(s.device.type, dtype=s.amp_dtype, enabled=s.amp_dtype is not None):
                objective, logged, probe = task.forward(batch, self.step, micro)
                objective = objective / cfg.accum_steps
                if micro == 0 and self.early_free:
                    task.optimizer.zero_grad(set_to_none=True)
                (self.scaler.scale(objective) if self.scaler else objective).backward()
            self.loss_sum += logged.detach() / cfg.accum_steps
            self.guard.watch(probe, self.step)
        grad_norm = optimizer_step(task.optimizer, self.scaler, task.model.parameters(), cfg.clip_grad,
                                   free_grads=not self.early_free, norm=self.logs_at(self.step + 1))
        self.step += 1
        self.window_steps += 1
        return grad_norm

    def record(self, grad_norm: torch.Tensor) -> dict:
        """The log record of the window since the last one (reads the device: log steps only)."""
        cfg, d = self.cfg, self.dist
        if d.world_size > 1:
            dist.all_reduce(self.loss_sum)
            self.loss_sum /= d.world_size if self.task.log_divisor_per_rank else 1
        clips_per_s = (self.window_steps * cfg.accum_steps * cfg.batch_size * cfg.num_sample * d.world_size
                       / (time.perf_counter() - self.window_start))
        loader = self.task.loader
        record = {"step": self.step, "epoch": self.epoch, "loss": self.loss_sum.item() / max(self.window_steps, 1),
                  "lr": float(self.lr_at[self.step - 1]), "grad_norm": float(grad_norm), "clips_per_s": clips_per_s,
                  "data_wait_frac": loader.telemetry.wait_fraction,
                  "skipped_videos": sum(loader.ledger.encounters.values()), **self.task.log_fields(clips_per_s)}
        self.loss_sum.zero_()
        self.window_start, self.window_steps = time.perf_counter(), 0
        return record

    def report_first_step(self, seconds: float) -> None:
        """The first step's time (with the compilation, when blocks are compiled) and the backends measured for it."""
        what = f"{self.compiled_blocks} blocks compiled (--compile {self.cfg.compile}); compile time included" \
            if self.compiled_blocks else f"eager (--compile {self.cfg.compile})"
        print(f"first step {seconds:.1f} s: {what}", flush=True)
        for entry in measure.used():
            print(f"  {entry['kind']} [{entry['key']}]: {entry['choice']} ({measure.summary(entry)})", flush=True)

    def epoch_done(self, step: int | None = None) -> bool:
        """Whether ``step`` (default: the steps done) ends an epoch that is checkpointed."""
        cfg, step = self.cfg, self.step if step is None else step
        return self.task.epoch_checkpoints and ((step * cfg.accum_steps) % len(self.task.loader) < cfg.accum_steps
                                                or step == self.total_steps)

    def logs_at(self, step: int) -> bool:
        """Whether a log record is written once ``step`` steps are done."""
        return step % self.cfg.log_every == 0 or step == self.total_steps or self.epoch_done(step)

    def loop(self, stop_signal: list[int], metrics: MetricsLog) -> bool:
        """Steps until the last one or an agreed stop signal; returns whether it stopped early."""
        cfg, d = self.cfg, self.dist
        self.task.runner.train()
        stopping = False
        first = True
        while self.step < self.total_steps and not stopping:
            started = time.perf_counter()
            grad_norm = self.optimizer_step()
            if first:
                first = False
                if d.is_main:
                    if self.setup.device.type == "cuda":
                        torch.cuda.synchronize()  # once: the first step's time, compilation included
                    self.report_first_step(time.perf_counter() - started)
            epoch_done = self.epoch_done()
            if d.world_size == 1:
                stopping = bool(stop_signal)
            record = {}
            if self.logs_at(self.step):
                self.check_finite()  # the one host sync, on log steps only
                stopping = agreed_stop(stop_signal, d, self.setup.device)
                record = self.record(grad_norm)
            if epoch_done:
                record = {**(record or {"step": self.step}), **self.task.after_epoch(self.step)}
                self.window_start = time.perf_counter()  # clips/s counts training only
            if record:
                metrics.write(record)
            if self.step % cfg.save_every_steps == 0 or self.step == self.total_steps or epoch_done or stopping:
                self.save()
        return stopping


def train(task: Task) -> int:
    """Run ``task`` to its last step (or a stop signal); exit code 0. Raises ``NonFiniteLoss``."""
    run, s, d = _Run(task), task.setup, task.dist
    if run.finished:
        if d.is_main:
            print(f"already finished at step {run.step}; nothing to do (outputs in {task.cfg.output_dir})", flush=True)
        return _close(task)
    stop_signal = stop_signals()
    metrics = MetricsLog(task.cfg.output_dir, run.total_steps, run.step, enabled=d.is_main)
    if d.is_main:
        cfg = task.cfg
        print(f"{task.describe()}; clips of {cfg.num_frames} frames x {cfg.input_size} px, sampling rate "
              f"{cfg.sampling_rate}; {d.world_size} process(es) ({d.launcher}) on {s.device}, {s.precision}; "
              f"{run.total_steps} steps of batch {cfg.batch_size} x {d.world_size} process(es) x {cfg.accum_steps} "
              f"accumulated = {run.global_videos} videos x {cfg.num_sample} views; lr {run.lr:.2e}", flush=True)
    stopped = run.loop(stop_signal, metrics)
    metrics.close()
    if stopped:
        if d.is_main:
            print(f"\nstopped by signal {stop_signal[0]} at step {run.step}; checkpoint saved, --resume auto "
                  f"continues", flush=True)
    else:
        task.finish(run.step)
    return _close(task)


def _close(task: Task) -> int:
    """Leave the process group (under ``torchrun``); exit code 0."""
    if task.dist.world_size > 1:
        task.close()
        finish_distributed()
    return 0


def _same_run(old: dict, new: dict, what: str, fix: str) -> None:
    """Refuse ``new`` (this run's options) where they make another run than ``old``
    (:func:`vmae2.training.rundir.differences`)."""
    if changed := rundir.differences(old, new):
        raise ValueError(f"{what}, and this run differs from it (its value -> this run's): {'; '.join(changed)}. "
                         f"{fix}")


def _start(task: Task, cfg: TrainingConfig, checkpoints: Checkpoints, scaler, total_steps: int) -> tuple[int, bool]:
    """Check that this run continues the one in the output folder and the one that wrote ``--resume``; load
    ``--resume`` (``auto``: the latest checkpoint in the output folder) and record it in ``config.json`` (written
    here for a new run). Returns the step to continue from and whether the run is already finished (its checkpoint at
    the last step and its weights written: nothing loaded, nothing recorded). A checkpoint of another world size
    continues with its global batch (:func:`fit_global_batch`): the split of that batch is no other run."""
    new = {"vmae2_entry": task.ENTRY, **to_dict(cfg)}
    folder = rundir.read(cfg.output_dir)
    source = resume_source(cfg)
    state = Checkpoints.load(source) if source else None
    if folder:
        _same_run(_as_split(folder[1], state, new, task.dist), new,
                  f"--output_dir {cfg.output_dir} holds another run ({folder[0]})",
                  "Pass the run's values to continue it, --resume none --overwrite to start a new run there (the "
                  "old one is moved aside), or choose another --output_dir")
    if not source:
        if task.dist.is_main and folder is None:
            rundir.write(to_dict(cfg), task.ENTRY, cfg.output_dir)  # the geometry travels with the weights
        return 0, False
    written = rundir.read(source)
    if written is None or folder is None or written[0].resolve() != folder[0].resolve():
        _same_run(_as_split(written[1] if written else state.get("config", {}), state, new, task.dist), new,
                  f"--resume {source} is a checkpoint of another run ({written[0] if written else 'its options'})",
                  "Pass that run's values to continue it, or start a new run: --resume none (with --overwrite "
                  "in a folder holding a run) or another --output_dir")
    step = int(state["step"])
    if step >= total_steps and (Path(cfg.output_dir) / "model.safetensors").is_file():
        return step, True
    state["optimizer"] = optimizer_keys(state["optimizer"], task.model, task.optimizer,
                                        by_name=getattr(task, "sharded", False))
    task.load_state(state)
    if scaler and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    if task.dist.is_main:
        print(f"resumed from {source} at step {step}", flush=True)
        rundir.record_resume(to_dict(cfg), task.ENTRY, cfg.output_dir, step, source)
    return step, False


def _as_split(old: dict, state: dict | None, new: dict, d: Dist) -> dict:
    """``old`` (a run's options) with ``new``'s batch size and accumulation when both give the global batch of the
    checkpoint ``state`` (written on its own number of ranks): resuming on another world size is the same run."""
    if state is None or "batch_size" not in old or "accum_steps" not in old:
        return old
    if global_batch(old, int(state.get("world_size", 1))) != global_batch(new, d.world_size):
        return old
    return {**old, "batch_size": new["batch_size"], "accum_steps": new["accum_steps"]}


def run(build_task: type[Task], cfg: TrainingConfig) -> int:
    """``build_task(setup(cfg))`` then :func:`train`, holding the output folder's lock
    (:func:`vmae2.training.rundir.lock`;
    ``--resume none``: in a folder cleared for a new run, :func:`vmae2.training.rundir.start_afresh`); exit code 0, 2
    (bad lists, weights, output folder ... found before training) or 3 (the loss stopped being finite)."""
    try:
        with rundir.lock(cfg.output_dir, f"python -m vmae2.{build_task.ENTRY}"):
            s = setup(cfg)
            if s.dist.is_main and cfg.resume == "none" and (aside := rundir.start_afresh(cfg.output_dir, cfg.overwrite)):
                print(f"--overwrite: moved the run that was in {cfg.output_dir} to {aside}", flush=True)
            return train(build_task(s))
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
