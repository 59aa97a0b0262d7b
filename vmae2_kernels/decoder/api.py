"""The decoder input as a codebase calls it: ``num_prefix`` rows, ``dec_ids=None`` (every other token), the
``concat`` and ``ordered`` layouts."""
from __future__ import annotations

import torch

from vmae2_kernels import checks, ops
from vmae2_kernels.decoder.checks import decoder_tokens
from vmae2_kernels.gather.api import with_prefix
from vmae2_kernels.masks.api import complement_ids


LAYOUTS = ("concat", "ordered")


def decoder_input(x_vis: torch.Tensor, vis_ids: torch.Tensor, dec_ids: torch.Tensor | None, mask_token: torch.Tensor,
                  pos: torch.Tensor, *, num_prefix: int = 0, num_tokens: int | None = None, layout: str = "concat",
                  backend: str = "auto") -> torch.Tensor:
    """The whole decoder sequence, ``[x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]``, in one launch.

    ``x_vis [B, Nv, D]``, ``vis_ids [B, Nv]``, ``dec_ids [B, Nd]``, ``mask_token`` (D elements), ``pos [N, D]``
    -> ``[B, Nv + Nd, D]`` in the promoted dtype of the three inputs (fp32 for an fp32 table, as the official
    decoder). Gradients flow to ``x_vis``, ``mask_token`` (and a learnable ``pos``).

    - ``dec_ids=None``: every token not in ``vis_ids`` (:func:`complement_ids`; MAE and VideoMAE v1), ``Nd = N - Nv``.
    - ``num_tokens``: ``N`` (the token grid, ``T'H'W'``), checked against the table's rows (``P + N``); None: ``N``
      is the table's rows less ``num_prefix``, so pass it when the table may carry a cls row.
    - ``num_prefix = P``: ``x_vis [B, P + Nv, D]`` starts with cls/register rows; they come first, plus the table's
      first ``P`` rows (``pos [P + N, D]`` or ``[1, P + N, D]``); the ids index the ``N`` other tokens.
    - ``layout="concat"`` (default): ``[prefix | visible in vis_ids order | mask tokens in dec_ids order]``. Rows
      carry their position only through ``pos``, so this is right for a permutation-equivariant decoder (plain
      attention and MLP blocks, no relative-position bias or windowing), whose outputs just follow the rows; the
      official VideoMAE V2 decoder is one.
    - ``layout="ordered"``: the rows after the prefix sorted by token id ``(t, h, w)`` (a token in both ids: its
      visible row first): row ``P + r`` holds concat row ``P + order[:, r]``, ``order = argsort(cat([vis_ids,
      dec_ids], 1), stable=True)`` (mask-token rows: ``order >= Nv``). With ``dec_ids=None`` it is the full
      ``[B, P + N, D]`` grid, a mask token at every non-visible position: MAE's un-shuffled sequence, for decoders
      that reshape to ``[B, T, HW, D]``. Costs one more row copy (a :func:`token_gather` of the concat layout).
    """
    B, L, D = checks.check_rows(x_vis, "x_vis", "[B, P + Nv, D]")
    checks.check_prefix(num_prefix, L, "x_vis")
    checks.check_ids(vis_ids, B, "vis_ids", x_vis, L - num_prefix)
    N = decoder_tokens(pos, D, num_prefix, num_tokens, L - num_prefix)
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is unknown; choose one of {LAYOUTS}")
    if dec_ids is None:
        dec_ids = complement_ids(vis_ids, N)
    if num_prefix:
        checks.check_ids(dec_ids, B, "dec_ids", x_vis)
        checks.check_ids_values(vis_ids, N, "vis_ids")
        checks.check_ids_values(dec_ids, N, "dec_ids")
        vis_ids, dec_ids = with_prefix(vis_ids, num_prefix), dec_ids + num_prefix
    out = ops.decoder_input(x_vis, vis_ids, dec_ids, mask_token, pos, backend)
    if layout == "ordered":  # the prefix ids 0..P-1 are the smallest: the prefix rows stay first
        order = torch.argsort(torch.cat([vis_ids, dec_ids], 1), dim=1, stable=True)
        out = ops.token_gather(out, order, None, backend)
    return out
