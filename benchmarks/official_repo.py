"""The unmodified official model code, loaded from a VideoMAE V2 checkout the user points at (nothing is copied).

``load_official_model(repo, vmae2_model)`` imports ``repo/models/modeling_pretrain.py`` as it is and builds the
official ``PretrainVisionTransformer`` of the vmae2 model's architecture, holding its weights (the keys are the
official ones: ``strict=True``). The official files import ``timm.models.layers`` and ``timm.models.registry``
(timm 0.4.12); ``import timm`` itself needs torchvision, so when it fails the two subpackages are imported from
timm's own files under empty ``timm`` / ``timm.models`` parents (timm's code runs unchanged).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch


def _timm_layers() -> None:
    """Make ``timm.models.layers`` and ``timm.models.registry`` importable, with or without torchvision."""
    try:
        importlib.import_module("timm.models.layers")
        importlib.import_module("timm.models.registry")
        return
    except ImportError:
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the official model code needs timm (pip install timm==0.4.12 --no-deps)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, path in (("timm", root), ("timm.models", root / "models")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    importlib.import_module("timm.models.layers")
    importlib.import_module("timm.models.registry")


def official_module(repo: str | Path):
    """``models.modeling_pretrain`` of the checkout ``repo`` (imported once, as the package ``models``)."""
    repo = Path(repo).resolve()
    source = repo / "models" / "modeling_pretrain.py"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: pass the root of an OpenGVLab/VideoMAEv2 checkout")
    _timm_layers()
    loaded = sys.modules.get("models")
    if loaded is not None and Path(loaded.__path__[0]).resolve() != repo / "models":
        raise RuntimeError(f"another package named 'models' is already imported ({loaded.__path__[0]})")
    if loaded is None:  # the checkout's models/ imported as the package ``models`` (its own relative imports)
        spec = importlib.util.spec_from_file_location("models", repo / "models" / "__init__.py",
                                                      submodule_search_locations=[str(repo / "models")])
        package = importlib.util.module_from_spec(spec)
        sys.modules["models"] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules["models"]
            raise
    return importlib.import_module("models.modeling_pretrain")


def load_official_model(repo: str | Path, model, name: str) -> torch.nn.Module:
    """The official builder ``name`` (e.g. ``pretrain_videomae_small_patch16_224``) of the checkout, at ``model``'s
    frame count, tubelet and decoder depth, holding ``model``'s weights (a vmae2 pretraining model) on its device;
    ``patch_size`` / ``tubelet_size`` attributes added for the step, nothing else changed."""
    module = official_module(repo)
    pe = model.encoder.patch_embed
    if pe.img_size != 224:
        raise ValueError(f"the official builders fix img_size 224; this model takes {pe.img_size}")
    official = getattr(module, name)(all_frames=pe.num_frames, tubelet_size=pe.tubelet_size,
                                     decoder_depth=len(model.decoder.blocks),
                                     with_cp=model.encoder.use_checkpoint != "none")
    official.load_state_dict(model.state_dict(), strict=True)
    official.patch_size, official.tubelet_size = model.patch_size, model.tubelet_size
    return official.to(next(model.parameters()).device).train()
