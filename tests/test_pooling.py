"""The classifier's pooling (``--pool``): ``mean`` (official) and ``mean_motion`` (the mean token and the mean absolute
change of each token between consecutive time slots), and how a run folder carries it to every command."""
import numpy as np
import pytest
import torch
from run_folders import finetune_run_folder

from vmae2.cli import parse_config
from vmae2.evaluate import EVALUATE
from vmae2.extract import EXTRACT
from vmae2.finetune import FINETUNE
from vmae2.models import create_model
from vmae2.predict import PREDICT
from vmae2.weights import load_classifier_weights, save_safetensors


def _tiny(pool, num_frames=6, **kw):
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_224", num_classes=3, num_frames=num_frames, img_size=32, pool=pool, **kw)


def test_mean_motion_features_are_the_mean_token_and_the_mean_slot_change():
    model = _tiny("mean_motion").eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.fc_norm.weight)
        torch.nn.init.normal_(model.fc_norm.bias)
    video = torch.randn(2, 3, 6, 32, 32)
    with torch.no_grad():
        tokens = model.forward_tokens(video).numpy().astype(np.float64)  # [2, 3 slots x 4 positions, 192]
        features = model.forward_features(video)
    slots = [tokens[:, 4 * t:4 * (t + 1)] for t in range(3)]
    motion = (np.abs(slots[1] - slots[0]) + np.abs(slots[2] - slots[1])).sum(axis=1) / 8
    pooled = np.concatenate([tokens.mean(axis=1), motion], axis=1)
    norm = (pooled - pooled.mean(1, keepdims=True)) / np.sqrt(pooled.var(1, keepdims=True) + 1e-6)
    expected = norm * model.fc_norm.weight.detach().numpy() + model.fc_norm.bias.detach().numpy()
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert model.fc_norm.weight.shape == (384,) and model.head.weight.shape == (3, 384)
    assert model(video).shape == (2, 3)


def test_tokens_that_do_not_change_have_no_motion_and_the_gradient_reaches_the_encoder():
    model = _tiny("mean_motion")
    same = torch.randn(2, 1, 4, 192).expand(2, 3, 4, 192).reshape(2, 12, 192)  # 3 slots of the same 4 tokens
    pooled = model.pool_tokens(same)
    assert torch.equal(pooled[:, :192], same.mean(1)) and torch.equal(pooled[:, 192:], torch.zeros(2, 192))
    model(torch.randn(2, 3, 6, 32, 32)).sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_unknown_pools_and_one_time_slot_are_refused():
    with pytest.raises(ValueError, match="pool 'max' is not one of mean, mean_motion"):
        _tiny("max")
    with pytest.raises(ValueError, match="at least 2 time slots; num_frames 2 / tubelet_size 2 gives 1"):
        _tiny("mean_motion", num_frames=2)
    with pytest.raises(ValueError, match="--pool.*mean_motion.*--num_frames 2 / --tubelet_size 2 gives 1"):
        parse_config(["--preset", "demo", "--pool", "mean_motion", "--num_frames", "2"], FINETUNE)


def test_the_official_default_pools_the_mean_and_small_data_pools_mean_motion():
    assert parse_config(["--preset", "official_defaults"], FINETUNE).pool == "mean"
    assert parse_config(["--preset", "small_data"], FINETUNE).pool == "mean_motion"
    assert parse_config(["--preset", "small_data", "--pool", "mean"], FINETUNE).pool == "mean"


def test_a_run_folder_carries_its_pooling_to_evaluate_predict_and_extract(tmp_path):
    run = finetune_run_folder(tmp_path / "ft", pool="mean_motion")
    assert parse_config(["--run", str(run)], EVALUATE).pool == "mean_motion"
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert parse_config(["--run", str(run), str(video)], PREDICT).pool == "mean_motion"
    cfg = parse_config(["--weights", str(run / "model.safetensors"), "--data_path", str(video)], EXTRACT)
    assert (cfg.pool, cfg.window) == ("mean_motion", 8)
    # a fine-tune from it keeps the shapes of its fc_norm and head, whatever the preset says
    cfg = parse_config(["--preset", "demo", "--init", str(run / "model.safetensors")], FINETUNE)
    assert cfg.pool == "mean_motion"
    plain = finetune_run_folder(tmp_path / "plain")
    assert parse_config(["--preset", "small_data", "--init", str(plain / "model.safetensors")], FINETUNE).pool == "mean"


def test_weights_of_the_other_pooling_are_refused_naming_the_tensors(tmp_path):
    saved = _tiny("mean_motion")
    with torch.no_grad():
        saved.fc_norm.weight.normal_()
    save_safetensors(saved, tmp_path / "motion.safetensors")
    with pytest.raises(ValueError, match="fc_norm.weight"):
        load_classifier_weights(_tiny("mean"), tmp_path / "motion.safetensors", strict=True)
    loaded = _tiny("mean_motion")
    report = load_classifier_weights(loaded, tmp_path / "motion.safetensors", strict=True)
    assert str(report) == "missing 0; unexpected 0; dropped on purpose 0"
    assert torch.equal(loaded.fc_norm.weight, saved.fc_norm.weight)
