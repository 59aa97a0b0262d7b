"""``python -m vmae2.extract``: windowed clip features of videos, official ``extract_tad_feature.py`` layout (TAD).

``--preset thumos14`` (16 consecutive frames per window, a window every 4 frames, frames scaled to [0, 1] and
resized to 224x224, no ImageNet normalisation: the official tool's transform) or ``--preset fineaction`` (a window
every 16 frames); ``--window/--stride/--frame_stride/--input_size/--normalize`` change them. A vmae2 run's
``config.json`` beside ``--weights`` gives the model, window, input size, frame stride (its ``sampling_rate``) and
ImageNet normalisation (vmae2 training normalises every clip). ``--weights`` may also be a ``transformers``
VideoMAE folder (classifier or pretraining model; :mod:`vmae2.transformers_io`), whose config gives the
architecture. Input: a folder of videos (class folders included) or
a list in any format the training commands read (``python -m vmae2.data.make_lists`` writes them), or one video path
a line. Output per video ``OUT/<path under the folder, extension dropped>.npy``, float32 ``[num_windows, C]``
(``fc_norm`` of the mean token, official) or ``[num_windows, N, C]`` with ``--tokens``; ``manifest.json`` and
``failed.tsv`` beside them, kept up to date across runs into ``OUT``. The run itself is
:func:`vmae2.runs.extract.run`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from vmae2.cli import Command, check_fields, count, entry, opt, refuse
from vmae2.models.configs import FINETUNE_NAMES, POOLS, model_config
from vmae2.training import rundir

PRESETS = {"thumos14": {}, "fineaction": {"stride": 16}}  # the field defaults are the official THUMOS14 settings


@dataclass
class ExtractConfig:
    """Feature extraction (``python -m vmae2.extract``)."""

    model: str = opt("vit_giant_patch14_224", "classification architecture whose forward_features gives the features "
                                              "(official: vit_giant_patch14_224, its K710 fine-tuned weights)")
    weights: str | None = opt(None, "official .pth (fine-tuned, or pretraining: the encoder), vmae2 .safetensors, "
                                    "keys under any wrapper prefix (model., module., backbone., ...); or a "
                                    "transformers VideoMAE folder or its Hub id (its config gives the architecture)", path=True, hub=True)
    data_path: str | None = opt(None, "a folder of videos (subfolders too: class folders), or a list: pretrain.txt / "
                                      "train.csv of python -m vmae2.data.make_lists, any list the training commands "
                                      "read, or one video path a line", path=True)
    data_root: str = opt("", "prefix for relative paths in the list")
    output_dir: str = opt("output/features", "where <video>.npy (subfolders mirrored), manifest.json and failed.tsv "
                                             "go")
    window: int = count(16, "frames per window (the model's num_frames)")
    stride: int = count(4, "frames between window starts (THUMOS14 4, FineAction 16)")
    frame_stride: int = count(1, "frames between a window's frames (official: 1, consecutive; a vmae2 run: its "
                                 "sampling_rate)")
    input_size: int = count(224, "frames resized to this square size (aspect not kept, official)")
    normalize: bool = opt(False, "ImageNet mean/std after the resize (the official tool does not; a vmae2 run "
                                 "does)")
    tokens: bool = opt(False, "save per-token features [num_windows, N, C] instead of the pooled [num_windows, C]")
    pool: str = opt("mean", "how the tokens are pooled: mean (official) or mean_motion (a vmae2 run fine-tuned with "
                            "--pool mean_motion: C = 2 x embed_dim)", choices=tuple(POOLS))
    batch_size: int | None = count(None, "windows per model call (default: 8 on CPU, sized to free memory on GPU)")
    num_workers: int = opt(2, "decoding worker processes (0: decode in the main process)", ">= 0")
    precision: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU), bf16 (on a CPU with AMX: bf16 matmuls, about "
                         "2.5x the fp32 model speed), fp16, fp32", choices=("auto", "bf16", "fp16", "fp32"))
    attn_backend: str = opt("auto", "attention backend: auto, flash, xformers, sdpa, math")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")

    def validate(self):
        for name in ("weights", "data_path"):
            if getattr(self, name) is None:
                raise ValueError(f"--{name} is required")
        if self.model not in FINETUNE_NAMES:
            refuse("model", self.model, f"choose a classification model: {sorted(FINETUNE_NAMES)}")
        check_fields(self)
        if self.window % 2:
            refuse("window", self.window, "must be even (the models embed tubelets of 2 frames)")
        if self.input_size % model_config(self.model).patch_size:
            refuse("input_size", self.input_size, f"must be a multiple of the patch size "
                                                  f"{model_config(self.model).patch_size}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            refuse("device", self.device, "auto, cpu, cuda or cuda:N")
        if os.path.isfile(self.output_dir):
            refuse("output_dir", self.output_dir, "must be a folder")
        return self

    def preset_name(self) -> str:
        """The preset these options equal, or ``custom``."""
        base = {"stride": 4, "window": 16, "frame_stride": 1, "input_size": 224, "normalize": False}
        for name, values in PRESETS.items():
            if all(getattr(self, k) == v for k, v in {**base, **values}.items()):
                return name
        return "custom"


EXTRACT = Command("python -m vmae2.extract", "Windowed clip features of videos (official extract_tad_feature.py "
                  "layout): one .npy per video, resumable, bad videos listed and skipped. Precedence: defaults < "
                  "--preset < --config < flags; a vmae2 run's config.json beside --weights gives the model, window, "
                  "input size, frame stride and normalisation.", ExtractConfig, PRESETS, "thumos14",
                  "thumos14 (a window every 4 frames) or fineaction (every 16)", rundir.extract_values)


main = entry(EXTRACT, "vmae2.runs.extract:run")


if __name__ == "__main__":
    raise SystemExit(main())
