"""``python -m vmae2.train`` end to end on a tiny model: options, resume after kill -9, DDP, NaN, signals, outputs."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from entry_points import stop_with_sigterm

from oracle.tolerances import assert_close_fp

pytest.importorskip("av", reason="PyAV makes the training videos")

from vmae2.cli import build_parser, parse_config  # noqa: E402
from vmae2.data.synthetic import make_videos  # noqa: E402
from vmae2.train import PRESETS, PRETRAIN, TrainConfig, main  # noqa: E402
from vmae2.training.optim import cosine_schedule  # noqa: E402
from vmae2.training.state import Checkpoints  # noqa: E402

TINY = ["--preset", "demo", "--num_frames", "4", "--input_size", "64", "--batch_size", "2", "--num_sample", "1",
        "--mask_ratio", "0.9", "--num_workers", "0",
        "--lr", "0.05", "--warmup_steps", "2", "--log_every", "1"]


@pytest.fixture(scope="module")
def data_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_videos")
    make_videos(root, 8, seed=0, sizes=((96, 64),), num_frames=(24,))
    return str(root / "train.csv")


# One intra-op thread: with more, ATen may split a CPU reduction differently from one process to the next and
# change a loss in its last bit, which the bit-exact resume test would (rightly) report.
DETERMINISTIC = {"OMP_NUM_THREADS": "1"}


def _run(args, env_extra=None, check=True, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **DETERMINISTIC, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vmae2.train", *args], capture_output=True, text=True, env=env,
                          check=check, **kw)


def _losses(output_dir) -> dict[int, float]:
    """Per-step loss; a step logged twice (before a kill and after the resume) keeps its last value."""
    out = {}
    for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out


# -- options ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,match", [
    (["--lr", "-1"], "--lr -1.0"),
    (["--mask_ratio", "1.2"], "--mask_ratio 1.2"),
    (["--num_frames", "7"], "--num_frames 7"),
    (["--decoder_mask_ratio", "0.6"], "--decoder_mask_ratio 0.6"),
    (["--input_size", "100"], "--input_size 100"),
    (["--model", "vit_base_patch16_224"], "pretraining model"),
    (["--batch_size", "0"], "--batch_size 0"),
    (["--with_checkpoint", "every:0"], "--with_checkpoint 'every:0' is invalid: choose one of false, true, auto"),
])
def test_bad_values_fail_before_any_work(args, match, capsys, tmp_path):
    assert main(args + ["--output_dir", str(tmp_path / "never")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_unknown_option_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--no_such_flag", "1"])
    assert exc.value.code == 2 and "no_such_flag" in capsys.readouterr().err
    text = build_parser(PRETRAIN).format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name}" in text


def test_preset_file_and_flag_precedence(tmp_path):
    file = tmp_path / "cfg.json"
    file.write_text(json.dumps({"lr": 0.002, "batch_size": 16}))
    cfg = parse_config(["--preset", "vit_g_hybrid_pt", "--config", str(file), "--batch_size", "4"], PRETRAIN)
    assert cfg.model == "pretrain_videomae_giant_patch14_224" and cfg.clip_grad == 0.02
    assert cfg.with_checkpoint == "auto"  # the memory plan's choice on a GPU (the official scripts: every block)
    assert cfg.lr == 0.002 and cfg.batch_size == 4 and cfg.opt_betas == (0.9, 0.95) and cfg.num_sample == 4
    assert set(PRESETS) >= {"vit_b_hybrid_pt", "vit_l_hybrid_pt", "vit_h_hybrid_pt", "vit_g_hybrid_pt"}
    file.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ValueError, match="learning_rate"):
        parse_config(["--config", str(file)], PRETRAIN)


def test_official_schedule():
    lr = cosine_schedule(1.0, 0.1, 10, 4)
    assert lr.tolist()[:4] == pytest.approx([0, 1 / 3, 2 / 3, 1.0])  # linspace from 0, end point included
    assert lr[4] == pytest.approx(1.0) and lr[-1] > 0.1 and len(lr) == 10


def test_unwritable_output_dir_is_reported_before_training(data_list, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(TINY + ["--data_path", data_list, "--output_dir", str(blocker / "out"), "--max_steps", "1"]) == 2
    assert "not writable" in capsys.readouterr().err


# -- runs -------------------------------------------------------------------------------------------------

def test_outputs_and_resume_after_kill_9(data_list, tmp_path):
    args = TINY + ["--data_path", data_list, "--max_steps", "8", "--save_every_steps", "3"]
    out = _run(args + ["--output_dir", str(tmp_path / "a")]).stdout
    reference = _losses(tmp_path / "a")
    # the final report, and its plateau warning exactly when the error stayed at 0.95x the flat colours or more
    rel = float(re.search(r"reconstruction error ([\d.]+)x the flat-colour baseline", out).group(1))
    assert ("WARNING: the reconstruction stayed at the flat-colour plateau" in out) == (rel >= 0.95), out
    assert sorted(reference) == list(range(1, 9))
    out = tmp_path / "a"
    assert {p.name for p in out.iterdir()} >= {"checkpoints", "metrics.jsonl", "model.safetensors",
                                              "reconstruction.png"}
    assert [p.name for p in Checkpoints(out, 2).paths()] == ["checkpoint-00000006.pt", "checkpoint-00000008.pt"]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"step", "loss", "lr", "grad_norm", "clips_per_s", "tokens_per_s", "data_wait_frac", "peak_mem_mb",
            "skipped_videos"} <= set(record)
    state = Checkpoints.load(Checkpoints(out, 2).latest())
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])

    # Same run, killed with SIGKILL right after its step-6 checkpoint, then resumed.
    b = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "vmae2.train", *args, "--output_dir", str(b)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **DETERMINISTIC})
    target = b / "checkpoints" / "checkpoint-00000006.pt"
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert target.exists()
    _run(args + ["--output_dir", str(b)])  # --resume auto is the default
    assert _losses(b) == reference  # bit for bit (CPU, fp32)


def test_nan_stops_the_run_and_keeps_the_checkpoint(data_list, tmp_path):
    args = TINY + ["--data_path", data_list, "--max_steps", "8", "--save_every_steps", "3", "--inject_nan_step", "4",
                   "--output_dir", str(tmp_path)]
    result = _run(args, check=False)
    assert result.returncode == 3
    assert "non-finite at step 4" in result.stderr and "checkpoint-00000003.pt" in result.stderr
    paths = Checkpoints(tmp_path, 2).paths()
    assert [p.name for p in paths] == ["checkpoint-00000003.pt"]
    state = Checkpoints.load(paths[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_sigterm_saves_and_exits_cleanly(data_list, tmp_path):
    args = TINY + ["--data_path", data_list, "--max_steps", "400", "--save_every_steps", "1000",
                   "--output_dir", str(tmp_path)]
    stop_with_sigterm("vmae2.train", args)
    saved = Checkpoints(tmp_path, 2).latest()
    assert saved is not None and Checkpoints.load(saved)["step"] >= 2


def _torchrun(args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "vmae2.train", *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **DETERMINISTIC}, timeout=300)  # a hang fails instead of blocking CI


def test_two_processes_ddp_and_fsdp_equal_one_process(data_list, tmp_path):
    common = ["--preset", "demo", "--num_frames", "4", "--input_size", "64", "--num_sample", "1", "--num_workers", "0",
              "--lr", "0.05", "--warmup_steps", "2", "--log_every", "1", "--data_path", data_list, "--max_steps", "3", "--save_every_steps", "2"]
    _run(common + ["--batch_size", "4", "--output_dir", str(tmp_path / "one")])
    _torchrun(common + ["--batch_size", "2", "--output_dir", str(tmp_path / "ddp")])
    _torchrun(common + ["--batch_size", "2", "--fsdp", "true", "--output_dir", str(tmp_path / "fsdp")])
    one = _losses(tmp_path / "one")
    w1 = Checkpoints.load(Checkpoints(tmp_path / "one", 2).latest())["model"]
    # AdamW moves a weight by up to lr a step whatever its gradient's size, so a gradient's relative rounding error
    # (times up to 2^6 where its sum over tokens cancels) moves it by that fraction of lr: scale = 2^6 * sum(lr).
    lr_sum = sum(json.loads(line)["lr"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines())
    for name in ("ddp", "fsdp"):
        losses = _losses(tmp_path / name)
        assert sorted(losses) == [1, 2, 3]
        for step in one:  # batch 2 x 2 processes vs batch 4: other GEMM shapes and reduction orders
            assert_close_fp(losses[step], one[step], torch.float32, msg=f"{name} step {step}")
        w2 = Checkpoints.load(Checkpoints(tmp_path / name, 2).latest())["model"]
        assert set(w1) == set(w2)  # full, unprefixed keys from both wrappers
        for key in w1:
            assert_close_fp(w2[key], w1[key], scale=2 ** 6 * lr_sum, msg=f"{name} {key}")
    # FSDP resume: drop the final checkpoint and continue from step 2.
    (tmp_path / "fsdp" / "checkpoints" / "checkpoint-00000003.pt").unlink()
    before = _losses(tmp_path / "fsdp")
    _torchrun(common + ["--batch_size", "2", "--fsdp", "true", "--output_dir", str(tmp_path / "fsdp")])
    assert _losses(tmp_path / "fsdp")[3] == before[3]  # resume: the same kernels rerun, bit-exact


def test_embedded_default_generates_and_caches_videos(tmp_path):
    env = {"VMAE2_CACHE": str(tmp_path / "cache")}
    result = _run(["--max_steps", "2", "--output_dir", str(tmp_path / "out"), "--num_workers", "0"], env_extra=env)
    assert "generating the demo videos" in result.stdout
    assert (tmp_path / "cache" / "demo_videos_v2" / "train.csv").exists()
    assert (tmp_path / "out" / "reconstruction.png").exists()


def test_visualize_writes_a_png(data_list, tmp_path):
    from PIL import Image

    from vmae2.visualize import TITLE_HEIGHT

    _run(TINY + ["--data_path", data_list, "--max_steps", "1", "--output_dir", str(tmp_path)])
    video = Path(data_list).parent / "00000_h264_96x64.mp4"
    out = tmp_path / "viz.png"
    result = subprocess.run([sys.executable, "-m", "vmae2.visualize", str(Checkpoints(tmp_path, 2).latest()),
                             str(video), "--out", str(out), "--sampling_rate", "2"], check=True, capture_output=True,
                             text=True)
    assert "--sampling_rate 2 differs from the run's 4" in result.stderr  # a flag against the run's geometry says so
    assert result.stderr.count("differs from the run's") == 1, result.stderr  # once, by the CLI builder
    # weights alone: the config.json beside them gives model and geometry (4 frames x 64 px, not 16 x 224)
    subprocess.run([sys.executable, "-m", "vmae2.visualize", str(tmp_path / "model.safetensors"), str(video),
                    "--out", str(tmp_path / "viz2.png")], check=True, capture_output=True)
    with Image.open(tmp_path / "viz2.png") as img:
        assert img.size == (64 * 2 * 4, 4 * (64 * 4 + TITLE_HEIGHT))
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        # two 64-pixel tubelet columns, enlarged 4x to the readable minimum width; 4 rows under their titles
        assert img.format == "PNG" and img.size == (64 * 2 * 4, 4 * (64 * 4 + TITLE_HEIGHT))


def _grid_inputs():
    """A tiny untrained model, one random 4-frame 64x64 clip (2 tubelets of 4x4 patches), tube / running-cell ids."""
    from vmae2 import masking
    from vmae2.models import create_model

    g = torch.Generator().manual_seed(0)
    model = create_model("pretrain_videomae_tiny_patch16_224", num_frames=4, img_size=64)
    video = torch.randn(1, 3, 4, 64, 64, generator=g)
    return model, video, masking.tube_ids(1, model.grid, 0.75, generator=g), \
        masking.running_cell_ids(1, model.grid, 0.5, generator=g)


def test_reconstruction_grid_shows_the_clip_and_the_masks(tmp_path):
    import numpy as np
    from PIL import Image

    from vmae2.data.pretraining.clips import IMAGENET_MEAN, IMAGENET_STD
    from vmae2.masking import ids_to_mask
    from vmae2.visualize import GREY, ROW_LABELS, TITLE_HEIGHT, reconstruction_grid, save_reconstruction_png

    model, video, enc, dec = _grid_inputs()
    assert save_reconstruction_png(model, video, enc, dec, tmp_path / "r.png") is None
    with Image.open(tmp_path / "r.png") as img:
        png = np.asarray(img.convert("RGB")).astype(float)
    fig, _ = reconstruction_grid(model, video, enc, dec)
    assert [ax.get_title(loc="left") for ax in fig.axes] == [*ROW_LABELS, "reconstruction (de-normalised with the "
                                                             "true per-patch mean/std)"]
    s, row = 4, 64 * 4 + TITLE_HEIGHT  # 128 pixels wide (2 tubelets) enlarged 4x to 512; a title band per row
    assert png.shape == (4 * row, 512, 3)
    original = (video[0] * torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1))
    frames = torch.cat([original[:, 0], original[:, 2]], dim=2).clamp(0, 1).permute(1, 2, 0).numpy() * 255
    expected = frames.repeat(s, axis=0).repeat(s, axis=1)  # each pixel a 4x4 block
    assert np.abs(png[TITLE_HEIGHT:row] - expected).max() <= 1  # row 1: the clip's first frame of each tubelet
    encoder_row = png[row + TITLE_HEIGHT:2 * row]
    masked = ids_to_mask(enc, 32)[0]  # patch n = (tubelet, h, w) in a 2 x 4 x 4 grid
    for n in (int(masked.nonzero()[0]), int((~masked).nonzero()[0])):
        t, h, w = n // 16, n // 4 % 4, n % 4
        rows, cols = slice(h * 16 * s, (h + 1) * 16 * s), slice((t * 64 + w * 16) * s, (t * 64 + (w + 1) * 16) * s)
        want = GREY * 255 if masked[n] else expected[rows, cols]
        assert np.abs(encoder_row[rows, cols] - want).max() <= 1, n  # masked: grey; visible: the clip


def test_reconstruction_png_without_matplotlib(tmp_path, no_matplotlib):
    from vmae2.visualize import save_reconstruction_png

    reason = save_reconstruction_png(*_grid_inputs(), tmp_path / "reconstruction.png")
    assert reason.startswith("reconstruction.png skipped: matplotlib is not importable") and "vmae2[plot]" in reason
    assert not (tmp_path / "reconstruction.png").exists()


@pytest.fixture(scope="module")
def fp32_losses(data_list, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    _run(TINY + ["--data_path", data_list, "--max_steps", "2", "--output_dir", str(out)])
    return _losses(out)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_runs(data_list, tmp_path, precision, fp32_losses):
    """Warm-up from lr 0 (--warmup_steps 2: lr 0, then 0.05) leaves the weights at their initial values for both
    logged losses, and the clips and masks do not depend on the precision: each step's loss is the fp32 run's
    within two ulps of the low precision (a mean over many rounded terms; measured: 2e-4 relative in bf16, 3e-5 in
    fp16, against 3% and 0.4% allowed; steps 1 and 2 differ by 25%)."""
    _run(TINY + ["--data_path", data_list, "--max_steps", "2", "--precision", precision, "--output_dir", str(tmp_path)])
    losses = _losses(tmp_path)
    assert sorted(losses) == sorted(fp32_losses) == [1, 2]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    for step, loss in losses.items():
        assert_close_fp(loss, fp32_losses[step], dtype, msg=f"{precision} step {step}")


def test_init_from_an_official_style_checkpoint(data_list, tmp_path):
    import argparse

    from vmae2.models import create_model

    model = create_model("pretrain_videomae_tiny_patch16_224", num_frames=4, img_size=64)
    official = tmp_path / "official.pth"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}, "epoch": 5,
                "args": argparse.Namespace(lr=1e-3)}, official)
    result = _run(TINY + ["--data_path", data_list, "--max_steps", "1", "--init", str(official), "--output_dir",
                          str(tmp_path / "out")])
    assert f"initialised from {official}: missing 0" in result.stdout


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    ckpt = Checkpoints(tmp_path, keep=2)
    first = ckpt.save({"step": 1, "w": torch.ones(3)}, 1)

    def disk_full(obj, path, *args, **kwargs):  # atomic_write hands torch.save the temporary file's path
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        ckpt.save({"step": 2, "w": torch.zeros(3)}, 2)
    assert ckpt.paths() == [first] and [p.name for p in ckpt.dir.iterdir()] == [first.name]
    assert Checkpoints.load(first)["w"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_resume_across_modes(data_list, tmp_path):
    args = TINY + ["--data_path", data_list, "--max_steps", "4", "--save_every_steps", "2"]
    eager = _run(args + ["--compile", "off", "--output_dir", str(tmp_path / "eager")])
    assert "first step" in eager.stdout and "eager (--compile off)" in eager.stdout
    # Steps 1-2 compiled (the run killed after its step-2 checkpoint), then resumed eager for steps 3-4: the same
    # losses as the eager run.
    mixed = tmp_path / "mixed"
    log = tmp_path / "compiled.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vmae2.train", *args, "--compile", "on", "--output_dir",
                                 str(mixed)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **DETERMINISTIC})
        target, deadline = mixed / "checkpoints" / "checkpoint-00000002.pt", time.time() + 300
        while not target.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.kill()
        proc.wait()
    assert re.search(r"first step [\d.]+ s: 8 blocks compiled \(--compile on\); compile time included",
                     log.read_text()), log.read_text()
    state = Checkpoints.load(target)
    assert "mask_token" in state["model"] and not any("_orig_mod" in k for k in state["model"])
    _run(args + ["--compile", "off", "--output_dir", str(mixed)])
    ref, got = _losses(tmp_path / "eager"), _losses(mixed)
    assert sorted(got) == [1, 2, 3, 4]
    # inductor fuses the element-wise work into other kernels: fp32 sums in another order, one ulp-scale difference
    # per op, grown over 4 steps of lr 0.05
    for step in ref:
        assert abs(got[step] - ref[step]) <= 1e-4 * abs(ref[step]), (step, got[step], ref[step])


def test_compile_auto_is_eager_on_a_cpu():
    from vmae2.models import create_model
    from vmae2.training.distributed import compile_blocks

    model = create_model("pretrain_videomae_tiny_patch16_224", num_frames=4, img_size=32)
    assert compile_blocks(model, "auto", torch.device("cpu")) == 0
    assert compile_blocks(model, "off", torch.device("cuda")) == 0
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules())


def test_gradient_accumulation_counts_optimizer_steps(data_list, tmp_path):
    _run(TINY + ["--data_path", data_list, "--max_steps", "3", "--accum_steps", "2", "--output_dir", str(tmp_path)])
    assert sorted(_losses(tmp_path)) == [1, 2, 3]
    state = Checkpoints.load(Checkpoints(tmp_path, 2).latest())
    assert state["step"] == 3 and state["config"]["accum_steps"] == 2


def test_gradient_norm_is_measured_on_log_steps_only(data_list, tmp_path, monkeypatch):
    """Without clipping the norm is only logged: it is measured on the steps that write a record, and there only."""
    import vmae2.training.optim as optim

    norms = []
    measure = optim.clip_or_norm
    monkeypatch.setattr(optim, "clip_or_norm", lambda params, max_norm: norms.append(measure(params, max_norm))
                        or norms[-1])
    args = TINY + ["--data_path", data_list, "--max_steps", "7", "--log_every", "3", "--output_dir", str(tmp_path)]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert [r["step"] for r in records if "grad_norm" in r] == [3, 6, 7]
    assert logged == [float(n) for n in norms] and all(n > 0 for n in logged)


@pytest.mark.slow
def test_demo_pretraining_loss_falls(data_list, tmp_path):
    """The demo preset (tiny model, raw-pixel targets, its learning rate) on generated videos, shrunk to 64 px,
    2 videos x 2 views and 40 steps logged every step: the mean loss of the last 20 steps is below 0.8 x that of
    the first 20. Measured 0.23 (one thread, deterministic; ~12 s); with --lr 1e-12 (0 is refused) the ratio is
    1.0004 and this fails."""
    _run(["--preset", "demo", "--input_size", "64", "--batch_size", "2", "--num_sample", "2", "--num_workers", "0",
          "--warmup_steps", "5", "--max_steps", "40", "--log_every", "1", "--data_path", data_list,
          "--output_dir", str(tmp_path)])
    losses = _losses(tmp_path)
    assert sorted(losses) == list(range(1, 41))
    first, last = [losses[s] for s in range(1, 21)], [losses[s] for s in range(21, 41)]
    assert sum(last) / 20 < 0.8 * sum(first) / 20, losses


@pytest.mark.slow
@pytest.mark.demo
def test_demo_beats_half_the_flat_colour_baseline(tmp_path):
    """`make train` as shipped (no arguments, generated videos, all threads): the final reconstruction error is
    below half that of predicting every patch as the clip's mean colour, and the loss falls. Measured 0.481 in
    three runs on the 2-core CI machine (the run is deterministic there)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "VMAE2_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "vmae2.train", "--output_dir", str(tmp_path / "demo")],
                            capture_output=True, text=True, env=env, check=True, timeout=1200)
    rel = float(result.stdout.split("reconstruction error ")[1].split("x")[0])
    assert rel < 0.5, result.stdout[-2000:]
    records = [json.loads(line) for line in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == PRESETS["demo"]["max_steps"]
    first, last = records[:4], records[-4:]  # 50-step windows: the first and last 200 steps
    assert sum(r["loss"] for r in last) < 0.8 * sum(r["loss"] for r in first)
    assert sum(r["recon_vs_flat"] for r in last) / 4 < 0.8  # learned more than flat colour during training too


def test_fp16_resume_restores_the_grad_scaler_exactly(data_list, tmp_path):
    """fp16 trains with a GradScaler (initial scale 2^16, growth every 2000 clean steps). Its state in the step-2
    checkpoint is set to scale 1024 with 7 clean steps counted; the run resumed from there takes exactly that
    state: after steps 3 and 4 (no overflow at scale 1024) the step-4 checkpoint holds scale 1024 and 7 + 2 = 9."""
    args = TINY + ["--data_path", data_list, "--max_steps", "4", "--save_every_steps", "2", "--keep_last", "3",
                   "--precision", "fp16", "--output_dir", str(tmp_path)]
    _run(args)
    saved = {p.name: Checkpoints.load(p)["scaler"] for p in Checkpoints(tmp_path, 3).paths()}
    assert sorted(saved) == ["checkpoint-00000002.pt", "checkpoint-00000004.pt"]
    for name, steps in (("checkpoint-00000002.pt", 2), ("checkpoint-00000004.pt", 4)):
        assert (saved[name]["scale"], saved[name]["_growth_tracker"]) == (65536.0, steps), saved[name]
    second = tmp_path / "checkpoints" / "checkpoint-00000002.pt"
    state = Checkpoints.load(second)
    state["scaler"].update(scale=1024.0, _growth_tracker=7)
    torch.save(state, second)
    (tmp_path / "checkpoints" / "checkpoint-00000004.pt").unlink()
    _run(args)  # --resume auto: from step 2
    resumed = Checkpoints.load(tmp_path / "checkpoints" / "checkpoint-00000004.pt")["scaler"]
    assert (resumed["scale"], resumed["_growth_tracker"]) == (1024.0, 9), resumed
