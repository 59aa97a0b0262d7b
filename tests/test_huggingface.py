"""vmae2 <-> Hugging Face, against the real ``transformers`` and ``huggingface_hub`` (offline): small random
``transformers`` VideoMAE models saved by ``transformers`` load into vmae2 with equal outputs, vmae2 models exported
load into ``transformers`` with equal outputs, the Hub folder round-trips, key mismatches name the key, and the
entry points take a ``transformers`` folder."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vmae2 import transformers_io as tio

if tio.missing_package("transformers") or tio.missing_package("huggingface_hub"):
    pytest.skip(f"{tio.missing_package('transformers') or tio.missing_package('huggingface_hub')}",
                allow_module_level=True)
transformers = tio.import_transformers()

from vmae2 import hub
from vmae2.models import create_model  # noqa: E402
from vmae2.training import rundir  # noqa: E402
from vmae2.weights import save_safetensors  # noqa: E402

BOUND = 1e-5  # max abs difference of logits / reconstructions, fp32 CPU
# a ViT-S (width 384, 6 heads, MLP 1536) two blocks deep, and a patch-14 model with a non-default MLP width
VIT_S = dict(image_size=32, patch_size=16, num_frames=4, hidden_size=384, num_hidden_layers=2, num_attention_heads=6,
             intermediate_size=1536, decoder_hidden_size=192, decoder_num_attention_heads=3,
             decoder_intermediate_size=768, decoder_num_hidden_layers=1)
P14 = dict(image_size=28, patch_size=14, num_frames=4, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=200, decoder_hidden_size=48, decoder_num_attention_heads=2, decoder_intermediate_size=100,
           decoder_num_hidden_layers=2, layer_norm_eps=1e-6)
CONFIGS = {"vit_s": VIT_S, "patch14_mlp200": P14}


def _randomize(model, seed=0):
    """Every parameter drawn at random (biases and norms too: zero q/v biases would hide a lost bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 0.05))
    return model.eval()


def _hf(kind, name, folder, **extra):
    config = transformers.VideoMAEConfig(**CONFIGS[name], **extra)
    if kind == "classification":
        config.num_labels = 5
        config.id2label = {i: f"class{i}" for i in range(5)}
        config.label2id = {f"class{i}": i for i in range(5)}
        model = transformers.VideoMAEForVideoClassification(config)
    else:
        config.use_mean_pooling = False  # the encoder's final norm, as the published pretraining checkpoints
        model = transformers.VideoMAEForPreTraining(config)
    model = _randomize(model)
    model.save_pretrained(folder)
    return model


def _clip(cfg, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, cfg["num_frames"], cfg["image_size"], cfg["image_size"], generator=g)


def _mask(cfg, batch=2):
    n = (cfg["num_frames"] // 2) * (cfg["image_size"] // cfg["patch_size"]) ** 2
    g = torch.Generator().manual_seed(2)
    return torch.stack([torch.randperm(n, generator=g) < n * 3 // 4 for _ in range(batch)])  # 3/4 masked


def _hf_logits(model, x, mask=None):
    with torch.no_grad():
        args = {} if mask is None else {"bool_masked_pos": mask}
        return model(pixel_values=x.transpose(1, 2), **args).logits


@pytest.mark.parametrize("name", CONFIGS)
def test_a_transformers_classifier_loads_into_vmae2_with_equal_logits(name, tmp_path):
    hf_model = _hf("classification", name, tmp_path / "hf")
    model = tio.load_model(tmp_path / "hf").eval()
    x = _clip(CONFIGS[name])
    with torch.no_grad():
        ours = model(x)
    theirs = _hf_logits(hf_model, x)
    assert theirs.abs().max() > 0.1  # a real signal
    assert (ours - theirs).abs().max() <= BOUND
    assert model.cfg.patch_size == CONFIGS[name]["patch_size"]
    assert model.blocks[0].mlp.fc1.out_features == CONFIGS[name]["intermediate_size"]


@pytest.mark.parametrize("name", CONFIGS)
def test_a_pretraining_model_round_trips_through_transformers_with_equal_reconstructions(name, tmp_path):
    cfg = CONFIGS[name]
    hf_model = _hf("pretraining", name, tmp_path / "hf")
    model = tio.load_model(tmp_path / "hf").eval()
    x, mask = _clip(cfg), _mask(cfg)
    with torch.no_grad():
        ours = model(x, mask)
    theirs = _hf_logits(hf_model, x, mask)
    assert ours.shape == theirs.shape == (2, int(mask[0].sum()), 3 * 2 * cfg["patch_size"] ** 2)
    assert (ours - theirs).abs().max() <= BOUND
    tio.save_folder(model, tmp_path / "back")  # and back into transformers
    again = transformers.VideoMAEForPreTraining.from_pretrained(tmp_path / "back").eval()
    assert (_hf_logits(again, x, mask) - ours).abs().max() <= BOUND
    mine = {k: v for k, v in again.state_dict().items()}
    for key, value in hf_model.state_dict().items():
        assert torch.equal(mine[key], value), key


def _run_folder(folder, seed=0, pool="mean"):
    """A fine-tuning run folder as vmae2.finetune leaves it: a trained-looking tiny classifier (random weights)."""
    model = create_model("vit_tiny_patch16_224", num_classes=3, num_frames=4, img_size=32, pool=pool)
    _randomize(model, seed)
    folder.mkdir(parents=True)
    save_safetensors(model, folder / "model.safetensors")
    (folder / "classes.txt").write_text("still\nleft\nright\n")
    (folder / "test.csv").write_text("a.mp4 0\n")
    (folder / "test_metrics.json").write_text(json.dumps({"top1": 66.7, "top5": 100.0, "videos": 3}))
    config = {"model": "vit_tiny_patch16_224", "nb_classes": 3, "num_frames": 4, "input_size": 32,
              "sampling_rate": 2, "tubelet_size": 2, "short_side_size": 40, "class_names": str(folder / "classes.txt"),
              "test_data_path": str(folder / "test.csv"), "data_path": str(folder / "test.csv"), "lr": 1e-3,
              "epochs": 3, "batch_size": 4, "pool": pool}
    rundir.write(config, "finetune", folder)
    return model


def test_an_exported_run_loads_into_transformers_with_equal_logits(tmp_path):
    from vmae2.export import main

    model = _run_folder(tmp_path / "run")
    assert main(["--format", "transformers", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    hf_model = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf").eval()
    x = _clip({"num_frames": 4, "image_size": 32})
    with torch.no_grad():
        ours = model(x)
    theirs = _hf_logits(hf_model, x)
    assert theirs.abs().max() > 0.1
    # transformers' fc_norm runs at eps 1e-5 (fixed), vmae2's at 1e-6: the only difference, inside the bound
    assert (ours - theirs).abs().max() <= BOUND
    assert hf_model.config.id2label == {0: "still", 1: "left", 2: "right"}
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 40} and pre["crop_size"] == {"height": 32, "width": 32}
    assert pre["image_mean"] == [0.485, 0.456, 0.406] and pre["image_std"] == [0.229, 0.224, 0.225]


def test_a_vmae2_pretraining_model_exports_with_equal_reconstructions(tmp_path):
    model = _randomize(create_model("pretrain_videomae_tiny_patch16_224", num_frames=4, img_size=32, decoder_depth=2))
    tio.save_folder(model, tmp_path / "hf")
    hf_model = transformers.VideoMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
    cfg = {"num_frames": 4, "image_size": 32, "patch_size": 16}
    x, mask = _clip(cfg), _mask(cfg)
    with torch.no_grad():
        ours = model(x, mask)
    # transformers' decoder norm runs at eps 1e-5 (fixed), vmae2's at 1e-6
    assert (ours - _hf_logits(hf_model, x, mask)).abs().max() <= BOUND


@pytest.mark.parametrize("kind", ["classification", "pretraining"])
def test_save_pretrained_from_pretrained_round_trip(kind, tmp_path):
    if kind == "classification":
        model = _run_folder(tmp_path / "run")
        hub.save_pretrained(model, tmp_path / "saved", run=tmp_path / "run", class_names=["still", "left", "right"])
        card = (tmp_path / "saved" / "README.md").read_text()
        assert "test_top1 | 66.7" in card and "| test.csv (1 lines) |" in card and "| lr | 0.001 |" in card
        assert str(tmp_path) not in card  # no local folders
    else:
        model = _randomize(create_model("pretrain_videomae_tiny_patch16_224", num_frames=4, img_size=32))
        hub.save_pretrained(model, tmp_path / "saved")
    again = hub.from_pretrained(tmp_path / "saved")
    x, mask = _clip({"num_frames": 4, "image_size": 32}), _mask({"num_frames": 4, "image_size": 32, "patch_size": 16})
    with torch.no_grad():
        args = (x,) if kind == "classification" else (x, mask)
        assert torch.equal(model(*args), again(*args))
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_a_mean_motion_run_exports_as_vmae2_and_is_refused_by_transformers(tmp_path, capsys):
    from vmae2.export import main

    model = _run_folder(tmp_path / "run", pool="mean_motion")
    assert main(["--format", "vmae2", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "saved")]) == 0
    again = hub.from_pretrained(tmp_path / "saved")
    x = _clip({"num_frames": 4, "image_size": 32})
    with torch.no_grad():
        assert again.pool == "mean_motion" and torch.equal(model(x), again(x))
    assert main(["--format", "transformers", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) != 0
    assert "pools with 'mean_motion' (--pool)" in capsys.readouterr().err
    assert not (tmp_path / "hf" / "config.json").exists()


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    def upload_folder(self, repo_id, folder_path, commit_message):
        calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        calls["config"] = json.loads((Path(folder_path) / "config.json").read_text())
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo",
                                                                                                          repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = _run_folder(tmp_path / "run")
    url = hub.push_to_hub(model, "me/vmae2-test", run=tmp_path / "run")
    assert url.endswith("me/vmae2-test/commit/0") and calls["repo"] == "me/vmae2-test"
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]
    assert calls["config"]["num_classes"] == 3 and calls["config"]["vmae2_model"] == "classification"


def test_from_pretrained_takes_the_videomae_v2_hub_layout_and_transformers_folders(tmp_path):
    model = _randomize(create_model("vit_tiny_patch16_224", num_classes=0, num_frames=4, img_size=32))
    folder = tmp_path / "v2"
    folder.mkdir()
    args = {"img_size": 32, "patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3, "mlp_ratio": 4,
            "num_classes": 0, "num_frames": 4, "tubelet_size": 2, "use_mean_pooling": True, "qkv_bias": True}
    (folder / "config.json").write_text(json.dumps({"model_type": "VideoMAEv2_Base", "model_config": args}))
    save_safetensors({f"model.{k}": v for k, v in model.state_dict().items()}, folder / "model.safetensors")
    x = _clip({"num_frames": 4, "image_size": 32})
    with torch.no_grad():
        assert torch.equal(hub.from_pretrained(folder).forward_features(x), model.forward_features(x))
    save_safetensors({**{f"model.{k}": v for k, v in model.state_dict().items()}, "model.extra": torch.zeros(1)},
                     folder / "model.safetensors")
    with pytest.raises(ValueError, match="not used 1: model.extra"):
        hub.from_pretrained(folder)
    _hf("classification", "patch14_mlp200", tmp_path / "hf")
    assert hub.from_pretrained(tmp_path / "hf").cfg.patch_size == 14


def test_the_one_loader_takes_transformers_folders_for_init_and_weights(tmp_path):
    from vmae2.weights import load_classifier_weights

    hf_model = _hf("classification", "vit_s", tmp_path / "cls")
    model = _randomize(tio.build_model(tio.read_folder(tmp_path / "cls")[0]), seed=5)  # the folder's sizes
    load_classifier_weights(model, tmp_path / "cls", strict=True)  # evaluate/predict --weights
    x = _clip(VIT_S)
    with torch.no_grad():
        assert (model(x) - _hf_logits(hf_model, x)).abs().max() <= BOUND
    _hf("pretraining", "vit_s", tmp_path / "pre")
    fresh = tio.build_model(tio.read_folder(tmp_path / "cls")[0])
    report = load_classifier_weights(fresh, tmp_path / "pre")  # finetune --init: the encoder, decoder dropped
    assert "decoder.head.weight" in report.dropped and report.missing == ["fc_norm.bias", "fc_norm.weight",
                                                                         "head.bias", "head.weight"]
    pre = tio.load_model(tmp_path / "pre")
    assert torch.equal(fresh.blocks[1].attn.qkv.weight, pre.encoder.blocks[1].attn.qkv.weight)
    assert torch.equal(fresh.blocks[0].attn.v_bias, pre.encoder.blocks[0].attn.v_bias)


def test_a_key_mismatch_in_either_direction_names_the_key(tmp_path):
    from safetensors.torch import load_file, save_file

    _hf("classification", "patch14_mlp200", tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    state = load_file(path)
    save_file({**state, "videomae.encoder.layer.0.attention.attention.key.bias": torch.zeros(96)}, path)
    with pytest.raises(ValueError, match=r"not used by the vmae2 classification model: "
                                         r"videomae\.encoder\.layer\.0\.attention\.attention\.key\.bias"):
        tio.load_model(tmp_path / "hf")
    save_file({k: v for k, v in state.items() if k != "videomae.encoder.layer.1.intermediate.dense.bias"}, path)
    with pytest.raises(ValueError, match=r"missing 1: videomae\.encoder\.layer\.1\.intermediate\.dense\.bias"):
        tio.load_model(tmp_path / "hf")
    model = create_model("vit_tiny_patch16_224", num_classes=3, num_frames=4, img_size=32)
    extra = {**model.state_dict(), "blocks.0.attn.k_bias": torch.zeros(192)}
    with pytest.raises(ValueError, match=r"no transformers VideoMAE counterpart.*blocks\.0\.attn\.k_bias"):
        tio.to_transformers_keys(extra, "classification")
    scaled = create_model("vit_tiny_patch16_224", num_classes=3, num_frames=4, img_size=32, init_values=0.1)
    with pytest.raises(ValueError, match="layer scale"):
        tio.save_folder(scaled, tmp_path / "never")
    resampled = create_model("vit_tiny_patch16_224", num_classes=3, num_frames=8, img_size=32,
                             pos_embed_grid=(2, 2, 2))
    with pytest.raises(ValueError, match="pos_embed_grid"):
        tio.save_folder(resampled, tmp_path / "never")


def test_configs_vmae2_cannot_express_are_refused_naming_the_option(tmp_path):
    for extra, option in (({"qv_bias": False}, "qv_bias"), ({"hidden_act": "relu"}, "hidden_act"),
                          ({"use_mean_pooling": False}, "use_mean_pooling")):
        config = transformers.VideoMAEConfig(**P14, **extra)
        transformers.VideoMAEForVideoClassification(config).save_pretrained(tmp_path / option)
        with pytest.raises(ValueError, match=option):
            tio.load_model(tmp_path / option)


def test_a_hub_id_offline_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = "nobody-vmae2/none: no such folder here, and cannot download it from the Hugging Face Hub"
    with pytest.raises(ValueError, match=expected) as info:
        tio.resolve("nobody-vmae2/none")
    assert "\n" not in str(info.value)
    assert not tio.is_hub_id("runs/model.safetensors") and tio.is_hub_id("MCG-NJU/videomae-base")


def test_a_missing_package_is_a_reason_naming_the_extra():
    reason = tio.missing_package("vmae2_no_such_package")
    assert reason == "vmae2_no_such_package is not installed: pip install vmae2[hf] (or pip install " \
                     "vmae2_no_such_package)"
    assert tio.missing_package("transformers") is None


def test_export_without_transformers_says_which_package_to_install(tmp_path, monkeypatch, capsys):
    from vmae2.export import main

    _run_folder(tmp_path / "run")
    from vmae2 import hf_keys

    real = hf_keys.missing_package
    monkeypatch.setattr(hf_keys, "missing_package", lambda p: real("vmae2_no_such_package") if p == "transformers"
                        else None)
    assert main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2
    assert "error: exporting to transformers: vmae2_no_such_package is not installed: pip install vmae2[hf]" in \
        capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    pytest.importorskip("av", reason="PyAV makes and decodes the videos")
    from vmae2.data.synthetic import make_videos

    return make_videos(tmp_path_factory.mktemp("v"), 1, sizes=((48, 40),), num_frames=(12,), codecs=("h264",),
                       write_list=False)[0]


def test_predict_run_and_extract_weights_take_a_transformers_folder(video, tmp_path, capsys):
    from vmae2.export import main as export
    from vmae2.extract import main as extract
    from vmae2.predict import main as predict

    _run_folder(tmp_path / "run")
    assert export(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    common = ["--format", "json", "--device", "cpu", "--test_num_segment", "1", "--test_num_crop", "1",
              "--sampling_rate", "2", str(video)]  # a transformers folder does not carry the frame sampling rate
    capsys.readouterr()
    assert predict(["--run", str(tmp_path / "hf"), *common]) == 0
    from_hf = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert predict(["--run", str(tmp_path / "run"), *common]) == 0
    from_run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert from_hf["classes"] == from_run["classes"] and set(from_hf["classes"]) == {"still", "left", "right"}
    assert max(abs(a - b) for a, b in zip(from_hf["probs"], from_run["probs"])) < 1e-4
    from vmae2.evaluate import main as evaluate  # --weights alone: the folder gives the model and the classes

    (tmp_path / "test.csv").write_text(f"{video} 1\n")
    views = ["--test_num_segment", "1", "--test_num_crop", "1", "--sampling_rate", "2", "--num_workers", "0",
             "--device", "cpu", "--data_path", str(tmp_path / "test.csv")]
    for name, weights in (("hf", tmp_path / "hf"), ("run", tmp_path / "run" / "model.safetensors")):
        assert evaluate(["--weights", str(weights), "--output_dir", str(tmp_path / f"eval_{name}"), *views]) == 0
    scored = [json.loads((tmp_path / f"eval_{n}" / "test_metrics.json").read_text()) for n in ("hf", "run")]
    assert scored[0]["videos_scored"] == scored[1]["videos_scored"] == 1 and scored[0]["top1"] == scored[1]["top1"]
    feats = {}
    for name, weights in (("hf", tmp_path / "hf"), ("run", tmp_path / "run" / "model.safetensors")):
        out = tmp_path / f"feat_{name}"
        assert extract(["--model", "vit_tiny_patch16_224", "--window", "4", "--stride", "4", "--input_size", "32",
                        "--weights", str(weights), "--data_path", str(video.parent), "--output_dir", str(out),
                        "--frame_stride", "2", "--normalize", "--num_workers", "0", "--device", "cpu"]) == 0
        feats[name] = torch.from_numpy(np.load(next(out.rglob("*.npy"))))
    assert feats["hf"].shape == feats["run"].shape and (feats["hf"] - feats["run"]).abs().max() < 1e-4


def test_hub_ids_of_init_and_weights_become_their_downloaded_folders(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from vmae2.cli import parse_config
    from vmae2.evaluate import EVALUATE
    from vmae2.evaluate import main as evaluate
    from vmae2.extract import EXTRACT
    from vmae2.train import PRETRAIN

    _hf("classification", "vit_s", tmp_path / "cls")
    asked = []

    def snapshot_download(repo_id, **kw):
        asked.append(repo_id)
        return str(tmp_path / "cls")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    cfg = parse_config(["--weights", "someone/videomae-tiny", "--data_path", str(tmp_path / "cls")], EXTRACT)
    assert cfg.weights == str(tmp_path / "cls")
    cfg = parse_config(["--init", "someone/videomae-tiny", "--init_partial"], PRETRAIN)
    assert cfg.init == str(tmp_path / "cls")
    cfg = parse_config(["--weights", "someone/videomae-tiny", "--data_path", str(tmp_path / "cls" / "config.json")],
                       EVALUATE)
    assert cfg.weights == str(tmp_path / "cls") and asked == ["someone/videomae-tiny"] * 3

    def offline(repo_id, **kw):
        raise OSError("we are offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert evaluate(["--weights", "someone/videomae-tiny", "--data_path", str(tmp_path / "cls" / "config.json")]) == 2
    err = capsys.readouterr().err
    assert "someone/videomae-tiny: no such folder here, and cannot download it" in err and "Traceback" not in err
