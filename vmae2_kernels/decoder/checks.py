"""Input checks of the decoder input, run by :mod:`vmae2_kernels.ops` (and the public function) before dispatch."""
from __future__ import annotations

from torch import Tensor

from vmae2_kernels.checks import check_device, check_ids, check_ids_values, check_prefix, check_rows, pos_rows, shape_of


def decoder_tokens(pos: Tensor, channels: int, num_prefix: int, num_tokens: int | None, num_visible: int) -> int:
    """``N``, the tokens of a decoder table ``pos`` of ``P + N`` rows (``P = num_prefix``), at least the
    ``num_visible`` ids; with ``num_tokens`` given the rows must be ``P + num_tokens`` (a cls row that ``num_prefix``
    does not count is refused, naming the table)."""
    rows = pos_rows(pos, None, channels).shape[0]
    check_prefix(num_prefix, rows, "pos")
    if num_tokens is not None and rows != num_prefix + num_tokens:
        raise ValueError(f"pos {shape_of(pos)} has {rows} rows; num_tokens={num_tokens} and num_prefix={num_prefix} "
                         f"need {num_prefix + num_tokens} (the prefix rows, then one per token): for a table whose "
                         f"first row is a cls token's, pass num_prefix=1 with x_vis starting with that token, or pass "
                         f"the table without it (pos[:, 1:])")
    if num_visible > rows - num_prefix:
        raise ValueError(f"vis_ids has {num_visible} ids per sample but pos {shape_of(pos)} with "
                         f"num_prefix={num_prefix} "
                         f"has rows for {rows - num_prefix} tokens")
    return rows - num_prefix


def check_decoder_input(x_vis: Tensor, vis_ids: Tensor, dec_ids: Tensor, mask_token: Tensor, pos: Tensor) -> None:
    B, Nv, D = check_rows(x_vis, "x_vis", "[B, Nv, D]")
    check_ids(vis_ids, B, "vis_ids", x_vis, Nv)
    check_ids(dec_ids, B, "dec_ids", x_vis)
    if mask_token.numel() != D:
        raise ValueError(f"mask_token must have D={D} elements, got {shape_of(mask_token)}")
    N = pos_rows(pos, None, D).shape[0]
    check_device(x_vis, mask_token=mask_token, pos=pos)
    check_ids_values(vis_ids, N, "vis_ids")
    check_ids_values(dec_ids, N, "dec_ids")


def check_mask_token_grad(grad: Tensor, num_visible: int) -> None:
    _, L, _ = check_rows(grad, "grad", "[B, L, D]")
    if not 0 <= num_visible <= L:
        raise ValueError(f"num_visible {num_visible} is out of range [0, {L}]")
