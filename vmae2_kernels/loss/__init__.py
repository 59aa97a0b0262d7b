"""The fused reconstruction loss: ``recon_loss`` and its gradient ``recon_loss_backward`` (per-patch targets made from
the video, never materialised).

- :mod:`.reference`: the plain-torch references and the targets (``patchify``, ``TARGETS``, ``recon_target``);
- :mod:`.checks`: the input checks :mod:`vmae2_kernels.ops` runs before dispatch;
- :mod:`.tiles`: the one fixed launch configuration;
- :mod:`.triton_kernels`: the Triton kernels and their launchers (imported only when Triton is importable);
- :mod:`.api`: the public function (target names, masks or weights, images).
"""
