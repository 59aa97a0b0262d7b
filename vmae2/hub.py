"""The Hugging Face Hub's folder convention for vmae2 models: :func:`save_pretrained`, :func:`from_pretrained`,
:func:`push_to_hub`.

A saved folder holds ``config.json`` (``vmae2_model``: ``classification`` or ``pretraining``, the architecture,
the clip geometry, the classes, the LayerNorm epsilons), ``model.safetensors`` (official VideoMAE V2 key names) and
``README.md``, a model card generated from the model and, when saved from a run folder, its data lists, recipe and
metrics. Saving needs no extra package; the Hub (a repository id instead of a folder) goes through
``huggingface_hub`` (``pip install vmae2[hf]``).

:func:`from_pretrained` reads, by their ``config.json``: a folder saved here; a ``transformers`` VideoMAE folder
(:mod:`vmae2.transformers_io`); and the VideoMAE V2 layout published on the Hub (a ``model_config`` of the official
``VisionTransformer`` arguments, weights under a wrapper prefix such as ``model.``), the prefix found from the keys
as feature extraction finds it (:func:`vmae2.weights.best_prefix`). Every key is accounted for: a key of the model
the file lacks, or one of the file the model does not use, is an error naming it.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from vmae2 import transformers_io as tio

CONFIG_KEY = "vmae2_model"
DEFAULT_EPS = 1e-6
RECIPE = ("init", "epochs", "max_steps", "batch_size", "num_sample", "lr", "min_lr", "warmup_epochs", "layer_decay",
          "weight_decay", "opt_betas", "drop_path", "head_drop", "aa", "reprob", "mixup", "cutmix", "smoothing",
          "mask_type", "mask_ratio", "decoder_mask_type", "decoder_mask_ratio", "normlize_target", "sampling_rate",
          "seed")
DATA = ("data_path", "val_data_path", "test_data_path", "class_names", "label_maps")


def model_config(model, class_names: list[str] | None = None) -> dict:
    """The ``config.json`` values of a vmae2 model (see the module docstring)."""
    from vmae2.models.configs import SIZES

    kind = tio.kind_of_model(model)
    embed = model.patch_embed if kind == "classification" else model.encoder.patch_embed
    blocks = model.blocks if kind == "classification" else model.encoder.blocks
    head = model.fc_norm if kind == "classification" else model.decoder.norm
    size = next((s for s, c in SIZES.items() if c == model.cfg), None)
    out = {CONFIG_KEY: kind, "architecture": dataclasses.asdict(model.cfg), "size": size,
           "img_size": embed.img_size, "num_frames": embed.num_frames, "tubelet_size": embed.tubelet_size,
           "layer_norm_eps": {"blocks": blocks[0].norm1.eps if len(blocks) else DEFAULT_EPS, "head": head.eps}}
    if kind == "classification":
        out.update(num_classes=model.num_classes, pos_embed_grid=list(model.pos_embed_grid), pool=model.pool,
                   layer_scale=any(b.gamma_1 is not None for b in blocks), class_names=class_names)
    else:
        out["decoder_depth"] = len(model.decoder.blocks)
    return out


def build(config: dict, **overrides):
    """The vmae2 model a :func:`model_config` dict describes (weights at their initialisation)."""
    from vmae2.models.configs import ViTConfig

    kind = config[CONFIG_KEY]
    kwargs = {k: config[k] for k in ("img_size", "num_frames", "tubelet_size") if k in config}
    if kind == "classification":
        kwargs.update(num_classes=config["num_classes"],
                      init_values=1.0 if config.get("layer_scale") else 0.0)  # the values come with the weights
        if config.get("pos_embed_grid"):
            kwargs["pos_embed_grid"] = tuple(config["pos_embed_grid"])
        kwargs["pool"] = config.get("pool", "mean")
    elif kind == "pretraining":
        kwargs["decoder_depth"] = config["decoder_depth"]
    else:
        raise ValueError(f"config.json: {CONFIG_KEY} {kind!r} is neither 'classification' nor 'pretraining'")
    eps = {"blocks": DEFAULT_EPS, "head": DEFAULT_EPS, **(config.get("layer_norm_eps") or {})}
    spec = tio.Spec(kind, ViTConfig(**config["architecture"]), kwargs, eps)
    return tio.build_model(spec, **overrides)


def save_pretrained(model, folder, run=None, class_names: list[str] | None = None) -> Path:
    """Write ``model`` to ``folder``: ``config.json``, ``model.safetensors``, ``README.md`` (the card; ``run``: the
    run folder it came from, for data lists, recipe and metrics). Returns the folder."""
    from vmae2.weights import atomic_write, save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model_config(model, class_names)
    atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    save_safetensors(model, folder / "model.safetensors")
    card = model_card(config, run)
    atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(card))
    return folder


def push_to_hub(model, repo_id: str, run=None, class_names: list[str] | None = None, private: bool | None = None,
                token: str | None = None, commit_message: str = "Upload vmae2 model") -> str:
    """:func:`save_pretrained` into a temporary folder, then upload it to the Hub repository ``repo_id`` (created
    if needed) through ``huggingface_hub``; returns the commit URL."""
    tio.require("huggingface_hub", "push_to_hub")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, run=run, class_names=class_names)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message))


def from_pretrained(source, **overrides):
    """The vmae2 model of a folder or Hub id (see the module docstring), weights loaded, in eval mode.
    ``overrides``: constructor keywords (``attn_backend``, ``num_frames``, ...)."""
    folder = tio.resolve(source)
    if tio.read_config(folder) is not None:
        return tio.load_model(folder, **overrides).eval()
    config = _read_json(folder / "config.json", source)
    if CONFIG_KEY in config:
        model = build(config, **overrides)
        _load_exact(model, _weights(folder, source), str(source))
        return model.eval()
    if isinstance(config.get("model_config"), dict):
        model = _official_model(config["model_config"], str(source), **overrides)
        _load_exact(model, _weights(folder, source), str(source))
        return model.eval()
    raise ValueError(f"{source}: config.json is neither a vmae2 folder's ({CONFIG_KEY}), a transformers VideoMAE "
                     f"one (model_type 'videomae') nor the VideoMAE V2 Hub layout (model_config)")


def _read_json(path: Path, source) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{source} has no config.json; save the model with vmae2.hub.save_pretrained") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not an object")
    return value


def _weights(folder: Path, source):
    from vmae2.weights import load_state_dict

    for name in tio.WEIGHT_FILES:
        if (folder / name).is_file():
            return load_state_dict(folder / name)
    raise ValueError(f"{source} has no weights ({' or '.join(tio.WEIGHT_FILES)})")


OFFICIAL_REFUSED = {"use_learnable_pos_emb": True, "cos_attn": True, "qkv_bias": False, "use_mean_pooling": False}


def _official_model(args: dict, source: str, **overrides):
    """The vmae2 classifier of the official ``VisionTransformer`` arguments ``args`` (the Hub's ``model_config``)."""
    from vmae2.models.configs import ViTConfig
    from vmae2.models.finetune import VisionTransformer

    for name, refused in OFFICIAL_REFUSED.items():
        if name in args and bool(args[name]) == refused:
            raise ValueError(f"{source}: model_config {name} {args[name]} has no vmae2 model (vmae2 uses fixed "
                             f"sinusoid positions, dot-product attention, q/v biases and mean pooling)")
    try:
        vit = ViTConfig(int(args.get("patch_size", 16)), int(args["embed_dim"]), int(args["depth"]),
                        int(args["num_heads"]), float(args.get("mlp_ratio", 4.0)), 384, 6)
    except KeyError as exc:
        raise ValueError(f"{source}: model_config lacks {exc.args[0]}") from None
    kwargs = {"num_classes": int(args.get("num_classes", 0)), "img_size": int(args.get("img_size", 224)),
              "num_frames": int(args.get("num_frames", 16)), "tubelet_size": int(args.get("tubelet_size", 2)),
              "init_values": float(args.get("init_values") or 0.0)}
    model = VisionTransformer(vit, **{**kwargs, **overrides})
    tio.set_eps(model, "classification", {"blocks": float(args.get("layer_norm_eps", DEFAULT_EPS)),
                                          "head": float(args.get("layer_norm_eps", DEFAULT_EPS))})
    return model


def _load_exact(model, state: dict, source: str) -> None:
    """Load ``state`` (keys under any wrapper prefix, found from the keys) into ``model``: every model key must be
    there and every key of the file used, else ``ValueError`` naming them."""
    from vmae2.weights import best_prefix, load_weights, summarize_keys

    own = model.state_dict()
    prefix, (sub,) = best_prefix(state, own)
    unused = sorted([k for k in state if not k.startswith(prefix)] + [prefix + k for k in sub if k not in own])
    missing = sorted(own.keys() - sub.keys())
    if missing or unused:
        raise ValueError(f"{source} does not fit {type(model).__name__} (closest key prefix {prefix!r}): "
                         + "; ".join(f"{what} {len(keys)}: {summarize_keys(keys)}" for what, keys in
                                     (("missing", missing), ("not used", unused)) if keys))
    load_weights(model, sub, strict=True)


def _run_summary(run) -> tuple[dict, dict, dict]:
    """``(data lists, recipe, metrics)`` of the run folder ``run`` (``config.json``, ``test_metrics.json``, the
    last validation record of ``metrics.jsonl``)."""
    from vmae2.training import rundir

    found = rundir.read(run) if run else None
    if found is None:
        return {}, {}, {}
    path, values = found
    data = {k: _list_name(values[k]) for k in DATA if values.get(k)}
    recipe = {"command": f"python -m vmae2.{values['vmae2_entry']}", "model": values.get("model"),
              **{k: values[k] for k in RECIPE if values.get(k) is not None}}
    if recipe.get("init"):
        recipe["init"] = Path(str(recipe["init"])).name
    metrics = {}
    test = path.parent / "test_metrics.json"
    if test.is_file():
        summary = json.loads(test.read_text())
        metrics.update({f"test_{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    log = path.parent / "metrics.jsonl"
    if log.is_file():
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        last_val = next((r for r in reversed(records) if "val_top1" in r), None)
        metrics.update({k: v for k, v in (last_val or {}).items() if k.startswith("val_")})
    return data, recipe, metrics


def _list_name(value) -> str:
    """The file names of a comma-separated list of files, with their line counts (no local folders in a card)."""
    out = []
    for part in str(value).split(","):
        path = Path(part)
        lines = sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else None
        out.append(path.name + (f" ({lines} lines)" if lines is not None else ""))
    return ", ".join(out)


def _table(rows: dict) -> str:
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows.items())


def model_card(config: dict, run=None) -> str:
    """The ``README.md`` of a saved folder: YAML header, the model, and the run's data, recipe and metrics."""
    kind, arch = config[CONFIG_KEY], config["architecture"]
    tags = "\n".join(f"- {t}" for t in ("vmae2", "videomae", "video", kind))
    header = f"---\nlibrary_name: vmae2\ntags:\n{tags}\n" + (
        "pipeline_tag: video-classification\n" if kind == "classification" else "") + "---\n"
    model = {"kind": kind, "size": config.get("size") or "custom", "patch size": arch["patch_size"],
             "width": arch["embed_dim"], "depth": arch["depth"], "heads": arch["num_heads"],
             "MLP width": int(arch["embed_dim"] * arch["mlp_ratio"]), "frames": config["num_frames"],
             "input size": config["img_size"], "tubelet": config["tubelet_size"]}
    if kind == "classification":
        model["classes"] = config["num_classes"]
    else:
        model["decoder"] = f"{config['decoder_depth']} blocks, width {arch['decoder_embed_dim']}"
    data, recipe, metrics = _run_summary(run)
    parts = [header, "# VideoMAE V2 model (vmae2)\n\n", _table(model)]
    for title, rows in (("Data", data), ("Recipe", recipe), ("Metrics", metrics)):
        if rows:
            parts += [f"\n## {title}\n\n", _table(rows)]
    parts.append("\n## Use\n\n```python\nfrom vmae2.hub import from_pretrained\n\nmodel = from_pretrained(\"FOLDER_OR_"
                 "REPO_ID\")  # video [B, 3, T, H, W], ImageNet-normalised\n```\n")
    return "".join(parts)
