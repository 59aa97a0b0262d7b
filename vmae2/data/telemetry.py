"""Data-side telemetry: clips/s, data-wait fraction, and the ledger of bad files (counted, logged, quarantined)."""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path

from vmae2.data.decode import BadVideo

log = logging.getLogger("vmae2.data")


def quarantined(path: Path) -> set[str]:
    """The paths already in the quarantine list ``path`` (empty when it does not exist)."""
    if not path.exists():
        return set()
    return {line.split("\t", 1)[0] for line in path.read_text().splitlines()}


class BadFileLedger:
    """Counts every bad-file encounter, logs each path once with its reason, and appends it to a quarantine
    list (``path<TAB>reason<TAB>detail`` per line) that ``python -m vmae2.data.check`` and users can read.
    A path already in the list (another loader of the run, or the run before a resume) is not added again."""

    def __init__(self, quarantine_path: str | os.PathLike | None = None):
        self.encounters: Counter[str] = Counter()  # by reason, every time a bad file was met
        self.paths: dict[str, str] = {}  # unique bad paths -> reason
        self.quarantine_path = Path(quarantine_path) if quarantine_path else None

    def add(self, bad: BadVideo) -> None:
        self.encounters[bad.reason] += 1
        if bad.path in self.paths:
            return
        self.paths[bad.path] = bad.reason
        log.warning("skipping bad file %s: %s %s", bad.path, bad.reason, bad.detail)
        if self.quarantine_path and bad.path not in quarantined(self.quarantine_path):
            self.quarantine_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.quarantine_path, "a") as f:
                f.write(f"{bad.path}\t{bad.reason}\t{bad.detail}\n")

    @property
    def num_bad_files(self) -> int:
        return len(self.paths)


class Telemetry:
    """Wraps a batch iterator: time blocked in ``next()`` (data wait) vs. time between batches (step time).

    ``wait_fraction`` is the share of wall time the consumer waited for data; ``clips_per_s`` counts clips
    delivered per second of wall time since the first request.
    """

    def __init__(self, clips_per_batch: int):
        self.clips_per_batch = clips_per_batch
        self.batches = 0
        self.wait_s = 0.0
        self._start: float | None = None

    def wrap(self, iterator):
        it = iter(iterator)
        while True:
            t0 = time.perf_counter()
            if self._start is None:
                self._start = t0
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - t0
            self.batches += 1
            yield batch

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._start if self._start is not None else 0.0

    @property
    def wait_fraction(self) -> float:
        return self.wait_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def clips_per_s(self) -> float:
        return self.batches * self.clips_per_batch / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict:
        return {"data_wait_fraction": round(self.wait_fraction, 4), "clips_per_s": round(self.clips_per_s, 2),
                "batches": self.batches}
