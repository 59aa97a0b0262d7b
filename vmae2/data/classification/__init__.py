"""The classification pipeline (fine-tuning, validation, multi-view testing): which frames and pixels a clip uses
(``sampling``, the official training and test views), the fine-tuning augmentations (``augment``) and the labeled
batches (``loader``)."""
