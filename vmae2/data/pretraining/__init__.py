"""The pretraining pipeline: the official sampling plan of frames and crops (``sampling``), one list entry planned,
decoded and augmented with the bad-file policy (``clips``), and the batches from DALI (``dali``) or plain PyTorch
workers (``loader``)."""
