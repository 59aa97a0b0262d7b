"""The decoder input: ``decoder_input`` (``[x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]`` in one launch) and its
mask-token gradient ``mask_token_grad``.

- :mod:`.reference`: the plain-torch references (the specification);
- :mod:`.checks`: the input checks :mod:`vmae2_kernels.ops` runs before dispatch;
- launch configuration: the row-copy tiles, :data:`vmae2_kernels.tiles.ROW_TILES` (the mask-token sum has one fixed
  configuration, in its launcher);
- :mod:`.triton_kernels`: the Triton kernels and their launchers (imported only when Triton is importable);
- :mod:`.api`: the public function (``num_prefix``, ``dec_ids=None``, the ``ordered`` layout).
"""
