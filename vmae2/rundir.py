"""A run folder carries its geometry: ``config.json`` (the resolved options of the run, written by every training
run beside its checkpoints and weights) is read back by every consumer of those weights.

:func:`read` finds the ``config.json`` of a run folder, or beside a weights file (or one level up, for
``checkpoints/*.pt``); only files written by vmae2 (with the ``vmae2_entry`` key) count. The ``*_values``
functions give the options a consumer takes from it (the :class:`vmae2.config.Command` ``inherit`` hook): they sit
between the preset and the explicit options, so a flag still wins (with a warning naming both values).
No torch import: the entry points call this while parsing.
"""
from __future__ import annotations

import json
import os
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


def write(config: dict, entry: str, out_dir) -> Path:
    """Write ``config`` (plain values) of a ``entry`` run (``train``, ``finetune``) as ``out_dir/config.json``, the
    files it names with absolute paths."""
    path = Path(out_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: _absolute(v) if k in FILES and v else v for k, v in config.items()}
    path.write_text(json.dumps({"vmae2_entry": entry, **values}, indent=2) + "\n")
    return path


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


def classifier_name(model: str) -> str:
    """The classification model of a pretraining architecture (``pretrain_videomae_base_...`` -> ``vit_base_...``)."""
    return model.replace("pretrain_videomae_", "vit_", 1)


def _pick(run: dict, keys) -> dict:
    return {k: run[k] for k in keys if k in run}


def weights_values(run: dict) -> dict:
    """What any consumer of a run's weights takes: the classification model and the clip geometry."""
    return {"model": classifier_name(run["model"]), **_pick(run, GEOMETRY)}


def run_folder_values(values: dict, needs_test_list: bool) -> tuple[str | None, dict]:
    """``evaluate``/``predict``: everything from ``--run DIR`` (a fine-tuning run): model, classes, geometry, test
    views, weights (``DIR/model.safetensors``) and, for ``evaluate``, the test list; or, without ``--run``, the
    model, classes and geometry of the run beside ``--weights``."""
    folder, weights = values.get("run"), values.get("weights")
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
        out["weights"] = str(Path(folder) / "model.safetensors")
        out["output_dir"] = str(Path(folder) / "evaluate")
        test_list = run.get("test_data_path") or run.get("val_data_path")
        if needs_test_list and test_list:
            out["data_path"] = test_list
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
    """``extract``: the model, window (frames) and input size of the run beside ``--weights``."""
    found = read(values["weights"]) if values.get("weights") else None
    if found is None:
        return None, {}
    path, run = found
    return str(path), {"model": classifier_name(run["model"]), "window": run["num_frames"],
                       "input_size": run["input_size"]}
