"""Load official VideoMAE V2 checkpoints and save/load weights as safetensors.

Loading never runs code: ``.pth`` files go through ``torch.load(weights_only=True)`` (only
``argparse.Namespace``, which official checkpoints store under ``args``, is allowed besides tensors and
plain containers). The format is told from the file's first bytes, not its name; a file of neither format is
refused with one line (:func:`load_state_dict`). Weights may sit under ``model``, ``module`` or ``state_dict``, or
be the whole file; ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes are stripped. A pretraining
checkpoint loads into a classification model by keeping the ``encoder.`` weights.

Weights load fully or not at all (:func:`load_weights`): a load that would leave a tensor of the model at its
initialisation raises ``ValueError`` (model untouched) unless the rule names it (a classifier's ``fc_norm``/``head``
after a pretraining checkpoint, a head of another class count) or the caller asks for a partial load
(``--init_partial``).
"""
from __future__ import annotations

import argparse
import os
import pickle
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vmae2.keynames import summarize_keys

WRAPPER_KEYS = ("model", "module", "state_dict")
PREFIXES = ("_orig_mod.", "module.")
PRETRAIN_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token", "encoder.norm.")
CLASSIFIER_NEW = ("fc_norm.", "head.")  # what a classifier built on a pretraining encoder starts fresh
NOT_A_CHECKPOINT = "is not a checkpoint (expected a .pth/.pt saved by torch or a .safetensors file)"
SAFETENSORS_MAX_HEADER = 100_000_000  # bytes: the safetensors format's limit on its JSON header
TORCH_LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # after ``\x80<protocol>``: torch.save's pre-zip format


def _counted(what: str, keys) -> str:
    """``missing 3: a, b, c`` (``missing 0`` for none)."""
    return f"{what} {len(keys)}" + (f": {summarize_keys(keys)}" if keys else "")


@dataclass
class LoadReport:
    """What :func:`load_weights` did: keys of the model the file lacked (left at their initialisation), keys of the
    file the model lacks (ignored), and keys removed on purpose (pretraining-only keys, a head of another class
    count)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        fresh = " (left at their initialisation)" if self.missing else ""
        ignored = " (ignored)" if self.unexpected else ""
        return (f"{_counted('missing', self.missing)}{fresh}; {_counted('unexpected', self.unexpected)}{ignored}; "
                f"{_counted('dropped on purpose', self.dropped)}")


def _reason(exc: BaseException) -> str:
    """The first sentence of ``exc``'s message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__


def _file_format(path: Path) -> str | None:
    """``"safetensors"``, ``"torch"`` (a torch.save zip or legacy file), ``"pickle"`` (another pickle) or ``None``,
    from the first bytes of ``path``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= SAFETENSORS_MAX_HEADER:
        return "safetensors"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or (head[:1] == b"\x80" and head[2:14] == TORCH_LEGACY_MAGIC):
        return "torch"
    return "pickle" if head[:1] == b"\x80" else None


def _is_foreign_zip(path: Path) -> bool:
    """Whether ``path`` is a readable zip archive without the ``data.pkl`` that torch.save writes."""
    try:
        with zipfile.ZipFile(path) as z:
            return not any(name.endswith("data.pkl") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _torch_load(path: Path, kind: str, map_location) -> object:
    try:  # an open file: torch.load would read a path named *.safetensors as safetensors whatever it holds
        with open(path, "rb") as f, torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(f, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, IndexError, KeyError, ValueError,
            struct.error) as exc:  # the ways a damaged or foreign file fails inside torch.load
        detail = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if isinstance(exc, pickle.UnpicklingError) and detail:
            raise ValueError(
                f"{path} holds pickled objects that safe loading refuses ({detail}). vmae2 never "
                f"unpickles arbitrary objects. If you trust the file, extract the weights yourself with "
                f"torch.load(path, weights_only=False) and save them with vmae2.weights.save_safetensors.") from exc
        if kind == "pickle" or _is_foreign_zip(path):
            raise ValueError(f"{path} {NOT_A_CHECKPOINT}") from exc
        raise ValueError(f"{path} is a damaged or truncated torch checkpoint ({_reason(exc)}); save or download it "
                         f"again") from exc


def _read_safetensors(path: Path, map_location) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device=str(map_location))
    except SafetensorError as exc:
        raise _damaged_safetensors(path, exc) from exc


def _damaged_safetensors(path: Path, exc: BaseException) -> ValueError:
    return ValueError(f"{path} is a damaged or truncated .safetensors file ({_reason(exc)}); save or download it "
                      f"again")


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
    """Read weights from a safetensors or torch.save file (see module docstring): the one reader of ``--init`` and
    ``--weights``. A file of neither format, a damaged one, or one without tensors raises a one-line
    ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    kind = _file_format(path)
    if kind is None:
        raise ValueError(f"{path} {NOT_A_CHECKPOINT}")
    if kind == "safetensors":
        tensors = _read_safetensors(path, map_location)
        if not tensors:
            raise ValueError(f"{path} holds no tensors")
        return strip_prefixes(tensors)
    return unwrap(_torch_load(path, kind, map_location), source=str(path))


def _read(source: str | os.PathLike | dict) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict, name for messages)`` of a path, an in-memory checkpoint, or a ``transformers`` VideoMAE
    folder or Hub id (its weights under vmae2 names, :mod:`vmae2.hf_keys`)."""
    if isinstance(source, dict):
        return unwrap(source, "state dict"), "the state dict"
    from vmae2 import hf_keys

    if hf_keys.is_transformers_source(source):
        _, state, name = hf_keys.read_folder(source, load_state_dict)
        return state, f"{name} (transformers VideoMAE)"
    return load_state_dict(source), str(source)


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


def load_weights(model: nn.Module, source: str | os.PathLike | dict, *, strict: bool = True,
                 partial: bool = False) -> LoadReport:
    """Load ``source`` (path or state dict) into ``model``, converting pretrain -> finetune when needed.

    Shape mismatches always raise ``ValueError`` listing every offending key. ``strict=True``: the file holds
    exactly the model's keys. ``strict=False`` (``--init``): every tensor of the model must come from the file,
    except a classifier's ``fc_norm``/``head`` after a pretraining checkpoint; keys the model lacks are ignored and
    reported; ``partial=True`` (``--init_partial``) also lets other tensors stay at their initialisation. A refused
    load raises ``ValueError`` naming the missing and unexpected keys and leaves the model untouched.
    """
    return _load(model, *_read(source), strict=strict, partial=partial)


def _load(model: nn.Module, state: dict[str, torch.Tensor], name: str, *, strict: bool, partial: bool,
          fresh: tuple[str, ...] = ()) -> LoadReport:
    """:func:`load_weights` of a state dict read already; keys starting with ``fresh`` may stay initialised."""
    own = model.state_dict()
    report = LoadReport()
    if not any(k.startswith("encoder.") for k in own) and any(k.startswith("encoder.") for k in state):
        state, report.dropped = pretrain_to_finetune(state)
        fresh = (*fresh, *CLASSIFIER_NEW)
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        more = f"\n  ... and {len(mismatched) - 8} more" if len(mismatched) > 8 else ""
        raise ValueError(f"{len(mismatched)} weights have the wrong shape (a different model size, patch size, "
                         f"decoder width or number of classes?):\n  " + "\n  ".join(mismatched[:8]) + more)
    report.missing = sorted(set(own) - set(state))
    report.unexpected = sorted(set(state) - set(own))
    model_name = type(model).__name__
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"{name} does not match {model_name} ({_counted('missing', report.missing)}; "
                         f"{_counted('unexpected', report.unexpected)}): give weights saved from this model (the "
                         f"same --model, sizes and number of classes)")
    uninitialised = [k for k in report.missing if not k.startswith(fresh)]
    if uninitialised and not strict and not partial:
        raise ValueError(f"{name} would leave {len(uninitialised)} of the {len(own)} tensors of {model_name} at "
                         f"their initialisation ({_counted('missing', uninitialised)}; "
                         f"{_counted('unexpected', report.unexpected)}): give a checkpoint of this model (the same "
                         f"--model and sizes), or --init_partial (partial=True) to start from it anyway")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return report


def load_classifier_weights(model: torch.nn.Module, source, *, head_index: str | None = None,
                            strict: bool = False, partial: bool = False) -> LoadReport:
    """Load a pretraining or classification checkpoint into a classifier (official ``run_class_finetuning``):
    wrapper keys and ``_orig_mod.``/``module.`` prefixes removed; a pretraining encoder converted (decoder
    dropped, ``fc_norm`` and head fresh); a 710-way head re-indexed with ``head_index`` (official
    ``label_710to*.json``); otherwise, when not ``strict``, a head of another class count is dropped (freshly
    initialised, as the official code does). ``strict`` and ``partial`` as for :func:`load_weights`."""
    from vmae2.data.labels import convert_head, read_official_index

    state, name = _read(source)
    own = model.state_dict()
    dropped, fresh = [], ()
    if head_index is not None:
        if "head.weight" not in state:
            raise ValueError(f"--init_head_index {head_index} was given but {name} has no head.weight")
        index = read_official_index(head_index, num_rows=state["head.weight"].shape[0],
                                    num_classes=own["head.weight"].shape[0] if "head.weight" in own else None)
        state = convert_head(state, index)
    elif not strict and "head.weight" in state and "head.weight" in own and \
            state["head.weight"].shape != own["head.weight"].shape:
        dropped, fresh = [k for k in ("head.weight", "head.bias") if k in state], ("head.",)
        state = {k: v for k, v in state.items() if k not in dropped}
    report = _load(model, state, name, strict=strict, partial=partial, fresh=fresh)
    report.dropped = list(report.dropped) + dropped
    return report


POS_GRID_KEY = "vmae2.pos_embed_grid"  # safetensors metadata: the (t, h, w) grid a classifier's table came from


def stored_pos_grid(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """The position-table source grid that ``vmae2.finetune`` stored in a safetensors file's metadata, or ``None``
    (other files, or none stored). A damaged safetensors file raises :func:`load_state_dict`'s ``ValueError``."""
    path = Path(path)
    if not path.is_file() or _file_format(path) != "safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get(POS_GRID_KEY)
    except SafetensorError as exc:
        raise _damaged_safetensors(path, exc) from exc
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


def best_prefix(state: dict[str, torch.Tensor], own, view=None) -> tuple[str, object]:
    """The wrapper prefix of ``state``'s keys (``model.``, ``module.``, ``backbone.``, ... or ``""``) under which
    most keys match the model keys ``own`` (the shorter prefix on a tie), found from the keys: ``(prefix,
    view(state, prefix))``. ``view`` gives ``(keys under the prefix, stripped, ...)``; by default the stripped keys
    alone (then ``view(...)[0]`` is that dict)."""
    view = view or (lambda st, p: ({k[len(p):]: v for k, v in st.items() if k.startswith(p)},))
    scored = []
    for prefix in _candidate_prefixes(state):
        viewed = view(state, prefix)
        scored.append((len(set(own) & viewed[0].keys()), -len(prefix), prefix, viewed))
    _, _, prefix, viewed = max(scored, key=lambda s: s[:2])
    return prefix, viewed


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
    state, name = _read(source)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    prefix, (sub, converted) = best_prefix(state, own, _as_feature_state)
    missing = sorted(own.keys() - sub.keys())
    unexpected = sorted(k for k in sub.keys() - own.keys() if not k.startswith("head."))
    if missing or unexpected:
        raise ValueError(f"{name} does not fit {type(model).__name__}: the closest key prefix {prefix!r} leaves "
                         f"{len(missing)} missing and {len(unexpected)} unexpected keys (of {len(own)} the model has; "
                         f"{_counted('missing', missing)}; {_counted('unexpected', unexpected)}): give the weights "
                         f"of a classifier or pretraining model of this --model")
    wrong = [f"{k}: {tuple(sub[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sub[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{len(wrong)} weights have the wrong shape (checkpoint vs model; another model size?): "
                         + "; ".join(wrong[:4]))
    model.load_state_dict({k: sub[k] for k in own}, strict=False)
    kind = "pretraining encoder (decoder dropped, encoder.norm as fc_norm)" if converted else "classifier"
    return f"{kind}, key prefix {prefix!r}" + (", head ignored" if "head.weight" in sub else "")
