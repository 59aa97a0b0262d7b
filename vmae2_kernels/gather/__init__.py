"""Token and tubelet gathers (row copies): ``token_gather``, ``token_scatter``, ``tubelet_gather``, ``patch_embed``.

- :mod:`.reference`: the plain-torch references (the specification);
- :mod:`.checks`: the input checks :mod:`vmae2_kernels.ops` runs before dispatch;
- :mod:`.tiles`: the tubelet gather's launch configuration (the row copies use :data:`vmae2_kernels.tiles.ROW_TILES`);
- :mod:`.triton_kernels`: the Triton kernels and their launchers (imported only when Triton is importable);
- :mod:`.api`: the public functions (``num_prefix``, the masked patch embedding).
"""
