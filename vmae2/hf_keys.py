"""Key names and configs of ``transformers``' VideoMAE in vmae2's terms, and the reading of its folders: what
:mod:`vmae2.weights`'s one loader needs to take a ``transformers`` folder (no ``transformers`` import, no torch
import at module level). :mod:`vmae2.transformers_io` builds models from it and writes folders; its docstring
gives the key mapping and the LayerNorm epsilons.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vmae2.keynames import summarize_keys

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".json", ".txt", ".csv")  # paths, not Hub ids
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_FIXED_EPS = 1e-5  # transformers' fc_norm and decoder norm: nn.LayerNorm's default, not configurable
# (vmae2 name, transformers name): a name ending in "." is a prefix, other names are whole keys
TOP = {
    "classification": (("patch_embed.proj.", "videomae.embeddings.patch_embeddings.projection."),
                       ("fc_norm.", "fc_norm."), ("head.", "classifier.")),
    "pretraining": (("encoder.patch_embed.proj.", "videomae.embeddings.patch_embeddings.projection."),
                    ("encoder.norm.", "videomae.layernorm."), ("encoder_to_decoder.", "encoder_to_decoder."),
                    ("mask_token", "mask_token"), ("decoder.norm.", "decoder.norm."),
                    ("decoder.head.", "decoder.head.")),
}
STACKS = {
    "classification": (("blocks.", "videomae.encoder.layer."),),
    "pretraining": (("encoder.blocks.", "videomae.encoder.layer."), ("decoder.blocks.", "decoder.decoder_layers.")),
}
BLOCK = (("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."), ("attn.proj.", "attention.output.dense."),
         ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."),
         ("attn.q_bias", "attention.attention.query.bias"), ("attn.v_bias", "attention.attention.value.bias"))
# the q/v bias names transformers writes to disk (it renames them to query.bias / value.bias while loading)
BIAS_ON_DISK = (("attention.attention.q_bias", "attn.q_bias"), ("attention.attention.v_bias", "attn.v_bias"))
QKV = "attn.qkv.weight"
QKV_PARTS = tuple(f"attention.attention.{n}.weight" for n in ("query", "key", "value"))
EXTRA = "pip install vmae2[hf]"


def missing_package(package: str) -> str | None:
    """``None`` when ``package`` can be imported, else the reason, naming ``pip install vmae2[hf]`` (never raises:
    as :func:`vmae2_kernels.optional.importable`, without importing torch)."""
    try:
        if importlib.util.find_spec(package) is not None:
            return None
    except (ImportError, ValueError):  # a module set to None, or one without a spec
        pass
    return f"{package} is not installed: {EXTRA} (or pip install {package})"


def require(package: str, for_what: str) -> None:
    """Raise ``ImportError`` with the reason string when ``package`` is not importable."""
    reason = missing_package(package)
    if reason:
        raise ImportError(f"{for_what}: {reason}")


def _rename(key: str, pairs) -> str | None:
    for src, dst in pairs:
        if (src.endswith(".") and key.startswith(src)) or key == src:
            return dst + key[len(src):]
    return None


def _stack_key(key: str, stacks) -> tuple[str, str] | None:
    """``(target block prefix with index, rest of the key)`` of a key inside a block stack, else ``None``."""
    for src, dst in stacks:
        if key.startswith(src):
            index, _, rest = key[len(src):].partition(".")
            if index.isdigit():
                return f"{dst}{index}.", rest
    return None


def _map_keys(state: dict, top, stacks, block, qkv_parts) -> tuple[dict, list, list, list]:
    """``state`` renamed by the top-level, block-stack and per-block tables: ``(renamed state, keys with no
    counterpart, keys renamed onto a name already taken, query/key/value parts)``. A part is a key whose rest inside
    its block is in ``qkv_parts``, as ``(block prefix, part, key, value)``; the caller splits or joins them."""
    out, unknown, twice, parts = {}, [], [], []
    for key, value in state.items():
        name = _rename(key, top)
        found = _stack_key(key, stacks) if name is None else None
        if found and found[1] in qkv_parts:
            parts.append((*found, key, value))
            continue
        if found:
            rest = _rename(found[1], block)
            name = found[0] + rest if rest is not None else None
        if name is None:
            unknown.append(key)
        else:
            twice += [key] if name in out else []
            out[name] = value
    return out, unknown, twice, parts


def to_transformers_keys(state: dict, kind: str) -> dict:
    """A vmae2 state dict of ``kind`` (``classification`` / ``pretraining``) under ``transformers`` names (the qkv
    weight split into query/key/value). A key with no counterpart raises ``ValueError`` naming it."""
    out, unknown, _, parts = _map_keys(state, TOP[kind], STACKS[kind], BLOCK, (QKV,))
    for prefix, _, _, value in parts:
        out.update({prefix + part: w for part, w in zip(QKV_PARTS, value.chunk(3, dim=0))})
    if unknown:
        layer_scale = " (layer scale, init_values > 0: transformers' VideoMAE has none)" if any(
            ".gamma_" in k for k in unknown) else ""
        raise ValueError(f"{len(unknown)} weights of the vmae2 {kind} model have no transformers VideoMAE "
                         f"counterpart{layer_scale}: {summarize_keys(unknown)}")
    return out


def from_transformers_keys(state: dict, kind: str, source: str = "the transformers checkpoint") -> dict:
    """A ``transformers`` VideoMAE state dict of ``kind`` under vmae2 names (query/key/value weights joined into
    ``qkv``). A key that maps to nothing, or a block lacking one of query/key/value, raises ``ValueError`` naming
    the keys."""
    import torch

    back_top = tuple((h, v) for v, h in TOP[kind])
    back_stacks = tuple((h, v) for v, h in STACKS[kind])
    back_block = tuple((h, v) for v, h in BLOCK) + BIAS_ON_DISK
    out, unused, twice, found_parts = _map_keys(state, back_top, back_stacks, back_block, QKV_PARTS)
    qkv = {}
    for prefix, part, key, value in found_parts:
        qkv.setdefault(prefix, {})[part] = (key, value)
    if unused or twice:
        raise ValueError(f"{source}: {len(unused)} keys are not used by the vmae2 {kind} model"
                         + (f": {summarize_keys(unused)}" if unused else "")
                         + (f"; a q/v bias stored under both of its names: {summarize_keys(twice)}" if twice else ""))
    for block, parts in qkv.items():
        absent = [p for p in QKV_PARTS if p not in parts]
        if absent:
            hf_block = next(key for key, _ in parts.values()).rsplit("attention.attention.", 1)[0]
            raise ValueError(f"{source} misses {', '.join(hf_block + p for p in absent)}")
        out[block + QKV] = torch.cat([parts[p][1] for p in QKV_PARTS], dim=0)
    return out


def kind_of_keys(keys, source: str) -> str:
    """``classification`` (a ``classifier.*`` head) or ``pretraining`` (a ``decoder.*``) from the keys."""
    keys = list(keys)
    if any(k.startswith("classifier.") for k in keys):
        return "classification"
    if any(k.startswith("decoder.") for k in keys):
        return "pretraining"
    raise ValueError(f"{source} is neither a VideoMAEForVideoClassification (no classifier.* keys) nor a "
                     f"VideoMAEForPreTraining (no decoder.* keys); vmae2 reads those two")


@dataclass
class Spec:
    """A vmae2 model of a ``transformers`` config: ``kind``, the architecture, the constructor keywords and the
    LayerNorm epsilons (``blocks``: every block norm and a pretraining encoder's ``norm``; ``head``: ``fc_norm`` or
    the decoder's ``norm``)."""

    kind: str
    vit: object
    kwargs: dict
    eps: dict = field(default_factory=dict)
    labels: list[str] | None = None


def _square(config: dict, name: str, source: str) -> int:
    value = config.get(name)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{source}: {name} {value} is not square; vmae2's models take square frames and patches")
        value = value[0]
    return int(value)


def _mlp_ratio(dim: int, hidden: int) -> float:
    """A ratio ``r`` with ``int(dim * r) == hidden`` (vmae2 sizes the MLP as ``int(dim * mlp_ratio)``)."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _refusals(config: dict, kind: str, source: str) -> None:
    """Raise ``ValueError`` for a ``transformers`` VideoMAE config vmae2 has no model for, naming the option."""
    rules = [
        (config.get("model_type") == "videomae", f"model_type {config.get('model_type')!r} is not 'videomae'"),
        (config.get("num_channels", 3) == 3, f"num_channels {config.get('num_channels')} (vmae2 takes RGB, 3)"),
        (config.get("hidden_act", "gelu") == "gelu",
         f"hidden_act {config.get('hidden_act')!r} (vmae2's MLP uses the exact GELU, 'gelu')"),
        (config.get("qv_bias", config.get("qkv_bias", True)) is not False,
         "qv_bias false (vmae2's attention always has q/v biases)"),
        (kind != "classification" or config.get("use_mean_pooling", True),
         "use_mean_pooling false in a classifier (it classifies the first token; vmae2 mean-pools, no class token)"),
        (kind != "pretraining" or not config.get("use_mean_pooling", True),
         "use_mean_pooling true in a pretraining model (its encoder has no final norm; vmae2's has one)"),
    ]
    for ok, why in rules:
        if not ok:
            raise ValueError(f"{source} cannot be read into a vmae2 model: {why}")


def spec_from_config(config: dict, kind: str, source: str = "config.json") -> Spec:
    """The vmae2 model of a ``transformers`` VideoMAE ``config.json`` (a dict) holding a ``kind`` model; configs
    vmae2 cannot express raise ``ValueError`` naming the option."""
    from vmae2.models.configs import ViTConfig

    _refusals(config, kind, source)
    get = lambda name, default: config.get(name, default)  # noqa: E731  (transformers' defaults)
    dim, hidden = int(get("hidden_size", 768)), int(get("intermediate_size", 3072))
    ratio = _mlp_ratio(dim, hidden)
    dec_dim, dec_hidden = int(get("decoder_hidden_size", 384)), int(get("decoder_intermediate_size", 1536))
    if kind == "pretraining" and int(dec_dim * ratio) != dec_hidden:
        raise ValueError(f"{source} cannot be read into a vmae2 model: decoder_intermediate_size {dec_hidden} is not "
                         f"decoder_hidden_size x intermediate_size / hidden_size = {int(dec_dim * ratio)} (vmae2's "
                         f"decoder MLP has the encoder's width ratio)")
    vit = ViTConfig(_square(config, "patch_size", source) if "patch_size" in config else 16, dim,
                    int(get("num_hidden_layers", 12)), int(get("num_attention_heads", 12)), ratio, dec_dim,
                    int(get("decoder_num_attention_heads", 6)))
    kwargs = {"img_size": _square(config, "image_size", source) if "image_size" in config else 224,
              "num_frames": int(get("num_frames", 16)), "tubelet_size": int(get("tubelet_size", 2))}
    labels = None
    if kind == "classification":
        id2label = config.get("id2label") or {}
        num = int(config.get("num_labels", len(id2label) or 2))
        labels = [str(id2label.get(str(i), id2label.get(i, i))) for i in range(num)]
        kwargs["num_classes"] = num
    else:
        kwargs["decoder_depth"] = int(get("decoder_num_hidden_layers", 4))
    eps = {"blocks": float(get("layer_norm_eps", 1e-12)), "head": HF_FIXED_EPS}
    return Spec(kind, vit, kwargs, eps, labels)


def read_config(folder) -> dict | None:
    """The ``config.json`` of a ``transformers`` VideoMAE folder (``model_type: videomae``), else ``None``."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) and config.get("model_type") == "videomae" else None


def is_hub_id(source) -> bool:
    """Whether ``source`` reads as a Hub repository id (``owner/name``) and is no local path."""
    text = str(source)
    return (not os.path.exists(text) and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", text) is not None
            and not text.endswith(CHECKPOINT_SUFFIXES))


def resolve(source) -> Path:
    """A local folder for ``source``: the folder itself, or the snapshot of the Hub id ``source`` (downloaded
    through ``huggingface_hub``: config, weights, preprocessor config). Offline or unknown ids raise ``ValueError``
    in one line."""
    if os.path.isdir(str(source)) or not is_hub_id(source):
        return Path(source)
    require("huggingface_hub", f"downloading {source} from the Hugging Face Hub")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors", "*.bin", "*.md"]))
    except Exception as exc:  # noqa: BLE001  (network, auth, unknown repo: one line naming it)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{source}: no such folder here, and cannot download it from the Hugging Face Hub "
                         f"({type(exc).__name__}: {first}); give a local folder (offline: huggingface-cli download "
                         f"{source} --local-dir DIR where there is a network)") from exc


def is_transformers_source(source) -> bool:
    """Whether ``source`` is a local ``transformers`` VideoMAE folder or a Hub id (not downloaded here)."""
    if source is None or isinstance(source, dict):
        return False
    return (os.path.isdir(str(source)) and read_config(source) is not None) or is_hub_id(source)


def weights_file(source) -> Path:
    """The weights file of a ``transformers`` VideoMAE folder or Hub id."""
    folder = resolve(source)
    found = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if found is None:
        raise ValueError(f"{source} has no weights ({' or '.join(WEIGHT_FILES)}; a sharded checkpoint: save it "
                         f"again with save_pretrained(max_shard_size='100GB'))")
    return found


def read_folder(source, reader) -> tuple[Spec, dict, str]:
    """``(spec, vmae2 state dict, name)`` of a ``transformers`` VideoMAE folder or Hub id. Raises ``ValueError``
    naming what is wrong (no config, no weights, unused keys, a config vmae2 cannot express)."""
    folder = resolve(source)
    config = read_config(folder)
    if config is None:
        raise ValueError(f"{source} is not a transformers VideoMAE folder (no config.json with model_type "
                         f"'videomae')")
    weights = weights_file(folder)
    state = reader(weights)
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        raise ValueError(f"{source} is a bare VideoMAEModel (no classifier, no decoder); vmae2 reads "
                         f"VideoMAEForVideoClassification and VideoMAEForPreTraining folders")
    kind = kind_of_keys(state, str(source))
    spec = spec_from_config(config, kind, f"{source}/config.json")
    return spec, from_transformers_keys(state, kind, str(weights)), str(source)
