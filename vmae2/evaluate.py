"""``python -m vmae2.evaluate``: multi-view testing of a classification checkpoint (ours or official).

Each video gives ``test_num_segment x test_num_crop`` views (official 5x3 for Kinetics, 2x3 for SSv2); each
view's softmax is averaged per video (official ``merge``), then top-1/top-5, per-class accuracy and a
confusion matrix are reported. With ``torchrun`` every rank scores its share and the views are gathered and
de-duplicated before merging, so N processes give the numbers of one. Outputs in ``--output_dir``:
``test_metrics.json``, ``per_class.csv``, ``predictions.csv`` (video, label, top-5), ``confusion.png`` (with
matplotlib). The run itself is :func:`vmae2.runs.evaluate.run`.
"""
from __future__ import annotations

from vmae2.cli import cli
from vmae2.finetune_config import EVALUATE


def main(argv: list[str] | None = None) -> int:
    return cli(EVALUATE, argv, "vmae2.runs.evaluate:run")


if __name__ == "__main__":
    raise SystemExit(main())
