"""Fine-tuning building blocks: position-table resampling, layer-wise lr decay, checkpoint conversion, labeled
clips (vmae2.data.classification.loader)."""
import json

import numpy as np
import pytest
import torch

from oracle.tolerances import assert_close_fp
from vmae2.data.classification.augment import FinetuneAugment
from vmae2.data.classification.loader import ClassifyConfig, ClassifyLoader
from vmae2.data.lists import read_finetune_csv
from vmae2.models import create_model
from vmae2.models.layers import interpolate_pos_table, sinusoid_table
from vmae2.training.optim import layer_id, param_groups
from vmae2.weights import PRETRAIN_ONLY, load_classifier_weights

# -- position embedding ---------------------------------------------------------------------------------------


def coordinate_table(grid):
    """A table whose features are the token's (t, h, w) coordinates: resampling must move them, not mix them."""
    t, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid), indexing="ij")
    return torch.stack([t, h, w], dim=-1).reshape(-1, 3)


def test_pos_table_same_grid_is_the_official_table():
    table = sinusoid_table(8 * 14 * 14, 96)
    assert torch.equal(interpolate_pos_table(table, (8, 14, 14), (8, 14, 14)), table)  # same grid: a copy
    model = create_model("vit_tiny_patch16_224", num_classes=3, pos_embed_grid=(8, 14, 14))
    assert torch.equal(model.pos_embed, sinusoid_table(1568, 192))  # the same function rerun: bit-exact


@pytest.mark.parametrize("src,dst", [((8, 14, 14), (16, 14, 14)), ((8, 14, 14), (4, 14, 14)),
                                     ((4, 8, 8), (4, 4, 4)), ((4, 8, 8), (8, 12, 12))])
def test_pos_table_resampling_keeps_token_order(src, dst):
    """Each new token must hold the source coordinate of its centre, ``(i + 0.5) * n_src / n_dst - 0.5``:
    exactly along time (linear interpolation reproduces a linear function), within the small overshoot of
    PyTorch's bicubic kernel (a = -0.75) in space, and each coordinate may depend only on its own axis."""
    out = interpolate_pos_table(coordinate_table(src), src, dst).reshape(*dst, 3)
    for axis in range(3):
        n_src, n_dst = src[axis], dst[axis]
        expect = (torch.arange(n_dst, dtype=torch.float64) + 0.5) * n_src / n_dst - 0.5
        inner = (expect >= 1) & (expect <= n_src - 2) if axis else (expect >= 0) & (expect <= n_src - 1)
        got = out[..., axis].movedim(axis, 0).reshape(n_dst, -1)
        assert_close_fp(got, got[:, :1].expand_as(got))  # constant across the other axes (fp64 resampling)
        if axis == 0:  # linear interpolation of a linear function: fp64 rounding only
            assert_close_fp(got[inner, 0], expect[inner], msg="time")
        else:  # not a rounding error: the overshoot of the bicubic kernel
            assert torch.allclose(got[inner, 0], expect[inner], atol=0.06), axis
        assert torch.all(torch.diff(got[:, 0]) >= 0) if n_dst > 1 else True


def test_finetune_model_on_more_frames_uses_the_pretraining_table():
    model = create_model("vit_tiny_patch16_224", num_classes=3, num_frames=32, img_size=64, pos_embed_grid=(8, 4, 4))
    src = sinusoid_table(8 * 16, 192).reshape(8, 16, 192)
    new = model.pos_embed.reshape(16, 16, 192)
    assert_close_fp(new[0], src[0])  # the ends map onto the ends
    assert_close_fp(new[-1], src[-1])
    assert_close_fp(new[1], 0.75 * src[0] + 0.25 * src[1])  # centre 1.5/2 - 0.5 = 0.25
    with pytest.raises(ValueError, match="pos_embed_grid"):
        create_model("vit_tiny_patch16_224", pos_embed_grid=(8, 14))


# -- layer-wise lr decay ---------------------------------------------------------------------------------------

def test_layer_decay_follows_the_official_assigner():
    model = create_model("vit_tiny_patch16_224", num_classes=5)  # depth 4
    assert layer_id("patch_embed.proj.weight", 4) == 0 and layer_id("blocks.2.mlp.fc1.weight", 4) == 3
    assert layer_id("fc_norm.weight", 4) == 5 and layer_id("head.bias", 4) == 5
    groups = param_groups(model, 0.05, layer_decay=0.75)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            seen.add(name)
            assert g["lr_scale"] == pytest.approx(0.75 ** (5 - layer_id(name, 4)))
            no_decay = p.ndim <= 1 or name.endswith(".bias")
            assert g["weight_decay"] == (0.0 if no_decay else 0.05)
    assert seen == set(names.values())
    plain = param_groups(model, 0.05)
    assert len(plain) == 2 and all(g["lr_scale"] == 1.0 for g in plain)


# -- checkpoints -------------------------------------------------------------------------------------------------

def test_pretraining_checkpoint_becomes_a_classifier(tmp_path):
    torch.manual_seed(0)
    pre = create_model("pretrain_videomae_tiny_patch16_224", img_size=64, num_frames=4)
    path = tmp_path / "pretrain.pth"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in pre.state_dict().items()}}, path)
    clf = create_model("vit_tiny_patch16_224", num_classes=7, img_size=64, num_frames=4)
    head = clf.head.weight.detach().clone()
    report = load_classifier_weights(clf, str(path))
    assert torch.equal(clf.blocks[3].mlp.fc2.weight, pre.encoder.blocks[3].mlp.fc2.weight)
    assert torch.equal(clf.patch_embed.proj.weight, pre.encoder.patch_embed.proj.weight)
    assert torch.equal(clf.head.weight, head)  # fresh head, official init scale
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert report.dropped and all(k.startswith(PRETRAIN_ONLY) for k in report.dropped)


def test_official_finetune_state_dict_loads_strict_and_round_trips(tmp_path):
    torch.manual_seed(1)
    a = create_model("vit_tiny_patch16_224", num_classes=10, img_size=64, num_frames=4)
    sd = a.state_dict()
    assert "fc_norm.weight" in sd and "head.weight" in sd and not any(k.startswith("norm.") for k in sd)
    torch.save({"module": sd}, tmp_path / "official.pth")  # DeepSpeed-style wrapper key
    b = create_model("vit_tiny_patch16_224", num_classes=10, img_size=64, num_frames=4)
    report = load_classifier_weights(b, str(tmp_path / "official.pth"), strict=True)
    assert not report.missing and not report.unexpected
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in sd.items())
    x = torch.randn(2, 3, 4, 64, 64)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))  # the same weights through the same kernels: bit-exact
    wrong = create_model("vit_tiny_patch16_224", num_classes=4, img_size=64, num_frames=4)
    with pytest.raises(ValueError, match="head.weight"):
        load_classifier_weights(wrong, str(tmp_path / "official.pth"), strict=True)


def test_710_head_is_reindexed_with_the_official_json(tmp_path):
    torch.manual_seed(2)
    big = create_model("vit_tiny_patch16_224", num_classes=12, img_size=64, num_frames=4)
    index = [11, 0, 5, 3]
    (tmp_path / "label_12to4.json").write_text(json.dumps(index))
    torch.save({"model": big.state_dict()}, tmp_path / "k12.pth")
    small = create_model("vit_tiny_patch16_224", num_classes=4, img_size=64, num_frames=4)
    load_classifier_weights(small, str(tmp_path / "k12.pth"), head_index=str(tmp_path / "label_12to4.json"))
    big.eval(), small.eval()
    x = torch.randn(1, 3, 4, 64, 64)
    assert_close_fp(small(x), big(x)[:, index])  # a 4-row and a 12-row head GEMM: other kernels


# -- labeled clips -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def motion_lists(tmp_path_factory):
    pytest.importorskip("av")
    from vmae2.data.synthetic import make_labeled_videos

    return make_labeled_videos(tmp_path_factory.mktemp("motion"), {"train": 2, "test": 1}, size=(48, 40),
                               num_frames=20)


CLIP = ClassifyConfig(clip_len=4, rate=2, input_size=32, short_side_size=32, num_sample=2, num_segments=2,
                      num_crops=3, num_classes=4)


def test_train_batches_are_deterministic_and_labeled(motion_lists):
    records = read_finetune_csv(motion_lists["train"], num_classes=4)
    aug = FinetuneAugment(32, auto_augment="rand-m7-n2-mstd0.5-inc1", flip=False, reprob=0.25)

    def first(seed):
        loader = ClassifyLoader(records, mode="train", batch_size=4, config=CLIP, seed=seed, num_workers=0,
                                transform=aug)
        loader.set_epoch(1)
        return next(iter(loader))

    a, b, c = first(0), first(0), first(1)
    assert a.video.shape == (8, 3, 4, 32, 32) and a.labels.shape == (8,)
    assert torch.equal(a.video, b.video) and torch.equal(a.labels, b.labels) and not torch.equal(a.video, c.video)
    assert torch.equal(a.labels, torch.tensor([records[int(i)].label for i in a.video_index]))
    assert torch.equal(a.labels[0::2], a.labels[1::2])  # two views per video, sample-major


def test_test_views_and_bad_files(motion_lists, tmp_path):
    lines = motion_lists["test"].read_text().splitlines()
    (tmp_path / "empty.mp4").write_bytes(b"")
    listing = tmp_path / "test.csv"
    listing.write_text("\n".join(lines[:2] + [f"{tmp_path / 'empty.mp4'} 1"] + lines[2:]) + "\n")
    records = read_finetune_csv(listing, num_classes=4)
    loader = ClassifyLoader(records, mode="test", batch_size=2, config=CLIP, num_workers=0,
                            quarantine=tmp_path / "q.tsv")
    batches = list(loader)
    vids = torch.cat([b.video_index for b in batches])
    views = torch.cat([b.view_index for b in batches])
    assert sorted(set(vids.tolist())) == [0, 1, 3, 4]  # the empty file is left out ...
    assert loader.ledger.num_bad_files == 1 and "empty.mp4" in (tmp_path / "q.tsv").read_text()  # ... and counted
    assert all(sorted(views[vids == v].tolist()) == list(range(6)) for v in (0, 1, 3, 4))
    assert batches[0].video.shape[1:] == (3, 4, 32, 32)


def test_bad_labels_are_clear_errors(motion_lists):
    records = read_finetune_csv(motion_lists["train"])
    with pytest.raises(ValueError, match="outside"):
        ClassifyLoader(records, mode="test", batch_size=1, config=ClassifyConfig(num_classes=2))
    with pytest.raises(ValueError, match="label"):
        read_finetune_csv(motion_lists["train"], num_classes=2)


def test_ranks_split_the_test_set_with_padding(motion_lists):
    records = read_finetune_csv(motion_lists["test"], num_classes=4)  # 4 videos
    shares = [ClassifyLoader(records, mode="test", batch_size=3, config=CLIP, rank=r, world_size=3).pairs()
              for r in range(3)]
    assert all(len(s) == 2 for s in shares)  # padded to equal shares
    assert {i for s in shares for _, i in s} == set(range(4))
    np.testing.assert_array_equal(sorted(i for s in shares for _, i in s), [0, 0, 1, 1, 2, 3])


def test_sparse_test_views_follow_the_segments(motion_lists):
    """SSv2-style TSN views on a video record: each view takes one frame per segment, views differ."""
    records = read_finetune_csv(motion_lists["test"], num_classes=4)
    config = ClassifyConfig(clip_len=4, input_size=32, short_side_size=32, sparse=True, num_segments=2, num_crops=3,
                            num_classes=4)
    loader = ClassifyLoader(records[:1], mode="test", batch_size=1, config=config, num_workers=0)
    batch = next(iter(loader))
    assert batch.video.shape == (6, 3, 4, 32, 32) and batch.view_index.tolist() == list(range(6))
    assert not torch.equal(batch.video[0], batch.video[3])  # the two temporal views sample other frames
    val = ClassifyLoader(records[:1], mode="val", batch_size=1, config=config, num_workers=0)
    assert next(iter(val)).video.shape == (1, 3, 4, 32, 32)
