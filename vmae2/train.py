"""``python -m vmae2.train``: VideoMAE V2 dual-masking pretraining, from a CPU demo to ``torchrun`` on many nodes.

With no arguments (the ``demo`` preset) it pretrains the vmae2-only tiny model on generated videos (cached) for
a few minutes and leaves checkpoints, ``metrics.jsonl``, ``model.safetensors`` and ``reconstruction.png`` (with
matplotlib, ``pip install vmae2[plot]``) in ``output/demo``. ``--preset vit_g_hybrid_pt --data_path LIST`` runs the
official recipe (with ``torchrun`` for many GPUs). ``--help`` lists every option. The run itself is
:func:`vmae2.runs.pretrain.run`.
"""
from __future__ import annotations

from vmae2.cli import PRETRAIN, cli


def main(argv: list[str] | None = None) -> int:
    return cli(PRETRAIN, argv, "vmae2.runs.pretrain:run")


if __name__ == "__main__":
    raise SystemExit(main())
