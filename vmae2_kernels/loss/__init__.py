"""The fused reconstruction loss ``recon_loss`` and its gradient ``recon_loss_backward``: per-patch targets made
from the video, never materialised. Modules: ``reference`` (with ``patchify``, ``TARGETS``, ``recon_target``),
``checks``, ``tiles``, ``triton_kernels``, ``api`` (docs/kernels.md, "Where an op lives")."""
