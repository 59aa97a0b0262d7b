"""Load official VideoMAE V2 checkpoints and save/load weights as safetensors.

Loading never runs code: ``.pth`` files go through ``torch.load(weights_only=True)`` (only
``argparse.Namespace``, which official checkpoints store under ``args``, is allowed besides tensors and
plain containers). Weights may sit under ``model``, ``module`` or ``state_dict``, or be the whole file;
``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes are stripped. A pretraining checkpoint
loads into a classification model by keeping the ``encoder.`` weights.
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

WRAPPER_KEYS = ("model", "module", "state_dict")
PREFIXES = ("_orig_mod.", "module.")
PRETRAIN_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token", "encoder.norm.")


@dataclass
class LoadReport:
    """What :func:`load_weights` did: keys the model lacked in the file, and keys it ignored."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # pretraining-only keys removed by the conversion

    def __str__(self) -> str:
        return (f"missing {len(self.missing)}: {self.missing}; unexpected {len(self.unexpected)}: "
                f"{self.unexpected}; dropped by pretrain->finetune conversion: {len(self.dropped)}")


def _torch_load(path: Path, map_location) -> object:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "unsupported object")
        raise ValueError(
            f"{path} holds pickled objects that safe loading refuses ({detail}). vmae2 never "
            f"unpickles arbitrary objects. If you trust the file, extract the weights yourself with "
            f"torch.load(path, weights_only=False) and save them with vmae2.checkpoint.save_safetensors.") from exc
    except (RuntimeError, KeyError, EOFError) as exc:  # not a torch file, or a truncated one
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def unwrap(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside ``obj`` (under ``model``/``module``/``state_dict`` or bare), prefixes stripped."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a dict of weights")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source} has no tensors at its top level or under any of {WRAPPER_KEYS}; "
                         f"top-level keys: {sorted(obj)[:10]}")
    return strip_prefixes(tensors)


def strip_prefixes(state_dict: dict[str, torch.Tensor], prefixes=PREFIXES) -> dict[str, torch.Tensor]:
    """Remove leading ``_orig_mod.`` / ``module.`` prefixes (in any order, any number of times)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_state_dict(path: str | os.PathLike, map_location="cpu") -> dict[str, torch.Tensor]:
    """Read weights from a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(path, device=str(map_location))
        if not tensors:
            raise ValueError(f"{path} holds no tensors")
        return strip_prefixes(tensors)
    return unwrap(_torch_load(path, map_location), source=str(path))


def pretrain_to_finetune(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keep the encoder of a pretraining state dict, renamed for a classification model.

    Returns ``(converted, dropped)``: ``encoder.`` stripped; decoder, ``encoder_to_decoder``, ``mask_token``
    and the encoder's final ``norm`` (the classifier uses a fresh ``fc_norm`` after mean pooling) dropped.
    """
    converted, dropped = {}, []
    for key, value in state_dict.items():
        if key.startswith(PRETRAIN_ONLY):
            dropped.append(key)
        elif key.startswith("encoder."):
            converted[key[len("encoder."):]] = value
        else:
            converted[key] = value
    return converted, dropped


def load_weights(model: nn.Module, source: str | os.PathLike | dict, *, strict: bool = True) -> LoadReport:
    """Load ``source`` (path or state dict) into ``model``, converting pretrain -> finetune when needed.

    Shape mismatches always raise ``ValueError`` listing every offending key. With ``strict=True`` missing or
    unexpected keys raise too; otherwise they are returned in the :class:`LoadReport`.
    """
    state = unwrap(source, "state dict") if isinstance(source, dict) else load_state_dict(source)
    own = model.state_dict()
    report = LoadReport()
    if not any(k.startswith("encoder.") for k in own) and any(k.startswith("encoder.") for k in state):
        state, report.dropped = pretrain_to_finetune(state)
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        more = f"\n  ... and {len(mismatched) - 8} more" if len(mismatched) > 8 else ""
        raise ValueError(f"{len(mismatched)} weights have the wrong shape (a different model size, patch size, "
                         f"decoder width or number of classes?):\n  " + "\n  ".join(mismatched[:8]) + more)
    report.missing = sorted(set(own) - set(state))
    report.unexpected = sorted(set(state) - set(own))
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"checkpoint does not match {type(model).__name__}: {report}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return report


def load_classifier_weights(model: torch.nn.Module, source, *, head_index: str | None = None,
                            strict: bool = False) -> LoadReport:
    """Load a pretraining or classification checkpoint into a classifier (official ``run_class_finetuning``):
    wrapper keys and ``_orig_mod.``/``module.`` prefixes removed; a pretraining encoder converted (decoder
    dropped); a 710-way head re-indexed with ``head_index`` (official ``label_710to*.json``); otherwise, when
    not ``strict``, a head of another class count is dropped (freshly initialised, as the official code does)."""
    from vmae2.data.labels import convert_head, read_official_index

    state = load_state_dict(source) if not isinstance(source, dict) else source
    own = model.state_dict()
    dropped = []
    if head_index is not None:
        if "head.weight" not in state:
            raise ValueError(f"--init_head_index {head_index} was given but {source} has no head.weight")
        index = read_official_index(head_index, num_rows=state["head.weight"].shape[0],
                                    num_classes=own["head.weight"].shape[0] if "head.weight" in own else None)
        state = convert_head(state, index)
    elif not strict and "head.weight" in state and "head.weight" in own and \
            state["head.weight"].shape != own["head.weight"].shape:
        dropped = [k for k in ("head.weight", "head.bias") if k in state]
        state = {k: v for k, v in state.items() if k not in dropped}
    report = load_weights(model, state, strict=strict)
    report.dropped = list(report.dropped) + dropped
    return report


POS_GRID_KEY = "vmae2.pos_embed_grid"  # safetensors metadata: the (t, h, w) grid a classifier's table came from


def stored_pos_grid(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """The position-table source grid that ``vmae2.finetune`` stored in a ``.safetensors`` file's metadata, or
    ``None`` (other files, or none stored)."""
    if not str(path).endswith(".safetensors"):
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        value = (f.metadata() or {}).get(POS_GRID_KEY)
    return tuple(int(n) for n in value.split(",")) if value else None


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Write ``path`` so that a crash or a full disk never leaves a half file nor loses the previous one:
    ``write(tmp_path)`` fills a temporary file beside it, which is given the mode a plain ``open()`` would (umask
    applied), flushed to disk, renamed over ``path``, and the folder entry synced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_safetensors(weights: nn.Module | dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write weights to ``path`` atomically (:func:`atomic_write`): a crash never leaves a half file."""
    from safetensors.torch import save_file

    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def _candidate_prefixes(keys) -> set[str]:
    """``""`` and every leading run of up to three dotted components of ``keys`` (``model.``, ``model.encoder.``)."""
    found = {""}
    for key in keys:
        parts = key.split(".")[:-1]
        found.update(".".join(parts[:i]) + "." for i in range(1, min(len(parts), 3) + 1))
    return found


def _as_feature_state(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], bool]:
    """The keys under ``prefix``, stripped; a pretraining model's encoder converted (its final ``norm`` becomes
    ``fc_norm``, the decoder is dropped). Returns ``(state, converted)``."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not any(k.startswith("encoder.") for k in sub):
        return sub, False
    norm = {f"fc_norm.{p}": sub[f"encoder.norm.{p}"] for p in ("weight", "bias") if f"encoder.norm.{p}" in sub}
    return {**pretrain_to_finetune(sub)[0], **norm}, True


def load_feature_weights(model: nn.Module, source: str | os.PathLike | dict) -> str:
    """Load a feature model (a classification ``VisionTransformer``; its head, if any, is left alone) from an official
    fine-tuned or pretraining ``.pth``, a vmae2 ``.safetensors`` or a state dict, whatever wrapper prefix its keys
    carry (``model.``, ``module.``, ``backbone.``, ...: the prefix under which most keys match the model, found from
    the keys). A pretraining encoder becomes the feature model: its final ``norm`` serves as ``fc_norm`` after the
    mean pooling, the decoder is dropped. ``head.*`` keys are ignored. Anything else missing or left over raises
    ``ValueError`` naming the closest prefix and the missing / unexpected counts. Returns what was done, in words."""
    state = load_state_dict(source) if not isinstance(source, dict) else unwrap(source, "state dict")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    scored = []
    for prefix in _candidate_prefixes(state):
        sub, converted = _as_feature_state(state, prefix)
        scored.append((len(own.keys() & sub.keys()), -len(prefix), prefix, sub, converted))
    _, _, prefix, sub, converted = max(scored, key=lambda s: s[:2])
    missing = sorted(own.keys() - sub.keys())
    unexpected = sorted(k for k in sub.keys() - own.keys() if not k.startswith("head."))
    if missing or unexpected:
        raise ValueError(f"weights do not fit {type(model).__name__}: the closest key prefix {prefix!r} leaves "
                         f"{len(missing)} missing and {len(unexpected)} unexpected keys (of {len(own)} the model has"
                         f"); missing e.g. {missing[:3]}, unexpected e.g. {unexpected[:3]}")
    wrong = [f"{k}: {tuple(sub[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sub[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{len(wrong)} weights have the wrong shape (checkpoint vs model; another model size?): "
                         + "; ".join(wrong[:4]))
    model.load_state_dict({k: sub[k] for k in own}, strict=False)
    kind = "pretraining encoder (decoder dropped, encoder.norm as fc_norm)" if converted else "classifier"
    return f"{kind}, key prefix {prefix!r}" + (", head ignored" if "head.weight" in sub else "")
