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

from vmae2.cli import cli
from vmae2.finetune_config import PREDICT


def main(argv: list[str] | None = None) -> int:
    return cli(PREDICT, argv, "vmae2.runs.predict:run")


if __name__ == "__main__":
    raise SystemExit(main())
