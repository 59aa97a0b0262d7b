"""``python -m vmae2.export``: a run's (or a weights file's) model as a folder other tools load.

``--format transformers`` writes a ``transformers`` VideoMAE folder (``VideoMAEForVideoClassification`` for a
fine-tuning run, ``VideoMAEForPreTraining`` for a pretraining run: ``config.json``, ``model.safetensors``,
``preprocessor_config.json`` with the run's test-time preprocessing), written and checked by ``transformers`` itself
(:func:`vmae2.transformers_io.save_folder`); ``--format vmae2`` writes the Hub folder of
:func:`vmae2.hub.save_pretrained` (config, weights, model card with the run's data, recipe and metrics).
``--run DIR`` takes the model, geometry, classes and ``DIR/model.safetensors`` from the run; ``--weights FILE``
takes them from the run beside the file, or from ``--model``/``--nb_classes``/``--num_frames``/``--input_size``.
Exit code 0, or 2 with one line saying why (a model ``transformers`` cannot express, a missing package, bad
weights).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from vmae2.cli import Command, build_parser, check_fields, count, entry, opt
from vmae2.training import rundir

FORMATS = ("transformers", "vmae2")


@dataclass
class ExportConfig:
    """The options of ``python -m vmae2.export``."""

    format: str = opt("transformers", "transformers or vmae2 (Hub folder)", choices=FORMATS)
    run: str | None = opt(None, "a python -m vmae2.finetune or vmae2.train output folder")
    weights: str | None = opt(None, "a weights file (.safetensors or .pth); the run beside it gives the model")
    out: str | None = opt(None, "the folder to write")
    model: str | None = opt(None, "model name, when no run is beside --weights (vit_*, pretrain_videomae_*)")
    nb_classes: int | None = count(None, "classes of the head (without a run)")
    num_frames: int = count(16, "frames per clip (without a run)")
    input_size: int = count(224, "input size (without a run)")
    tubelet_size: int = count(2, "tubelet size (without a run)")
    decoder_depth: int = count(4, "pretraining decoder depth (without a run)")

    def validate(self):
        if self.out is None:
            raise ValueError("--out is required: the folder to write")
        check_fields(self)
        return self


EXPORT = Command("python -m vmae2.export", __doc__.split("\n\n")[0], ExportConfig)


def parser():
    """The ``argparse`` parser of this command (:func:`vmae2.cli.build_parser` of :data:`EXPORT`)."""
    return build_parser(EXPORT)


def _source(args) -> tuple[dict, str, Path | None]:
    """``(run options or flags, weights path, run folder or None)``."""
    if bool(args.run) == bool(args.weights):
        raise ValueError("give one of --run DIR or --weights FILE")
    if args.run:
        found = rundir.read(args.run) if Path(args.run).is_dir() else None
        if found is None:
            raise ValueError(f"--run {args.run!r} is invalid: no config.json written by vmae2 in it")
        weights = Path(args.run) / "model.safetensors"
        if not weights.is_file():
            raise ValueError(f"--run {args.run!r} has no model.safetensors (its training did not finish); pass a "
                             f"checkpoint with --weights")
        return found[1], str(weights), Path(args.run)
    found = rundir.read(args.weights)
    if found is not None:
        return found[1], args.weights, found[0].parent
    if not args.model:
        raise ValueError(f"no vmae2 run beside --weights {args.weights}: name the model with --model (and "
                         f"--nb_classes for a classifier)")
    entry = "train" if args.model.startswith("pretrain_") else "finetune"
    values = {"vmae2_entry": entry, "model": args.model, "nb_classes": args.nb_classes, "num_frames": args.num_frames,
              "input_size": args.input_size, "tubelet_size": args.tubelet_size, "decoder_depth": args.decoder_depth}
    return values, args.weights, None


def build(values: dict, weights: str):
    """The run's model with ``weights`` loaded strictly; ``(model, class names or None)``."""
    from vmae2.models import create_model
    from vmae2.weights import load_weights, stored_pos_grid

    geometry = {"num_frames": values["num_frames"], "img_size": values["input_size"],
                "tubelet_size": values.get("tubelet_size", 2)}
    if values["vmae2_entry"] == "train":
        model = create_model(values["model"], decoder_depth=values.get("decoder_depth", 4), **geometry)
        names = None
    else:
        if not values.get("nb_classes"):
            raise ValueError("the number of classes is unknown: pass --nb_classes")
        model = create_model(rundir.classifier_name(values["model"]), num_classes=values["nb_classes"],
                             pos_embed_grid=stored_pos_grid(weights), pool=values.get("pool", "mean"), **geometry)
        names = _class_names(values)
    load_weights(model, weights, strict=True)
    return model.eval(), names


def _class_names(values: dict) -> list[str] | None:
    from vmae2.data.labels import LabelMap

    path = values.get("class_names")
    return list(LabelMap.read(path).names) if path and Path(path).is_file() else None


def export(args) -> Path:
    from vmae2.transformers_io import require

    if args.format == "transformers":
        require("transformers", "exporting to transformers")  # before any work
    values, weights, run = _source(args)
    model, names = build(values, weights)
    if args.format == "vmae2":
        from vmae2.hub import save_pretrained

        return save_pretrained(model, args.out, run=run, class_names=names)
    from vmae2.transformers_io import save_folder

    size = values["input_size"]
    preprocessing = {"input_size": size, "short_side_size": values.get("short_side_size") or size}
    return save_folder(model, args.out, labels=names, preprocessing=preprocessing)


def run(args: ExportConfig) -> int:
    """Export, and say what was written; exit code 0, or 2 with one line saying why."""
    try:
        out = export(args)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.format})")
    return 0


main = entry(EXPORT, "vmae2.export:run")


if __name__ == "__main__":
    raise SystemExit(main())
