"""``python -m vmae2.evaluate``: multi-view testing of a classification checkpoint (ours or official); ``--run DIR``
(a ``python -m vmae2.finetune`` output folder) needs nothing else.

Each video gives ``test_num_segment x test_num_crop`` views (official 5x3 for Kinetics, 2x3 for SSv2); each
view's softmax is averaged per video (official ``merge``), then top-1/top-5, per-class accuracy and a
confusion matrix are reported. With ``torchrun`` every rank scores its share and the views are gathered and
de-duplicated before merging, so N processes give the numbers of one. Outputs in ``--output_dir``:
``test_metrics.json``, ``per_class.csv``, ``predictions.csv`` (video, label, top-5), ``confusion.png`` (with
matplotlib). The run itself is :func:`vmae2.runs.evaluate.run`.
"""
from __future__ import annotations

from dataclasses import dataclass

from vmae2.cli import Command, entry, like, opt
from vmae2.finetune import WeightsConfig
from vmae2.training import rundir


@dataclass
class EvaluateConfig(WeightsConfig):
    """Multi-view testing of a classifier (``python -m vmae2.evaluate``)."""

    REQUIRED = ("model", "weights", "data_path", "nb_classes")
    data_path: str | None = like(None, "test list (official fine-tune CSV: `path label`, or `folder total_frames "
                                       "label`; with --run: the run's test list)")
    head_index: str | None = opt(None, "official label_710to{400,600,700}.json: evaluate a 710-class checkpoint on "
                                       "those classes", path=True)
    output_dir: str = like("output/evaluate", "where the report goes (default: output/evaluate; with --run: "
                                              "RUN/evaluate)")


EVALUATE = Command(
    "python -m vmae2.evaluate", __doc__.split("\n\n")[0], EvaluateConfig, inherit=rundir.evaluate_values)


main = entry(EVALUATE, "vmae2.runs.evaluate:run")


if __name__ == "__main__":
    raise SystemExit(main())
