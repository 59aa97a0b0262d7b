"""Fine-tuning / test sampling (vmae2.data.classification.sampling) against plain re-statements of the official
dataset code."""
import numpy as np
import pytest
import torch

from vmae2.data.classification.sampling import (
    crop_starts,
    dense_ids,
    short_side_resize,
    sparse_ids,
    sparse_test_ids,
    spatial_views,
    temporal_windows,
)


def official_dense(n, clip_len, rate, end=None):
    """``VideoClsDataset.loadvideo_decord`` (one segment) as described in the reference, §6.5."""
    converted = clip_len * rate
    if n <= converted:
        index = np.linspace(0, n, num=n // rate)
        index = np.concatenate((index, np.ones(clip_len - n // rate) * n))
        return np.clip(index, 0, n - 1).astype(np.int64)
    end = (converted + n) // 2 if end is None else end
    index = np.linspace(end - converted, end, num=clip_len)
    return np.clip(index, end - converted, end - 1).astype(np.int64)


@pytest.mark.parametrize("n", [65, 100, 301, 64, 40, 17])
def test_dense_matches_the_official_formula(n):
    np.testing.assert_array_equal(dense_ids(n, 16, 4), official_dense(n, 16, 4))
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = dense_ids(n, 16, 4, np.random.default_rng(rng.integers(1 << 30)))
        assert len(ids) == 16 and ids.min() >= 0 and ids.max() < n and np.all(np.diff(ids) >= 0)
        if n > 64:  # the window spans 64 frames ending at a uniform end in [64, n)
            end = ids[0] + 64
            np.testing.assert_array_equal(ids, official_dense(n, 16, 4, end))


def test_dense_training_ends_cover_the_video():
    ends = {int(dense_ids(80, 16, 4, np.random.default_rng(s))[0]) + 64 for s in range(400)}
    assert ends == set(range(64, 80))


def official_sparse(n, clip_len, mode, offsets=None, chunk=0, num_chunks=1):
    """V2 ``RawFrameClsDataset`` frame choice (train offsets given explicitly), re-stated."""
    if mode == "test":
        tick = n / float(clip_len)
        return [int(chunk * tick / num_chunks + tick * x) for x in range(clip_len)]
    avg = n // clip_len
    if avg > 0:
        add = [avg // 2] * clip_len if mode == "validation" else offsets
        return [k * avg + a for k, a in zip(range(clip_len), add)]
    return [0] * (clip_len - n) + list(range(n))


@pytest.mark.parametrize("n", [50, 48, 16, 17, 10])
def test_sparse_sampling_is_the_official_v2_rule(n):
    np.testing.assert_array_equal(sparse_ids(n, 16), official_sparse(n, 16, "validation"))
    for s in range(10):
        ids = sparse_ids(n, 16, np.random.default_rng(s))
        if n >= 16:
            avg = n // 16
            offsets = ids - np.arange(16) * avg
            assert offsets.min() >= 0 and offsets.max() < avg  # one uniform frame per segment
            np.testing.assert_array_equal(ids, official_sparse(n, 16, "train", offsets))
        else:
            np.testing.assert_array_equal(ids, official_sparse(n, 16, "train"))
    for chunk in range(2):
        np.testing.assert_array_equal(sparse_test_ids(n, 16, chunk, 2), official_sparse(n, 16, "test", None, chunk, 2))


def test_test_windows_and_crops_follow_the_official_starts():
    wins = temporal_windows(40, 16, 5)
    assert [int(w[0]) for w in wins] == [int(k * 24 / 4) for k in range(5)]
    assert all(len(w) == 16 and np.all(np.diff(w) == 1) for w in wins)
    short = temporal_windows(10, 16, 2)  # shorter than a clip: repeat the last frame
    assert all(w.max() == 9 and len(w) == 16 for w in short)
    assert temporal_windows(40, 16, 1)[0][0] == 12  # one window: centred
    assert crop_starts(298, 224, 3) == [0, 37, 74]
    assert crop_starts(298, 224, 1) == [37]


def test_spatial_views_shapes_and_positions():
    t, h, w = 4, 40, 60
    frames = torch.arange(w, dtype=torch.uint8).view(1, 1, w, 1).expand(t, h, w, 3).contiguous()
    views = spatial_views(frames, 32, 32, 3)
    assert len(views) == 3 and all(v.shape == (3, t, 32, 32) for v in views)
    resized = short_side_resize(frames.permute(0, 3, 1, 2), 32)
    assert resized.shape[-2:] == (32, 48)  # int(32 * 60 / 40)
    # left, middle and right crops of the resized frame (column values increase left to right)
    firsts = [float(v[0, 0, 0, 0]) for v in views]
    assert firsts[0] < firsts[1] < firsts[2]
    with pytest.raises(ValueError, match="short_side_size"):
        spatial_views(frames, 64, 32, 1)
