"""Mask ids: ``tube_ids``, ``running_cell_ids`` (ops with kernels), ``random_ids``, ``mask_to_ids``, ``complement_ids``,
``restore_ids``, ``ids_to_mask`` and the keep counts (plain torch, sync-free).

- :mod:`.reference`: the plain-torch references of the two ops (the specification);
- :mod:`.checks`: the grid, ratio and op-input checks;
- :mod:`.tiles`: the tube kernel's launch sizes;
- :mod:`.triton_kernels`: the Triton kernels and their launchers (imported only when Triton is importable);
- :mod:`.api`: the public builders (batch size, grid, ratio, generator -> kept ids).
"""
