"""The command-line builder of every ``python -m vmae2.X`` and the config fields they share: :class:`CommonConfig`
(every command), :class:`TrainingConfig` (pretraining and fine-tuning), a :class:`Command` (a config dataclass, its
named presets, help texts), :func:`parse_config` (JSON/YAML files, CLI flags) and :func:`cli` (an entry point's main).

Precedence: field defaults < ``--preset`` < ``--config FILE`` < command-line flags. Flag names follow the
official ``run_mae_pretraining.py`` where sensible (``--mask_ratio``, ``--decoder_mask_ratio``, ...).
Everything is validated before any work starts; errors name the value and what is allowed.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import get_type_hints

from vmae2.models.configs import checkpoint_mode, checkpoint_spellings, list_models, model_config
from vmae2.training import rundir


def opt(default, help: str, check: str | None = None, **kw):
    """A config field: its default, its ``--help`` text and its range ``check`` (``">= 1"``, ``"> 0"``,
    ``"[0, 1)"``, ... : one rule, applied by :meth:`CommonConfig.validate`; ``None`` values skip it). Other keywords
    (``choices``, ``path=True``: must name an existing file, or a comma-separated list of them, ``positional=METAVAR``:
    an argument without ``--``, ``multi=True``: a text field that takes one or more words, kept joined by blanks,
    ``hub=True``: a Hugging Face Hub id is replaced by its downloaded folder) go to metadata."""
    return field(default=default, metadata={"help": help, "check": check, **kw})


def resolve_precision(precision: str, device_type: str) -> str:
    """``precision`` with ``auto`` resolved: bf16 on a GPU, fp32 on a CPU (every entry point: one rule)."""
    return precision if precision != "auto" else ("bf16" if device_type == "cuda" else "fp32")


def cpu_cores() -> int:
    """The CPU cores this process may use (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def count(default, help: str):
    """A field holding a count or a size: an int ``>= 1`` (or ``None`` where the default is derived)."""
    return opt(default, help, ">= 1")


def like(default, help: str | None = None):
    """The parent class's field with another default (and optionally another help): declared once, not twice."""
    return field(default=default, metadata={"inherit": True, "help": help})


def _in_range(value, check: str) -> bool:
    if check.startswith((">=", ">")):
        bound = float(check.lstrip(">= "))
        return value >= bound if check.startswith(">=") else value > bound
    lo, hi = (float(x) for x in check[1:-1].split(","))
    return (lo <= value if check[0] == "[" else lo < value) and (value <= hi if check[-1] == "]" else value < hi)


def _meta(cls, name: str) -> dict:
    """The metadata of field ``name``, following :func:`like` overrides up the class hierarchy."""
    merged: dict = {}
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get("__dataclass_fields__", {}).get(name)
        if own is not None and own.metadata:
            merged.update({k: v for k, v in own.metadata.items() if not (own.metadata.get("inherit") and v is None)})
    return merged


def refuse(name: str, value, allowed: str):
    """Raise the one error message of a bad option value: ``--name value is invalid: allowed``."""
    raise ValueError(f"--{name} {value!r} is invalid: {allowed}")


def check_fields(config, required: dict[str, str] | None = None):
    """Apply every field's own rule (:func:`opt`'s ``check`` and ``path``); raise on the first value refused, or on
    the first field of ``required`` (name -> message) that is None. Returns ``config``."""
    for name, message in (required or {}).items():
        if getattr(config, name) is None:
            raise ValueError(message)
    for f in fields(config):
        value, meta = getattr(config, f.name), _meta(type(config), f.name)
        if value is None:
            continue
        if meta.get("check") and not _in_range(value, meta["check"]):
            rule = f"must be {meta['check']}" if meta["check"][0] in "<>" else f"must be in {meta['check']}"
            refuse(f.name, value, rule + (" (or omit it)" if f.default is None else ""))
        if meta.get("path"):
            for path in str(value).split(","):
                if not os.path.exists(path):
                    refuse(f.name, path, "must name an existing file" + (" (each list in a comma-separated "
                                                                      "--data_path)" if "," in value else ""))
    return config


@dataclass
class CommonConfig:
    """The fields of every entry point (pretraining, fine-tuning, evaluation), declared once."""

    # model
    model: str | None = opt(None, "model name (see vmae2.models.list_models())")
    attn_backend: str = opt("auto", "attention backend: auto, flash, xformers, sdpa, math")
    # data
    data_path: str | None = opt(None, "list file(s), comma-separated", path=True)
    data_root: str = opt("", "prefix for relative paths in the lists")
    num_workers: int | None = opt(None, "data workers (PyTorch) or threads (DALI) (default: min(10, CPU cores); "
                                        "0: load in the main process)", ">= 0")
    # clip geometry
    num_frames: int = count(16, "frames per clip")
    sampling_rate: int = count(4, "temporal stride (official: 4)")
    input_size: int = count(224, "crop size in pixels")
    tubelet_size: int = count(2, "frames per tubelet")
    # run
    batch_size: int = count(64, "videos per GPU/process per micro-batch (clips = batch_size * num_sample)")
    precision: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16 (with GradScaler when training), fp32",
                         choices=("auto", "bf16", "fp16", "fp32"))
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    output_dir: str = opt("output", "where results go")
    seed: int = opt(0, "seed of the run")

    KIND = ""  # "pretrain_" or "vit_": the model names this entry point takes (class attributes, not fields)
    REQUIRED = ()  # fields without a usable default
    REQUIRED_HINT = ""  # how else a required field can be given
    MAX_WORKERS = 10  # the default --num_workers is min(MAX_WORKERS, the CPU cores this process may use)

    @property
    def patch_size(self) -> int:
        return model_config(self.model).patch_size

    def run_precision(self, device_type: str) -> str:
        """The precision of this run on ``device_type`` (:func:`resolve_precision`)."""
        return resolve_precision(self.precision, device_type)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` of the model input."""
        return self.num_frames // self.tubelet_size, self.input_size // self.patch_size, self.input_size // self.patch_size

    def validate(self):
        """Raise ``ValueError`` naming the first invalid value and what is allowed; return ``self``."""
        for name in self.REQUIRED:
            if getattr(self, name) is None:
                raise ValueError(f"--{name} is required{self.REQUIRED_HINT}")
        models = [m for m in list_models() if m.startswith(self.KIND)]
        if self.model not in models:
            refuse("model", self.model, f"choose a {'pretraining' if self.KIND == 'pretrain_' else 'classification'} "
                                      f"model: {models}")
        check_fields(self)
        if self.num_workers is None:
            self.num_workers = min(self.MAX_WORKERS, cpu_cores())
        if self.num_frames % self.tubelet_size:
            refuse("num_frames", self.num_frames, f"must be divisible by --tubelet_size {self.tubelet_size}")
        if self.input_size % self.patch_size:
            refuse("input_size", self.input_size, f"must be a multiple of the patch size {self.patch_size}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            refuse("device", self.device, "auto, cpu, cuda or cuda:N")
        self.check()
        return self

    def check(self) -> None:
        """Rules across fields of one entry point (subclasses)."""


@dataclass
class TrainingConfig(CommonConfig):
    """The fields of the two training entry points (pretraining, fine-tuning)."""

    init: str | None = opt(None, "initialise from weights (.pth official checkpoint or .safetensors, a transformers "
                                 "VideoMAE folder or its Hub id); every tensor of the model must come from it (see "
                                 "--init_partial)", path=True, hub=True)
    init_partial: bool = opt(False, "accept --init weights that leave other tensors of the model at their "
                                    "initialisation (they are listed)")
    drop_path: float = opt(0.0, "stochastic depth rate", "[0, 1]")
    with_checkpoint: str = opt("false", "activation checkpointing: false, true (every block: the official ViT-H/g "
                                        "scripts), attn or mlp (only that branch of every block), every:K (every K-th "
                                        "block), auto (pretraining: the memory plan's choice on a GPU, see python -m "
                                        "vmae2.plan; none on a CPU)")
    compile: str = opt("auto", "torch.compile every transformer block: on, off, or auto (on for a GPU, off for a CPU, "
                               "where compiled blocks measured no faster)", choices=("auto", "on", "off"))
    num_sample: int = count(1, "views per decoded clip (repeated augmentation)")
    accum_steps: int = count(1, "micro-batches per optimizer step (gradient accumulation; official --update_freq)")
    epochs: int = count(300, "epochs")
    max_steps: int | None = count(None, "stop after this many optimizer steps (overrides --epochs)")
    min_steps: int = opt(0, "at least this many optimizer steps: more epochs where --epochs of a small data set give "
                            "fewer", ">= 0")
    lr: float = opt(1.5e-4, "base lr; the actual lr is lr * batch_size * world_size * accum_steps / 256", "> 0")
    min_lr: float = opt(1e-5, "final lr of the cosine schedule (scaled like --lr)", ">= 0")
    warmup_epochs: float = opt(40.0, "linear warm-up from 0, in epochs", ">= 0")
    warmup_steps: int = opt(-1, "warm-up in steps (overrides --warmup_epochs when >= 0)", ">= -1")
    weight_decay: float = opt(0.05, "weight decay (not on 1-D params and biases)", ">= 0")
    weight_decay_end: float | None = opt(None, "final weight decay of a cosine wd schedule (default: constant)",
                                         ">= 0")
    opt_betas: tuple[float, float] = opt((0.9, 0.95), "AdamW betas")
    opt_eps: float = opt(1e-8, "AdamW eps", ">= 0")
    clip_grad: float | None = opt(None, "max gradient norm", "> 0")
    log_every: int = count(20, "log (and read the loss on the host) every N steps")
    save_every_steps: int = count(1000, "checkpoint every N steps (and at the end)")
    keep_last: int = count(2, "checkpoints kept")
    resume: str = opt("auto", "auto (continue the run in --output_dir from its latest checkpoint), a checkpoint path, "
                              "or none (a new run); a run continues only with its own data, model, geometry and recipe")
    overwrite: bool = opt(False, "with --resume none: move a run already in --output_dir aside (to a new folder "
                                 "OUTPUT_DIR.replaced-TIME beside it) instead of refusing to start")

    def validate(self):
        super().validate()
        if self.min_lr > self.lr:
            refuse("min_lr", self.min_lr, f"must not exceed --lr {self.lr}")
        if not all(0 <= b < 1 for b in self.opt_betas):
            refuse("opt_betas", self.opt_betas, "each beta must be in [0, 1)")
        if self.init_partial and self.init is None:
            refuse("init_partial", self.init_partial, "accepts a partial load of --init; give --init too")
        if self.resume not in ("auto", "none") and not os.path.exists(self.resume):
            refuse("resume", self.resume, "auto, none, or an existing checkpoint file")
        if self.overwrite and self.resume != "none":
            refuse("overwrite", self.overwrite, f"goes with --resume none (a new run where one was), not --resume "
                                                f"{self.resume}, which continues a run")
        auto = self.KIND == "pretrain_"  # the memory plan covers the pretraining models
        try:
            self.with_checkpoint = checkpoint_mode(self.with_checkpoint, allow_auto=auto)
        except ValueError:
            refuse("with_checkpoint", self.with_checkpoint, f"choose one of {checkpoint_spellings(auto)}")
        return self


def _field_parser(name: str, kind):
    text = str(kind)
    if "tuple" in text:
        return lambda s: tuple(float(x) for x in s.replace(",", " ").split())
    if "bool" in text:
        return _parse_bool
    for prim in (int, float):
        if prim.__name__ in text and "str" not in text:
            return (lambda p: lambda s: None if s.lower() == "none" else p(s))(prim)
    return lambda s: None if s.lower() == "none" and "None" in text else s


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


@dataclass(frozen=True)
class Command:
    """What an entry point parses: its config dataclass, named presets and help texts. ``inherit(values)`` gives
    ``(source, options)`` that the weights the options name carry (:mod:`vmae2.training.rundir`): they override the
    preset, explicit options override them (with a warning naming both values)."""

    prog: str
    description: str
    config_cls: type
    presets: dict = field(default_factory=dict)  # none: no --preset
    default_preset: str | None = None
    preset_help: str = ""
    inherit: Callable[[dict], tuple[str | None, dict]] | None = None


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are two lines: the problem (with a "did you mean" for a mistyped
    option) and where the options are listed, not the whole usage."""

    def error(self, message: str):
        hints = []
        if message.startswith("unrecognized arguments:"):
            options = [o for action in self._actions for o in action.option_strings]
            for word in message.split(":", 1)[1].split():
                if word.startswith("-"):
                    close = difflib.get_close_matches(word.split("=")[0], options, n=1, cutoff=0.6)
                    hints.append(f"unknown option {word}" + (f": did you mean {close[0]}?" if close else ""))
        text = "; ".join(hints) or message
        self.exit(2, f"{self.prog}: error: {text}\n({self.prog} --help lists every option)\n")


def _default_text(value) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, tuple) else repr(value) if value == "" else str(value)


def build_parser(command: Command) -> argparse.ArgumentParser:
    hints = get_type_hints(command.config_cls)
    positional = [_meta(command.config_cls, f.name)["positional"] for f in fields(command.config_cls)
                  if _meta(command.config_cls, f.name).get("positional")]
    parser = Parser(prog=command.prog, description=command.description,
                    usage="%(prog)s " + "".join(f"{p} " for p in positional) + "[--option value ...]")
    if command.presets:
        default = command.default_preset
        if "official_defaults" in command.presets:
            default = (f"{default} without --data_path; with it, small_data for fewer than {SMALL_DATA} videos and "
                       f"no GPU, else official_defaults")
        parser.add_argument("--preset", choices=sorted(command.presets), default=None,
                            help=command.preset_help + f" (default: {default})")
    parser.add_argument("--config", default=None, help="JSON or YAML file of option: value pairs")
    for f in fields(command.config_cls):
        meta = _meta(command.config_cls, f.name)
        text = meta["help"] if "default" in meta["help"] else f"{meta['help']} (default: {_default_text(f.default)})"
        kw = {"help": text, "default": argparse.SUPPRESS, "type": _field_parser(f.name, hints[f.name])}
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        if "tuple" in str(hints[f.name]):
            kw["type"], kw["nargs"] = float, 2
        elif hints[f.name] is bool:  # a bare --flag means true
            kw["nargs"], kw["const"] = "?", True
        elif meta.get("multi"):  # --codecs h264 vp9: one text of blank-separated words
            kw["nargs"], kw["type"], kw["action"] = "+", str, _JoinWords
        if meta.get("positional"):  # its metavar; a list field takes any number of values
            parser.add_argument(f.name, nargs="*" if "list" in str(hints[f.name]) else "?", metavar=meta["positional"],
                                **kw)
            continue
        parser.add_argument(f"--{f.name}", **kw)
    return parser


class _JoinWords(argparse.Action):
    """Store the words of a ``multi`` option as one blank-separated text."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, " ".join(values))


def _read_file(path: str) -> dict:
    with open(path) as fh:
        text = fh.read()
    if path.endswith((".yaml", ".yml")):
        from vmae2_kernels import optional

        yaml, reason = optional.load("yaml")
        if yaml is None:
            raise ValueError(f"--config {path}: YAML needs PyYAML ({reason}), or use JSON")
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of option: value")
    return data


SMALL_DATA = 1000  # videos: below this, without a GPU, --data_path without --preset runs the small_data preset


def _count_videos(data_path: str) -> int | None:
    """Records in the lists of ``data_path`` (non-blank, non-comment lines), or None when one is unreadable."""
    total = 0
    for path in str(data_path).split(","):
        try:
            if os.path.isdir(path):  # a folder of shards (python -m vmae2.data.make_shards): its index counts them
                with open(os.path.join(path, "index.json"), encoding="utf-8") as fh:
                    total += int(json.load(fh)["samples"])
                continue
            with open(path, encoding="utf-8") as fh:
                total += sum(1 for line in fh if line.strip() and not line.lstrip().startswith("#"))
        except (OSError, ValueError, KeyError):  # ValueError: bad UTF-8 or JSON
            return None
    return total


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible, read without importing torch (``CUDA_VISIBLE_DEVICES``, the driver)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.isdir("/proc/driver/nvidia/gpus") and bool(os.listdir("/proc/driver/nvidia/gpus"))


def _default_preset(command: Command, data_path: str | None, device: str | None) -> str:
    """The preset when none is given: the demo without data; with data, ``small_data`` for a small set on a
    machine without a GPU, else ``official_defaults``; said on stderr."""
    if data_path is None or "official_defaults" not in command.presets:
        return command.default_preset
    videos = _count_videos(data_path)
    on_cpu = device == "cpu" or not gpu_visible()
    preset = "small_data" if videos is not None and videos < SMALL_DATA and on_cpu else "official_defaults"
    size = f"{videos} videos" if videos is not None else "unreadable list"
    others = ", ".join(p for p in sorted(command.presets) if p != preset and "vit_" not in p)
    print(f"no --preset: {size}{' and no GPU' if on_cpu else ''}, so --preset {preset}"
          + (" (a tiny model for minutes on a CPU)" if preset == "small_data" else " (the official recipe)")
          + f"; the others (--preset): {others} and the official scripts vit_*", file=sys.stderr)
    return preset


def _same(a, b) -> bool:
    return (list(a) if isinstance(a, (tuple, list)) else a) == (list(b) if isinstance(b, (tuple, list)) else b)


def _fetch_hub_ids(config_cls, values: dict) -> dict:
    """``values`` with each Hub id (``owner/name``, no such local path) of a ``hub=True`` field replaced by the folder
    ``huggingface_hub`` downloads it to; offline, a one-line ``ValueError`` naming the id."""
    from vmae2 import hf_keys

    out = dict(values)
    for f in fields(config_cls):
        if _meta(config_cls, f.name).get("hub") and out.get(f.name) and hf_keys.is_hub_id(out[f.name]):
            out[f.name] = str(hf_keys.resolve(out[f.name]))
    return out


def parse_config(argv: list[str] | None, command: Command):
    """Parse ``argv`` into a validated ``command.config_cls`` (raises ``SystemExit`` / ``ValueError``)."""
    args = vars(build_parser(command).parse_args(argv))
    preset = args.pop("preset", None)
    config_file = args.pop("config", None)
    from_file = _read_file(config_file) if config_file else {}
    known = {f.name for f in fields(command.config_cls)}
    unknown = sorted(set(from_file) - known)
    if unknown:
        raise ValueError(f"--config {config_file}: unknown options {unknown}")
    explicit = _fetch_hub_ids(command.config_cls, {**from_file, **args})
    if preset is None and command.presets:  # the demo only when no data is named
        preset = _default_preset(command, explicit.get("data_path"), explicit.get("device"))
    values: dict = {**command.presets.get(preset, {}), **explicit}
    if command.inherit is not None:
        source, carried = command.inherit(values)
        for name, value in carried.items():  # a flag naming other files or folders is a choice, not a contradiction
            if name in explicit and name not in rundir.LOCATIONS and not _same(explicit[name], value):
                print(f"warning: --{name} {_default_text(explicit[name])} differs from the run's "
                      f"{_default_text(value)} ({source}); using {_default_text(explicit[name])}", file=sys.stderr)
        values = {**command.presets.get(preset, {}), **carried, **explicit}
    if "opt_betas" in values:
        values["opt_betas"] = tuple(float(b) for b in values["opt_betas"])
    return command.config_cls(**values).validate()


def cli(command: Command, argv: list[str] | None, run: str) -> int:
    """An entry point: parse and validate ``argv`` (no torch import: ``--help`` and bad values answer at once; exit
    code 2 on a bad value), then import ``run`` (``"module:function"``) and return ``function(config)``."""
    import importlib
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_config(argv, command)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    module, function = run.split(":")
    return getattr(importlib.import_module(module), function)(config)


def entry(command: Command, run: str):
    """The ``main(argv=None) -> exit code`` of a ``python -m`` command: :func:`cli` with ``command`` and ``run``."""

    def main(argv: list[str] | None = None) -> int:
        return cli(command, argv, run)

    return main


def to_dict(config) -> dict:
    """The config as plain JSON-able values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
