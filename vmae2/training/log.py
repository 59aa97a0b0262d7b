"""What a training run reports: ``metrics.jsonl``, the progress line, TensorBoard when installed, peak memory."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from vmae2_kernels import optional


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
