"""Video data: list formats, generated clips, the DALI and PyTorch pipelines, bad-file handling.

Pretraining: :func:`read_list` / :class:`MixedList` (lists), :func:`make_videos` (generated clips),
:class:`PretrainLoader` (batches ``[B * num_sample, 3, T, 224, 224]``), ``python -m vmae2.data.check LIST``.
Fine-tuning and testing: :class:`ClassifyLoader` (labeled clips, multi-view test batches), :mod:`vmae2.data.augment`
(RandAugment, erasing, mixup/cutmix), :mod:`vmae2.data.labels` (label maps, K710 merge, head conversion),
:func:`make_labeled_videos` (generated motion classes).
"""
from vmae2.data.classify import ClassifyConfig, ClassifyLoader, LabeledBatch
from vmae2.data.clips import ClipConfig, ClipSource
from vmae2.data.decode import BadVideo, VideoInfo, probe
from vmae2.data.labels import LabelMap, merge_labeled_lists
from vmae2.data.lists import MixedList, VideoRecord, read_finetune_csv, read_list, read_pretrain_list
from vmae2.data.loader import Batch, PretrainLoader, dali_available
from vmae2.data.sampling import ClipPlan, Crop, plan_clip
from vmae2.data.synthetic import make_bad_files, make_labeled_videos, make_videos
from vmae2.data.telemetry import BadFileLedger, Telemetry

__all__ = ["ClassifyConfig", "ClassifyLoader", "LabeledBatch", "ClipConfig", "ClipSource", "BadVideo", "VideoInfo",
           "probe", "LabelMap", "merge_labeled_lists", "MixedList", "VideoRecord", "read_finetune_csv", "read_list",
           "read_pretrain_list", "Batch", "PretrainLoader", "dali_available", "ClipPlan", "Crop", "plan_clip",
           "make_bad_files", "make_labeled_videos", "make_videos", "BadFileLedger", "Telemetry"]
