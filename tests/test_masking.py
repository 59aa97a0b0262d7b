import math

import pytest
import torch

from vmae2 import masking

GRID_B = (8, 14, 14)
GRID_G = (8, 16, 16)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("grid,ratio,visible", [(GRID_B, 0.9, 160), (GRID_B, 0.95, 80), (GRID_B, 0.75, 392),
                                                (GRID_G, 0.9, 208)])
def test_tube_counts(grid, ratio, visible):
    mask = masking.tube_mask(4, grid, ratio, generator=_gen())
    assert mask.shape == (4, math.prod(grid)) and mask.dtype == torch.bool
    assert ((~mask).sum(1) == visible).all()
    ids = masking.tube_ids(4, grid, ratio, generator=_gen())
    assert ids.shape == (4, visible)


def test_tube_is_a_tube_and_samples_differ():
    mask = masking.tube_mask(3, GRID_B, 0.9, generator=_gen()).reshape(3, 8, 196)
    assert (mask == mask[:, :1]).all()  # same spatial pattern in every temporal slice
    assert not torch.equal(mask[0], mask[1])


def test_ids_sorted_and_consistent_with_mask():
    ids = masking.tube_ids(5, GRID_B, 0.9, generator=_gen(3))
    assert (ids[:, 1:] > ids[:, :-1]).all()
    mask = masking.tube_mask(5, GRID_B, 0.9, generator=_gen(3))
    assert torch.equal(masking.ids_to_mask(ids, 1568), mask)
    assert torch.equal(masking.mask_to_ids(mask), ids)
    assert torch.equal(masking.mask_to_ids(mask, 160), ids)


def test_complement_ids():
    ids = masking.random_ids(3, (2, 4, 6), 0.6, generator=_gen())
    comp = masking.complement_ids(ids, 48)
    assert comp.shape == (3, 48 - ids.shape[1])
    assert (comp[:, 1:] > comp[:, :-1]).all()
    both = torch.cat([ids, comp], 1).sort(1).values
    assert torch.equal(both, torch.arange(48).expand(3, -1))


def test_reproducible_from_generator():
    a = masking.tube_mask(4, GRID_B, 0.9, generator=_gen(7))
    b = masking.tube_mask(4, GRID_B, 0.9, generator=_gen(7))
    c = masking.tube_mask(4, GRID_B, 0.9, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    r1 = masking.running_cell_mask(16, GRID_B, 0.5, generator=_gen(1))
    r2 = masking.running_cell_mask(16, GRID_B, 0.5, generator=_gen(1))
    assert torch.equal(r1, r2)


@pytest.mark.parametrize("ratio,kept", [(0.25, 1176), (0.5, 784), (0.75, 392)])
def test_running_cell_counts(ratio, kept):
    for phase in range(4):
        mask = masking.running_cell_mask(2, GRID_B, ratio, phase=phase)
        assert ((~mask).sum(1) == kept).all()
    assert masking.running_cell_num_kept(GRID_B, ratio) == kept
    assert masking.running_cell_ids(3, GRID_B, ratio, generator=_gen()).shape == (3, kept)
    assert masking.running_cell_num_kept(GRID_G, 0.5) == 1024


def test_running_cell_pattern_phase0():
    # ratio 0.5, phase 0: decoder-visible slots per temporal token are {TR, BL}, {TL, TR}, {TL, BR}, {BL, BR}.
    mask = masking.running_cell_mask(1, (5, 2, 2), 0.5, phase=0).reshape(5, 4)
    visible = [set(torch.nonzero(~row).flatten().tolist()) for row in mask]
    assert visible == [{1, 2}, {0, 1}, {0, 3}, {2, 3}, {1, 2}]


def test_running_cell_every_position_visible_twice_in_four_steps():
    mask = masking.running_cell_mask(1, (8, 14, 14), 0.5, phase=2).reshape(8, 196)
    for t in range(5):
        assert ((~mask[t:t + 4]).sum(0) == 2).all()
    assert ((~mask).sum(1) == 98).all()


def test_running_cell_phase_tensor_and_random_phases():
    phase = torch.tensor([0, 1, 2, 3])
    mask = masking.running_cell_mask(4, GRID_B, 0.5, phase=phase)
    for b in range(4):
        assert torch.equal(mask[b], masking.running_cell_mask(1, GRID_B, 0.5, phase=b)[0])
    drawn = masking.running_cell_mask(64, GRID_B, 0.5, generator=_gen())
    distinct = {tuple(row.nonzero().flatten()[:4].tolist()) for row in drawn}
    assert len(distinct) == 4  # all four phases occur


def test_random_and_frame_masks():
    mask = masking.random_mask(3, GRID_B, 0.9, generator=_gen())
    assert ((~mask).sum(1) == 1568 - int(0.9 * 1568)).all()
    assert not (mask.reshape(3, 8, 196) == mask.reshape(3, 8, 196)[:, :1]).all()  # not a tube
    fm = masking.frame_mask(4, GRID_B, 0.5, generator=_gen()).reshape(4, 8, 196)
    per_frame = fm.all(2) | (~fm).all(2)
    assert per_frame.all()  # whole slices only
    assert (fm.all(2).sum(1) == 4).all()
    ids = masking.decoder_ids("frame", 4, GRID_B, 0.5, generator=_gen())
    assert ids.shape == (4, 784) and (ids[:, 1:] > ids[:, :-1]).all()
    assert masking.decoder_ids("random", 2, GRID_B, 0.5, generator=_gen()).shape == (2, 784)
    assert masking.decoder_ids("run_cell", 2, GRID_B, 0.5, generator=_gen()).shape == (2, 784)


def test_device_argument():
    mask = masking.tube_mask(2, GRID_B, 0.9, device="cpu")
    assert mask.device.type == "cpu"
    gen = torch.Generator(device="cpu").manual_seed(0)
    assert masking.running_cell_ids(2, GRID_B, 0.5, generator=gen).device.type == "cpu"


@pytest.mark.parametrize("call,match", [
    (lambda: masking.running_cell_mask(2, GRID_B, 0.1), "0.1"),
    (lambda: masking.running_cell_mask(2, GRID_B, 0.6), "0.6"),
    (lambda: masking.running_cell_mask(2, (8, 7, 7), 0.5), "even"),
    (lambda: masking.running_cell_mask(2, GRID_B, 0.5, phase=4), "phase 4"),
    (lambda: masking.tube_mask(2, GRID_B, 1.0), "1.0"),
    (lambda: masking.tube_mask(2, GRID_B, -0.1), "-0.1"),
    (lambda: masking.tube_mask(2, (8, 14), 0.9), "grid"),
    (lambda: masking.decoder_ids("cube", 2, GRID_B, 0.5), "cube"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_unequal_visible_counts_rejected():
    mask = masking.tube_mask(2, GRID_B, 0.9, generator=_gen())
    mask[0, mask[0].nonzero()[0]] = False  # sample 0 now keeps one token more
    with pytest.raises(ValueError, match="same number"):
        masking.mask_to_ids(mask)
