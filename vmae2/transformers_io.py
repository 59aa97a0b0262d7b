"""vmae2 <-> ``transformers`` VideoMAE: key names both ways, configs both ways, folders read and written.

A ``transformers`` VideoMAE folder holds ``config.json`` (``model_type: videomae``) and ``model.safetensors`` (or
``pytorch_model.bin``) of a ``VideoMAEForVideoClassification`` (keys ``videomae.*``, ``fc_norm.*``,
``classifier.*``) or a ``VideoMAEForPreTraining`` (``videomae.*``, ``encoder_to_decoder.*``, ``mask_token``,
``decoder.*``). Reading one needs neither ``transformers`` nor ``huggingface_hub`` (a Hub id needs the latter);
writing one needs ``transformers``, which builds the model from the written config and loads the weights back, so
a key either side lacks is an error naming it. The key and config mapping and the reading of folders live in
:mod:`vmae2.hf_keys` (what :mod:`vmae2.weights`'s one loader needs), re-exported here.

Key mapping (per block; vmae2 names are the official VideoMAE V2 ones): ``norm1``/``norm2`` <->
``layernorm_before``/``layernorm_after``; ``attn.qkv.weight`` ``[3C, C]`` <-> ``attention.attention.{query,key,
value}.weight`` (rows q, k, v); ``attn.q_bias``/``attn.v_bias`` <-> ``query.bias``/``value.bias`` (on disk
``q_bias``/``v_bias``, which ``transformers`` writes and reads; both are read, a bias under both names is an error;
the key has no bias on either side); ``attn.proj`` <-> ``attention.output.dense``; ``mlp.fc1``/``mlp.fc2`` <->
``intermediate.dense``/``output.dense``. A pretraining encoder's final ``norm`` is ``videomae.layernorm``
(``use_mean_pooling: false``); a classifier's ``head`` is ``classifier``. Inputs: vmae2 takes ``[B, 3, T, H, W]``,
``transformers`` ``[B, T, 3, H, W]``; masks are the same ``[B, N]`` bool (True = masked), the decoder predicting
every masked token in ascending order, channel layout ``(p0 p1 p2 c)`` on both sides.

LayerNorm epsilons: ``transformers`` uses ``layer_norm_eps`` in the blocks (and ``videomae.layernorm``) but a fixed
1e-5 in a classifier's ``fc_norm`` and the decoder's final ``norm``; vmae2 (as the official code) uses 1e-6
throughout. A model read from ``transformers`` gets that folder's epsilons (equal outputs); an exported vmae2
model keeps its 1e-6 in the blocks, and ``fc_norm`` / the decoder norm run at 1e-5 in ``transformers``.
"""
from __future__ import annotations

import json
from pathlib import Path

from vmae2.hf_keys import (  # the key and config mapping, re-exported (__all__): one import for users
    EXTRA,
    HF_FIXED_EPS,
    WEIGHT_FILES,
    Spec,
    from_transformers_keys,
    is_hub_id,
    is_transformers_source,
    kind_of_keys,
    missing_package,
    read_config,
    require,
    resolve,
    spec_from_config,
    to_transformers_keys,
    weights_file,
)
from vmae2.keynames import summarize_keys

HF_CLASSES = {"classification": "VideoMAEForVideoClassification", "pretraining": "VideoMAEForPreTraining"}
__all__ = ["EXTRA", "HF_CLASSES", "HF_FIXED_EPS", "WEIGHT_FILES", "Spec", "build_model", "class_names",
           "config_from_model", "feature_model", "from_transformers_keys", "import_transformers", "is_hub_id",
           "is_transformers_source", "kind_of_keys", "kind_of_model", "load_model", "missing_package",
           "preprocessor_config", "read_config", "read_folder", "require", "resolve", "run_values", "save_folder",
           "set_eps", "spec_from_config", "to_transformers_keys", "weights_file", "zoo_name"]


def import_transformers():
    """``transformers`` (``ImportError`` with the reason string when it is not installed)."""
    require("transformers", "reading or writing transformers models")
    import transformers

    return transformers


# -- configs ------------------------------------------------------------------------------------------------------


def set_eps(model, kind: str, eps: dict) -> None:
    """Give ``model``'s LayerNorms the epsilons of :class:`Spec` ``eps`` (the block norms, the encoder norm, and the
    classifier's ``fc_norm`` or the decoder's final norm)."""
    from torch import nn

    head = model.fc_norm if kind == "classification" else model.decoder.norm
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = eps["head"] if module is head else eps["blocks"]


def _eps(model, kind: str) -> dict:
    head = model.fc_norm if kind == "classification" else model.decoder.norm
    blocks = model.blocks if kind == "classification" else model.encoder.blocks
    return {"blocks": blocks[0].norm1.eps if len(blocks) else 1e-6, "head": head.eps}


def kind_of_model(model) -> str:
    """``classification`` (a vmae2 ``VisionTransformer``) or ``pretraining`` (a ``PretrainVisionTransformer``)."""
    return "pretraining" if hasattr(model, "encoder") and hasattr(model, "decoder") else "classification"


def _export_refusals(model, kind: str) -> None:
    """Raise ``ValueError`` for a vmae2 model ``transformers``' VideoMAE cannot express, naming the option."""
    if kind == "classification":
        embed = model.patch_embed
        if model.num_classes == 0:
            raise ValueError("a features-only model (num_classes 0) has no head; transformers' "
                             "VideoMAEForVideoClassification needs one (export a fine-tuned classifier)")
        if tuple(model.pos_embed_grid) != tuple(embed.grid):
            raise ValueError(f"this classifier's position table is resampled from the grid {model.pos_embed_grid} "
                             f"onto {embed.grid} (pos_embed_grid); transformers' VideoMAE always uses the sinusoid "
                             f"table of its own grid")
        if model.pool != "mean":
            raise ValueError(f"this classifier pools with {model.pool!r} (--pool); transformers' "
                             f"VideoMAEForVideoClassification pools with the mean token only: export it with "
                             f"--format vmae2 (vmae2.hub.from_pretrained reads it), or fine-tune with --pool mean")
    blocks = model.blocks if kind == "classification" else [*model.encoder.blocks, *model.decoder.blocks]
    if any(b.gamma_1 is not None for b in blocks):
        raise ValueError("this model has layer scale (init_values > 0: gamma_1/gamma_2); transformers' VideoMAE "
                         "has none")
    if any(b.attn.q_bias is None for b in blocks):
        raise ValueError("this model has no q/v biases; transformers' VideoMAE with qv_bias false has no vmae2 twin")


def config_from_model(model, labels: list[str] | None = None) -> dict:
    """The ``transformers`` ``VideoMAEConfig`` keywords of a vmae2 model (``labels``: class names for
    ``id2label``); models ``transformers`` cannot express raise ``ValueError`` saying why."""
    kind = kind_of_model(model)
    _export_refusals(model, kind)
    cfg = model.cfg
    embed = model.patch_embed if kind == "classification" else model.encoder.patch_embed
    blocks = model.blocks if kind == "classification" else model.encoder.blocks
    out = {"image_size": embed.img_size, "patch_size": embed.patch_size, "num_channels": 3,
           "num_frames": embed.num_frames, "tubelet_size": embed.tubelet_size, "hidden_size": cfg.embed_dim,
           "num_hidden_layers": len(blocks), "num_attention_heads": cfg.num_heads,
           "intermediate_size": int(cfg.embed_dim * cfg.mlp_ratio), "hidden_act": "gelu", "qv_bias": True,
           "layer_norm_eps": _eps(model, kind)["blocks"], "use_mean_pooling": kind == "classification",
           "decoder_hidden_size": cfg.decoder_embed_dim, "decoder_num_attention_heads": cfg.decoder_num_heads,
           "decoder_intermediate_size": int(cfg.decoder_embed_dim * cfg.mlp_ratio),
           "architectures": [HF_CLASSES[kind]]}
    if kind == "pretraining":
        out["decoder_num_hidden_layers"] = len(model.decoder.blocks)
    else:
        names = labels or [str(i) for i in range(model.num_classes)]
        if len(names) != model.num_classes:
            raise ValueError(f"{len(names)} class names for a head of {model.num_classes} classes")
        out["id2label"] = {i: n for i, n in enumerate(names)}
        out["label2id"] = {n: i for i, n in enumerate(names)}
    return out


# -- folders ------------------------------------------------------------------------------------------------------


def read_folder(source) -> tuple[Spec, dict, str]:
    """``(spec, vmae2 state dict, name)`` of a ``transformers`` VideoMAE folder or Hub id
    (:func:`vmae2.hf_keys.read_folder` with vmae2's weights reader)."""
    from vmae2 import hf_keys
    from vmae2.weights import load_state_dict

    return hf_keys.read_folder(source, load_state_dict)


def build_model(spec: Spec, **overrides):
    """The vmae2 model of ``spec`` (``overrides``: more constructor keywords, e.g. ``attn_backend``), epsilons set."""
    from vmae2.models.finetune import VisionTransformer
    from vmae2.models.pretrain import PretrainVisionTransformer

    cls = VisionTransformer if spec.kind == "classification" else PretrainVisionTransformer
    model = cls(spec.vit, **{**spec.kwargs, **overrides})
    set_eps(model, spec.kind, spec.eps)
    return model


def load_model(source, **overrides):
    """The vmae2 model of a ``transformers`` VideoMAE folder or Hub id, weights loaded (every key accounted for:
    a key missing or left over raises ``ValueError`` naming it, in ``transformers`` names)."""
    from vmae2.weights import load_weights

    spec, state, name = read_folder(source)
    model = build_model(spec, **overrides)
    check_keys(model, state, name)
    load_weights(model, state, strict=True)
    return model


def check_keys(model, state: dict, name: str) -> None:
    """Raise ``ValueError`` naming (in ``transformers`` names) the keys ``model`` needs that ``state`` lacks, and
    the ones it has that ``model`` lacks."""
    kind = kind_of_model(model)
    own = set(to_transformers_keys(model.state_dict(), kind))
    have = set(to_transformers_keys(state, kind))
    missing, extra = sorted(own - have), sorted(have - own)
    if missing or extra:
        raise ValueError(f"{name} does not fit the vmae2 {kind} model of its config.json: "
                         + "; ".join(f"{what} {len(keys)}: {summarize_keys(keys)}" for what, keys in
                                     (("missing", missing), ("not used", extra)) if keys))


def _kind_of_folder(folder: Path, config: dict) -> str:
    """The model kind of a folder, from ``architectures`` or else the safetensors header's key names."""
    for arch in config.get("architectures") or ():
        for kind, cls in HF_CLASSES.items():
            if arch == cls:
                return kind
    path = weights_file(folder)
    with open(path, "rb") as f:
        head = f.read(8)
        keys = json.loads(f.read(int.from_bytes(head, "little"))) if path.suffix == ".safetensors" else {}
    return kind_of_keys(keys, str(folder))


def zoo_name(patch_size: int) -> str:
    """A vmae2 classification model name of ``patch_size`` (the entry points check geometry against it; the model
    itself is built from the folder's config)."""
    from vmae2.models.configs import FINETUNE_NAMES, SIZES

    names = [n for n, s in FINETUNE_NAMES.items() if SIZES[s].patch_size == patch_size]
    if not names:
        patches = sorted({c.patch_size for c in SIZES.values()})
        raise ValueError(f"patch size {patch_size}: the entry points take patch {patches}; load the model in Python "
                         f"with vmae2.transformers_io.load_model")
    return names[0]


def run_values(source, needs_test_list: bool = False, data_path: str | None = None, flag: str = "--run"
               ) -> tuple[str, dict]:
    """``predict``/``evaluate --run`` (or ``--weights``: ``flag``) of a ``transformers`` VideoMAE classifier (folder
    or Hub id): ``(config.json path, values)``: the classes, clip geometry, short side (``preprocessor_config.json``),
    the weights (the folder)."""
    folder = resolve(source)
    config = read_config(folder)
    if config is None:
        raise ValueError(f"{flag} {source!r} is not a transformers VideoMAE folder (no config.json with model_type "
                         f"'videomae')")
    kind = _kind_of_folder(folder, config)
    if kind != "classification":
        raise ValueError(f"{flag} {source!r} is a VideoMAEForPreTraining (no classifier); fine-tune it first: "
                         f"python -m vmae2.finetune --init {source} ...")
    spec = spec_from_config(config, kind, f"{source}/config.json")
    size = spec.kwargs["img_size"]
    out = {"model": zoo_name(spec.vit.patch_size), "nb_classes": spec.kwargs["num_classes"],
           "num_frames": spec.kwargs["num_frames"], "tubelet_size": spec.kwargs["tubelet_size"], "input_size": size,
           "short_side_size": max(size, _short_side(folder) or size), "weights": str(folder)}
    if needs_test_list and not data_path:
        raise ValueError(f"{flag} {source!r} is a transformers folder, which names no test list: pass --data_path LIST")
    return str(folder / "config.json"), out


def _short_side(folder: Path) -> int | None:
    """``size.shortest_edge`` of the folder's ``preprocessor_config.json``, if any."""
    path = folder / "preprocessor_config.json"
    try:
        size = json.loads(path.read_text()).get("size") if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    return int(size["shortest_edge"]) if isinstance(size, dict) and "shortest_edge" in size else None


def class_names(source) -> list[str] | None:
    """The class names (``id2label``) of a ``transformers`` VideoMAE classifier folder or Hub id."""
    config = read_config(resolve(source)) or {}
    id2label = config.get("id2label")
    if not id2label:
        return None
    return [str(id2label.get(str(i), i)) for i in range(len(id2label))]


def feature_model(source, **overrides):
    """A features-only vmae2 ``VisionTransformer`` (``num_classes=0``) of a ``transformers`` VideoMAE classifier or
    pretraining encoder, weights loaded (``fc_norm``: the classifier's, or the pretraining encoder's final norm, as
    :func:`vmae2.weights.load_feature_weights`); returns ``(model, how it was loaded)``."""
    from vmae2.models.finetune import VisionTransformer
    from vmae2.weights import load_feature_weights

    spec, state, name = read_folder(source)
    kwargs = {k: v for k, v in spec.kwargs.items() if k in ("img_size", "num_frames", "tubelet_size")}
    model = VisionTransformer(spec.vit, **{**kwargs, "num_classes": 0, **overrides})
    eps = spec.eps if spec.kind == "classification" else {**spec.eps, "head": spec.eps["blocks"]}
    set_eps(model, "classification", eps)
    how = load_feature_weights(model, state)
    return model, f"transformers VideoMAE {spec.kind} folder {name}: {how}"


def save_folder(model, out, labels: list[str] | None = None, preprocessing: dict | None = None) -> Path:
    """Write ``model`` (vmae2, fp32) as a ``transformers`` VideoMAE folder ``out``: ``config.json`` and
    ``model.safetensors`` written by ``transformers`` itself (its model built from the config, the weights loaded
    strictly: a key either side lacks raises ``ValueError`` naming it), and ``preprocessor_config.json`` from
    ``preprocessing`` (:func:`preprocessor_config` keywords). Needs ``transformers`` (``ImportError`` with the
    reason otherwise); models it cannot express raise ``ValueError`` saying why."""
    require("transformers", "exporting to transformers")
    import torch

    transformers = import_transformers()
    kind = kind_of_model(model)
    config = transformers.VideoMAEConfig(**config_from_model(model, labels))
    hf_model = getattr(transformers, HF_CLASSES[kind])(config)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in to_transformers_keys(model.state_dict(), kind).items()}
    own = hf_model.state_dict()
    missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if missing or extra or wrong:
        raise ValueError(f"the {HF_CLASSES[kind]} of this config does not take the converted weights: "
                         + "; ".join(f"{what} {len(keys)}: {summarize_keys(keys)}" for what, keys in
                                     (("missing", missing), ("not in transformers", extra)) if keys)
                         + (f"; wrong shapes: {', '.join(wrong[:4])}" if wrong else ""))
    hf_model.load_state_dict(state)
    out = Path(out)
    hf_model.save_pretrained(out)
    if preprocessing is not None:
        (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(**preprocessing), indent=2)
                                                      + "\n")
    return out


def preprocessor_config(input_size: int, short_side_size: int) -> dict:
    """``VideoMAEImageProcessor`` settings of vmae2's test-time preprocessing: frames scaled to [0, 1], short side
    resized bilinearly to ``short_side_size``, a centred ``input_size`` crop, ImageNet mean/std."""
    from vmae2_kernels import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return {"image_processor_type": "VideoMAEImageProcessor", "do_resize": True,
            "size": {"shortest_edge": int(short_side_size)}, "resample": 2, "do_center_crop": True,
            "crop_size": {"height": int(input_size), "width": int(input_size)}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(IMAGENET_DEFAULT_MEAN),
            "image_std": list(IMAGENET_DEFAULT_STD)}
