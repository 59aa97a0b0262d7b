"""Token and tubelet gathers (row copies): ``token_gather``, ``token_scatter``, ``tubelet_gather``, and
``patch_embed`` built on the tubelet gather. Modules: ``reference``, ``checks``, ``tiles`` (the tubelet gather's; the
row copies use :data:`vmae2_kernels.tiles.ROW_TILES`), ``triton_kernels``, ``api`` (docs/kernels.md, "Where an op
lives")."""
