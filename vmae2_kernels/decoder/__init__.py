"""The decoder input, ``[x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]`` in one launch, and its mask-token
gradient ``mask_token_grad``. Modules: ``reference``, ``checks``, ``triton_kernels`` (launched with the row-copy
tiles, :data:`vmae2_kernels.tiles.ROW_TILES`), ``api`` (docs/kernels.md, "Where an op lives")."""
