"""The official VideoMAE V2 pretraining semantics, stated once, for the tests and the benchmarks.

Written only from the behaviour described in the project's reference notes on the official VideoMAE V2 code; it
does not import or mirror vmae2's model or loss code (``model.official_from_vmae2`` only reads a vmae2 model's
architecture and weights). Modules, one job each:

* :mod:`.masks`: the tube and running-cell generators (numpy) and the engine's mask batching;
* :mod:`.loss`: patchify, the normalised targets and the weighted loss;
* :mod:`.functional`: the forward as functions of an official-format ``state_dict`` (with mutation switches);
* :mod:`.model`: the same forward as an ``nn.Module`` with the official parameter names (the step baseline);
* :mod:`.engine`: the official parameter groups, gradient norm and training step;
* :mod:`.augmentations`: the fine-tuning augmentations, timm 0.4.12's own modules loaded from their files;
* :mod:`.extract`: ``extract_tad_feature.py``'s per-window procedure (imported by its users, needs PyAV).

Conventions (as in the official code): masks ``[B, N]`` bool, True = masked / dropped; ids ascending; tokens
flattened ``n = t*H'*W' + h*W' + w``, i.e. ``(t, h, w)`` order; target features ``(p0 p1 p2 c)``.
"""
from .engine import (PRECISIONS, OfficialStep, autocast_for, official_optimizer, official_param_groups,
                     total_grad_norm)
from .loss import (EPS, IMAGENET_MEAN, IMAGENET_STD, TUBELET, decoded, official_loss, official_targets, to_patches,
                   weighted_mse)
from .masks import RunningCellGenerator, TubeGenerator, batch_masks, visible_ids
from .model import OfficialPretrainModel, official_from_vmae2
from .functional import (LN_EPS, OFFICIAL_SIZES, OfficialPretrainOracle, Variant, attention, mlp, official_key_set,
                     sinusoid_table)

__all__ = ["PRECISIONS", "OfficialStep", "autocast_for", "official_optimizer", "official_param_groups",
           "total_grad_norm", "EPS", "IMAGENET_MEAN", "IMAGENET_STD", "TUBELET", "decoded", "official_loss",
           "official_targets", "to_patches", "weighted_mse", "RunningCellGenerator", "TubeGenerator", "batch_masks",
           "visible_ids", "OfficialPretrainModel", "official_from_vmae2", "LN_EPS", "OFFICIAL_SIZES",
           "OfficialPretrainOracle", "Variant", "attention", "mlp", "official_key_set", "sinusoid_table"]
