"""Video data for pretraining: list formats, generated clips, the DALI and PyTorch pipelines, bad-file handling.

Main entry points: :func:`read_list` / :class:`MixedList` (lists), :func:`make_videos` (generated clips),
:class:`PretrainLoader` (batches ``[B * num_sample, 3, T, 224, 224]``), ``python -m vmae2.data.check LIST``.
"""
from vmae2.data.clips import ClipConfig, ClipSource
from vmae2.data.decode import BadVideo, VideoInfo, probe
from vmae2.data.lists import MixedList, VideoRecord, read_finetune_csv, read_list, read_pretrain_list
from vmae2.data.loader import Batch, PretrainLoader, dali_available
from vmae2.data.sampling import ClipPlan, Crop, plan_clip
from vmae2.data.synthetic import make_bad_files, make_videos
from vmae2.data.telemetry import BadFileLedger, Telemetry

__all__ = ["ClipConfig", "ClipSource", "BadVideo", "VideoInfo", "probe", "MixedList", "VideoRecord",
           "read_finetune_csv", "read_list", "read_pretrain_list", "Batch", "PretrainLoader", "dali_available",
           "ClipPlan", "Crop", "plan_clip", "make_bad_files", "make_videos", "BadFileLedger", "Telemetry"]
