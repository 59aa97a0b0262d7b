"""Video data: list formats, generated clips, the DALI and PyTorch pipelines, bad-file handling.

Pretraining (:mod:`vmae2.data.pretraining`): :func:`read_list` / :class:`MixedList` (lists), :func:`make_videos`
(generated clips), :class:`PretrainLoader` (batches ``[B * num_sample, 3, T, 224, 224]``), ``python -m
vmae2.data.check LIST``.
Fine-tuning and testing (:mod:`vmae2.data.classification`): :class:`ClassifyLoader` (labeled clips, multi-view
test batches), :mod:`vmae2.data.classification.augment` (RandAugment, erasing, mixup/cutmix),
:mod:`vmae2.data.labels` (label maps, K710 merge, head conversion), :func:`make_labeled_videos` (generated motion
classes).

The names below load their module on first use (PEP 562), so a data entry point (``python -m vmae2.data.make_lists``)
answers ``--help`` without importing torch.
"""
import importlib

_MODULES = {
    "classification.loader": ("ClassifyConfig", "ClassifyLoader", "LabeledBatch"),
    "pretraining.clips": ("ClipConfig", "ClipSource"),
    "decode": ("BadVideo", "VideoInfo", "probe"),
    "labels": ("LabelMap", "merge_labeled_lists"),
    "lists": ("MixedList", "VideoRecord", "read_finetune_csv", "read_list", "read_pretrain_list"),
    "pretraining.loader": ("Batch", "PretrainLoader", "dali_available"),
    "pretraining.sampling": ("ClipPlan", "Crop", "plan_clip"),
    "synthetic": ("make_bad_files", "make_labeled_videos", "make_videos"),
    "telemetry": ("BadFileLedger", "Telemetry"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'vmae2.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vmae2.data.{_HOME[name]}"), name)
