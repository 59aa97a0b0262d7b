"""``python -m vmae2.finetune``: supervised post-pre-training and fine-tuning of VideoMAE V2 classifiers.

Progressive training: pretrain (``python -m vmae2.train``), then post-pre-train on a mixed labeled set (K710:
``--data_path k400.csv,k600.csv,k700.csv --label_maps k400.txt,k600.txt,k700.txt``), then fine-tune on the
target set (``--init`` the K710 checkpoint, ``--init_head_index label_710to400.json``). Official recipe:
layer-wise lr decay, AdamW, warm-up + cosine, RandAugment, random erasing, mixup/cutmix with label smoothing,
repeated sampling, gradient accumulation; per-epoch validation (best weights kept) and multi-view testing.

With no arguments (``demo`` preset) it runs progressive training in miniature on generated still/moving videos:
MAE pretraining of the tiny model on the training clips, then fine-tuning and multi-view testing (a few minutes
on a CPU). Checkpoints are atomic and step-exact (``--resume auto``), like pretraining. The run itself is
:func:`vmae2.runs.finetune.run`.
"""
from __future__ import annotations

from vmae2.cli import entry
from vmae2.finetune_config import FINETUNE


main = entry(FINETUNE, "vmae2.runs.finetune:run")


if __name__ == "__main__":
    raise SystemExit(main())
