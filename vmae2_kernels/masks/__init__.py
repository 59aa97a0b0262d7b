"""Mask ids: the ops ``tube_ids`` and ``running_cell_ids``, and the plain-torch ``random_ids``, ``mask_to_ids``,
``complement_ids``, ``restore_ids``, ``ids_to_mask`` and keep counts. Modules: ``reference``, ``checks``, ``tiles``,
``triton_kernels``, ``api`` (the public builders; docs/kernels.md, "Where an op lives")."""
