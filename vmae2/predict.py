"""``python -m vmae2.predict --run DIR VIDEO...``: the top classes of videos, with their probabilities.

Each video gives the test protocol's views (``test_num_segment x test_num_crop``), their softmax is averaged (the
official merge, as ``python -m vmae2.evaluate``). ``--run DIR`` (a ``python -m vmae2.finetune`` output folder) gives
the model, classes, clip geometry, views and weights; or name them: ``--weights W --model M --nb_classes K``
(``--class_names FILE`` for names). ``--run`` also takes a ``transformers`` VideoMAE classifier folder (or a Hub
id, downloaded): its config gives the architecture, classes (``id2label``) and clip geometry, its
``preprocessor_config.json`` the short side; the frame sampling rate is not in such a folder (``--sampling_rate``).
``--format json`` prints one JSON object per video. The run itself is
:func:`vmae2.runs.predict.run`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from vmae2.cli import Command, count, entry, like, opt
from vmae2.finetune import WeightsConfig
from vmae2.training import rundir


@dataclass
class PredictConfig(WeightsConfig):
    """The classes of single videos (``python -m vmae2.predict``)."""

    videos: list[str] | None = opt(None, "video files", positional="VIDEO...")
    data_path: str | None = like(None, "a list of videos to predict too (the first column of each line is the path)")
    topk: int = count(5, "classes shown per video")
    format: str = opt("table", "table or json (one object per video: path, top classes and probabilities)",
                      choices=("table", "json"))
    batch_size: int = like(1, "videos per batch (each gives all its views)")
    num_workers: int | None = like(0, "data workers (0: decode in the main process)")

    def check(self) -> None:
        if not self.videos and not self.data_path:
            raise ValueError("give at least one VIDEO file: python -m vmae2.predict --run RUN VIDEO...")
        for video in self.videos or ():
            if not os.path.isfile(video):
                raise ValueError(f"VIDEO {video!r} does not exist; give the path of a video file")


PREDICT = Command(
    "python -m vmae2.predict", __doc__.split("\n\n")[0], PredictConfig, inherit=rundir.predict_values)


main = entry(PREDICT, "vmae2.runs.predict:run")


if __name__ == "__main__":
    raise SystemExit(main())
