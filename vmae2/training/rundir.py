"""A run folder carries its geometry: ``config.json`` (the resolved options of the run, written by every training
run beside its checkpoints and weights) is read back by every consumer of those weights.

:func:`read` finds the ``config.json`` of a run folder, or beside a weights file (or one level up, for
``checkpoints/*.pt``); only files written by vmae2 (with the ``vmae2_entry`` key) count. The ``*_values``
functions give the options a consumer takes from it (the :class:`vmae2.cli.Command` ``inherit`` hook): they sit
between the preset and the explicit options, so a flag still wins (with a warning naming both values).
One rule for every command that writes a run folder: :func:`lock` keeps a second process out while a run writes it;
a folder continues only its own run (:func:`differences`: ``config.json`` against the new options); a new run
(``--resume none``) starts only in a folder without one (:func:`start_afresh`, which with ``--overwrite`` moves the
old run aside); ``config.json`` is written once per run, and a resume only adds to its ``resumes`` list
(:func:`record_resume`).
No torch import: the entry points call this while parsing.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

CONFIG_FILE = "config.json"
GEOMETRY = ("num_frames", "input_size", "sampling_rate", "tubelet_size")
TEST_PROTOCOL = ("short_side_size", "sparse_sample", "test_num_segment", "test_num_crop")


FILES = ("data_path", "val_data_path", "test_data_path", "class_names", "label_maps", "init", "init_head_index")
LOCATIONS = FILES + ("weights", "output_dir", "data_root")  # taken from a run, but a flag naming others is no conflict


def _absolute(value):
    """A comma-separated list of existing files made absolute (the run folder is read from anywhere); else as is."""
    parts = str(value).split(",")
    return ",".join(os.path.abspath(p) for p in parts) if all(os.path.exists(p) for p in parts) else value


def _values(config: dict, entry: str) -> dict:
    """``config.json``'s values of ``config`` (plain values) of an ``entry`` run: the files it names absolute."""
    return {"vmae2_entry": entry, **{k: _absolute(v) if k in FILES and v else v for k, v in config.items()}}


def _store(path: Path, values: dict) -> Path:
    """Write ``values`` as JSON to ``path`` atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write(config: dict, entry: str, out_dir) -> Path:
    """Write ``config`` (plain values) of a ``entry`` run (``train``, ``finetune``) as ``out_dir/config.json``, the
    files it names with absolute paths."""
    return _store(Path(out_dir) / CONFIG_FILE, _values(config, entry))


def read(path) -> tuple[Path, dict] | None:
    """``(config.json path, its values)`` of the run folder ``path`` or of the run holding the file ``path``;
    ``None`` where there is none (official weights, a folder of another tool)."""
    path = Path(path)
    candidates = [path / CONFIG_FILE] if path.is_dir() else [path.parent / CONFIG_FILE,
                                                             path.parent.parent / CONFIG_FILE]
    for candidate in candidates:
        if candidate.is_file():
            try:
                values = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(values, dict) and "vmae2_entry" in values:
                return candidate, values
    return None


# -- one rule for run folders -----------------------------------------------------------------------------------

LOCK_FILE = "run.lock"
RUN_FILES = (CONFIG_FILE, "metrics.jsonl", "model.safetensors", "checkpoints")  # a folder holding one holds a run
# Options that say how or where a run executes, not what it trains: they may change when a run continues. Every other
# option of config.json (data lists, model, geometry, recipe, seed, initial weights) defines the run.
EXECUTION = ("output_dir", "resume", "overwrite", "device", "precision", "num_workers", "log_every",
             "save_every_steps", "keep_last", "compile", "attn_backend", "kernel_backend", "with_checkpoint",
             "embed_tokens", "data_backend", "fsdp", "eval_batch_size", "data_root")
RECORD = ("vmae2_entry", "resumes")  # what config.json says about the run beyond its options


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` group (``WORLD_SIZE``/``RANK``, as :func:`vmae2.training.distributed.setup_distributed`
    reads them), or a process on its own."""
    if "WORLD_SIZE" not in os.environ and "SLURM_PROCID" in os.environ:  # srun: torchrun's variables win
        return int(os.environ["SLURM_PROCID"]) == 0
    return int(os.environ.get("WORLD_SIZE", "1")) == 1 or int(os.environ.get("RANK", "0")) == 0


def _holder(text: str) -> dict | None:
    """The ``{pid, host, command, started}`` of a lock file's text; None if it holds no such thing."""
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and holder["pid"] > 0 and "host" in holder
    return holder if ok else None


def _alive(holder: dict) -> bool:
    """Whether the holder's process may still run: a process on another host cannot be asked, so it counts as alive."""
    if holder["host"] != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True


def _create(path: Path, text: str) -> bool:
    """Create the lock file ``path`` holding ``text`` if there is none (``O_EXCL``: one process wins)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ValueError(f"--output_dir {path.parent} is not writable ({exc}); choose another folder") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return True


def _take_over(path: Path, stale: str) -> bool:
    """Remove the lock file ``path`` if it still holds ``stale``: renamed away first, so of two processes taking
    over one lock only one removes it, and a fresh lock renamed by mistake is put back."""
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    taken = aside.read_text() == stale
    if not taken:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink()
    return taken


@contextlib.contextmanager
def lock(folder, command: str):
    """Hold ``folder/run.lock`` (pid, host, ``command``, start time) while the block runs; under ``torchrun`` rank 0
    alone takes it. A lock of a live process (or of one on another host) is refused with a ``ValueError`` naming it;
    one left by a process that has ended on this host is taken over, with a note."""
    if not _is_main_process():
        yield
        return
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--output_dir {folder} is not writable ({exc}); choose another folder") from exc
    path = folder / LOCK_FILE
    mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": _now()})
    while not _create(path, mine):
        try:
            text, age = path.read_text(), time.time() - path.stat().st_mtime
        except FileNotFoundError:  # released meanwhile
            continue
        holder = _holder(text)
        if holder is None and age < 2:  # being written
            time.sleep(0.05)
            continue
        if holder is None:
            raise ValueError(f"{path} is not a lock written by vmae2 ({text[:80]!r}); if no run uses --output_dir "
                             f"{folder}, delete it, or choose another --output_dir")
        who = f"pid {holder['pid']} on {holder['host']} ({holder.get('command')}, started {holder.get('started')})"
        if _alive(holder):
            unknown = holder["host"] != socket.gethostname()
            raise ValueError(f"--output_dir {folder} is in use by {who}: wait for that run to end, or choose another "
                             f"--output_dir" + (f" (a process on another host cannot be checked from here: if that "
                                                f"run has ended, delete {path})" if unknown else ""))
        if _take_over(path, text):
            print(f"note: taking over {path} from {who}, which has ended", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if path.read_text() == mine:
                path.unlink()


def locked(command: str):
    """Decorate an entry point's ``run(cfg)``: it runs holding the :func:`lock` of ``cfg.output_dir``; a lock refused
    is an error message and exit code 2."""
    def decorate(run):
        @functools.wraps(run)
        def run_locked(cfg) -> int:
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(lock(cfg.output_dir, command))
                except ValueError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                return run(cfg)
        return run_locked
    return decorate


def used(folder) -> list[str]:
    """The files of a run in ``folder`` (:data:`RUN_FILES`; ``checkpoints/`` when it holds any)."""
    folder = Path(folder)
    return [name for name in RUN_FILES
            if (folder / name).is_file() or (folder / name).is_dir() and any((folder / name).iterdir())]


def start_afresh(folder, overwrite: bool) -> Path | None:
    """Make ``folder`` ready for a new run (``--resume none``): one holding a run is refused, or with ``overwrite``
    everything in it but the lock is moved to a new sibling folder ``NAME.replaced-TIME``, returned (None when there
    was nothing to move)."""
    found = used(folder)
    if not found:
        return None
    if not overwrite:
        raise ValueError(f"--output_dir {folder} holds a run ({', '.join(found)}) and --resume none starts a new one: "
                         f"pass --overwrite to move the old run aside first (nothing is deleted), --resume auto "
                         f"to continue it, or choose another --output_dir")
    folder = Path(folder).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = folder.with_name(f"{folder.name}.replaced-{stamp}"), 1
    while True:
        try:
            aside.mkdir()
            break
        except FileExistsError:
            aside, n = folder.with_name(f"{folder.name}.replaced-{stamp}-{n}"), n + 1
    for entry in sorted(folder.iterdir()):
        if entry.name != LOCK_FILE:
            shutil.move(str(entry), str(aside / entry.name))
    return aside


def _text(value) -> str:
    return "none" if value is None else " ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def differences(old: dict, new: dict) -> list[str]:
    """``--name old -> new`` for each option that makes ``new`` (plain values and ``vmae2_entry``) another run than
    ``old`` (config.json's values, or a checkpoint's options): the command, and the options both hold but the
    :data:`EXECUTION` ones, list files compared as absolute paths."""
    out = []
    if old.get("vmae2_entry", new["vmae2_entry"]) != new["vmae2_entry"]:
        out.append(f"command python -m vmae2.{old['vmae2_entry']} -> python -m vmae2.{new['vmae2_entry']}")
    for name in new:
        if name in old and name not in EXECUTION + RECORD:
            a, b = (_absolute(v) if name in FILES and v else v for v in (old[name], new[name]))
            if a != b:
                out.append(f"--{name} {_text(a)} -> {_text(b)}")
    return out


def record_resume(config: dict, entry: str, out_dir, step: int, source) -> Path:
    """Add ``{step, time, from}`` (and ``options``: the :data:`EXECUTION` options, where they now differ) to the
    ``resumes`` of ``out_dir/config.json``, written from ``config`` where there is none; the run's values stay."""
    found = read(out_dir)
    values = found[1] if found else _values(config, entry)
    changed = {k: v for k, v in config.items()
               if k in EXECUTION and k not in ("output_dir", "resume") and k in values and values[k] != v}
    resume = {"step": step, "time": _now(), "from": os.path.abspath(source)}
    if changed:
        resume["options"] = changed
    values["resumes"] = [*values.get("resumes", []), resume]
    return _store(Path(out_dir) / CONFIG_FILE, values)


def classifier_name(model: str) -> str:
    """The classification model of a pretraining architecture (``pretrain_videomae_base_...`` -> ``vit_base_...``)."""
    return model.replace("pretrain_videomae_", "vit_", 1)


def _pick(run: dict, keys) -> dict:
    return {k: run[k] for k in keys if k in run}


def _pooling(run: dict) -> dict:
    """A fine-tuning run's pooling (``mean`` where its config.json has none); nothing for a pretraining run."""
    return {"pool": run.get("pool", "mean")} if run.get("vmae2_entry") == "finetune" else {}


def weights_values(run: dict) -> dict:
    """What any consumer of a run's weights takes: the classification model, its pooling and the clip geometry."""
    return {"model": classifier_name(run["model"]), **_pick(run, GEOMETRY), **_pooling(run)}


def run_folder_values(values: dict, needs_test_list: bool) -> tuple[str | None, dict]:
    """``evaluate``/``predict``: everything from ``--run DIR`` (a fine-tuning run): model, classes, geometry, test
    views, weights (``DIR/model.safetensors``) and, for ``evaluate``, the test list; or, without ``--run``, the
    model, classes and geometry of the run beside ``--weights``. Raises ``ValueError`` saying what to pass for a run
    without ``model.safetensors`` (unfinished) or, for ``evaluate``, without a test or validation list."""
    folder, weights = values.get("run"), values.get("weights")
    from vmae2 import transformers_io  # no torch import

    if folder and read(folder) is None and transformers_io.is_transformers_source(folder):
        return transformers_io.run_values(folder, needs_test_list, values.get("data_path"))
    if not folder and weights and os.path.isdir(weights) and transformers_io.is_transformers_source(weights):
        return transformers_io.run_values(weights, needs_test_list, values.get("data_path"), "--weights")
    found = read(folder) if folder else (read(weights) if weights else None)
    if folder and found is None:
        raise ValueError(f"--run {folder!r} is invalid: no {CONFIG_FILE} written by vmae2 in it; give the "
                         f"--output_dir of a python -m vmae2.finetune run")
    if found is None:
        return None, {}
    path, run = found
    if run["vmae2_entry"] != "finetune":
        if not folder:
            return None, {}
        raise ValueError(f"--run {folder!r} is a pretraining run (it has no classifier); fine-tune it first: "
                         f"python -m vmae2.finetune --init {Path(folder) / 'model.safetensors'} ...")
    out = {**weights_values(run), **_pick(run, TEST_PROTOCOL + ("nb_classes", "class_names", "data_root"))}
    if folder:
        final = Path(folder) / "model.safetensors"
        if not weights and not final.is_file():
            saved = sorted((Path(folder) / "checkpoints").glob("checkpoint-*.pt"))
            rerun = f"its python -m vmae2.finetune command (options as in {path}) with --output_dir {folder}"
            raise ValueError(f"--run {folder!r} has no model.safetensors: its fine-tuning did not finish. " + (
                f"Resume it ({rerun} continues from {saved[-1].name}), or pass its last checkpoint with --weights "
                f"{saved[-1]}" if saved else f"It saved no checkpoint yet: run {rerun} again"))
        out["weights"] = str(final)
        out["output_dir"] = str(Path(folder) / "evaluate")
        test_list = run.get("test_data_path") or run.get("val_data_path")
        if needs_test_list and test_list:
            out["data_path"] = test_list
        elif needs_test_list and not values.get("data_path"):
            raise ValueError(f"--run {folder!r} has no test or validation list (its {CONFIG_FILE} names no "
                             f"--test_data_path or --val_data_path); pass the list to test on: --data_path LIST")
    return str(path), out


def evaluate_values(values: dict) -> tuple[str | None, dict]:
    return run_folder_values(values, needs_test_list=True)


def predict_values(values: dict) -> tuple[str | None, dict]:
    return run_folder_values(values, needs_test_list=False)


def finetune_values(values: dict) -> tuple[str | None, dict]:
    """``finetune --init``: the model and geometry of the run that wrote the initial weights (the short side follows
    the input size; a pretraining run's geometry is also ``--init_num_frames/--init_input_size``, so a fine-tuning at
    another geometry resamples its position table); and ``--nb_classes`` from ``--class_names`` (one name a line)."""
    out, source = {}, None
    found = read(values["init"]) if values.get("init") else None
    if found is not None:
        path, run = found
        source = str(path)
        out = weights_values(run)
        out["short_side_size"] = run.get("short_side_size", out.get("input_size"))
        if run["vmae2_entry"] == "train":  # the grid of the pretraining position table: resampled if it differs
            out["init_num_frames"], out["init_input_size"] = run["num_frames"], run["input_size"]
    names = values.get("class_names")
    if names and Path(names).is_file() and not names.endswith(".json"):  # one name a line (JSON maps: the run)
        out["nb_classes"] = sum(1 for line in Path(names).read_text().splitlines() if line.strip())
        source = source or names
    return source, out


def extract_values(values: dict) -> tuple[str | None, dict]:
    """``extract``: what the run beside ``--weights`` trained on: its model, window (``num_frames``), input size,
    frame stride (``sampling_rate``), ImageNet mean/std normalisation (vmae2 training normalises every clip) and, for
    a fine-tuning run, its pooling."""
    found = read(values["weights"]) if values.get("weights") else None
    if found is None:
        return None, {}
    path, run = found
    return str(path), {"model": classifier_name(run["model"]), "window": run["num_frames"],
                       "input_size": run["input_size"], "frame_stride": run["sampling_rate"], "normalize": True,
                       **_pooling(run)}
