"""The memory plan (``python -m vmae2.plan``, ``--with_checkpoint auto``) and the step simulation it rests on.

The simulation (:mod:`vmae2.training.step_memory`, fake tensors) is checked against what a real CPU step holds: the
tensors autograd saves (saved-tensor hooks), and the CPU allocator's bytes for ViT-S/B in every checkpointing mode
(``benchmarks/plan_check.py``, within 10%; measured within 1%). What a CPU cannot run, the CUDA step, is checked
piecewise: CUDA autocast's policy op by op, FlashAttention's saves equal to the CPU flash kernel's.
"""
import contextlib
import io
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from benchmarks.plan_check import KEYS, check
from vmae2.cli import parse_config
from vmae2.models import create_model
from vmae2.plan import main
from vmae2.runs.plan import GIB, memory_plan, resolve_checkpoint
from vmae2.train import PRETRAIN
from vmae2.training.step_memory import CudaSemantics, simulate_step

TINY = dict(num_frames=4, img_size=64)


def _meta(name="pretrain_videomae_tiny_patch16_224", **kw):
    with torch.device("meta"):
        return create_model(name, **{**TINY, **kw})


def test_counter_equals_the_tensors_autograd_saves():
    """Without checkpointing, what the forward leaves alive is exactly what autograd saved (+ the loss scalar)."""
    from vmae2 import masking
    from vmae2.loss import reconstruction_loss

    torch.manual_seed(0)
    model = create_model("pretrain_videomae_tiny_patch16_224", **TINY)
    video = torch.randn(2, 3, 4, 64, 64)
    enc, dec = masking.tube_ids(2, model.grid, 0.75), masking.running_cell_ids(2, model.grid, 0.5)
    known = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), video, enc, dec]}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in known:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        reconstruction_loss(model(video, enc, dec), video, enc, dec, patch_size=16)
    sim = simulate_step(_meta(), tuple(video.shape), enc.shape[1], dec.shape[1])
    assert sim.saved_bytes == sum(saved.values()) + 4  # + the fp32 loss, saved by no one
    assert set(sim.saved) == {f"{s}.{i}.{p}" for s in ("encoder", "decoder") for i in range(4)
                              for p in ("norm", "attn", "mlp")} | {"other", "loss", "encoder.3.kept", "decoder.3.kept"}


@pytest.mark.parametrize("size,frames", [("small", 16), ("base", 8)])
def test_plan_bytes_match_the_cpu_allocator(size, frames):
    """ViT-S at 16x224, ViT-B at 8x224 (its widths at half the tokens; 16x224 in ``benchmarks/plan_check.py``'s
    results file), batch 1, every mode: saved bytes and the step's peak (gradients kept, gradients None) within 10%
    of the allocator's (measured: within 1%), and every mode saves less than none."""
    rows = check(f"pretrain_videomae_{size}_patch16_224", 1, num_frames=frames)
    for r in rows:
        for k in KEYS:
            assert r[f"{k}_pred"] == pytest.approx(r[f"{k}_meas"], rel=0.10), r
    assert all(r["saved_meas"] < rows[0]["saved_meas"] for r in rows[1:]) and rows[-1]["mode"] == "full"


def test_flash_attention_saves_what_the_cpu_flash_kernel_saves():
    """FlashAttention's stand-in keeps q, k, v, out and the log-sum-exp, as torch's CPU flash kernel: same bytes per
    module (fp32, no autocast); its backward adds FA2's workspace."""
    cpu = simulate_step(_meta(), (2, 3, 4, 64, 64), 16, 32)
    cuda = simulate_step(_meta(), (2, 3, 4, 64, 64), 16, 32, cuda=True)
    assert cuda.saved == cpu.saved and cuda.flops == cpu.flops
    assert cuda.peak >= cpu.peak


def test_recomputation_flops_are_the_forward_ops_rerun():
    """What checkpointing adds is the forward that backward reruns, as :mod:`vmae2.flops` counts it; torch stops a
    recomputation once the saved tensors are back, so a branch's last matmul (fc2, proj) is not rerun."""
    from vmae2.flops import count_flops

    flops = {m: simulate_step(_meta(use_checkpoint=m), (2, 3, 4, 64, 64), 8, 16).flops for m in ("none", "attn", "mlp")}
    with torch.device("meta"):
        ids = torch.empty(2, 8, dtype=torch.int64), torch.empty(2, 16, dtype=torch.int64)
        forward = count_flops(_meta(), torch.empty(2, 3, 4, 64, 64), *ids)["forward_by_module"]

    def total(suffix):
        return sum(v for k, v in forward.items() if ".blocks." in k and k.endswith(suffix))

    assert flops["mlp"] - flops["none"] == total(".mlp.fc1") > 0
    assert flops["attn"] - flops["none"] == total(".attn") - total(".attn.proj") > 0


def test_cuda_autocast_policy():
    """CUDA's lists: matmuls/convolutions in bf16, LayerNorm and softmax in fp32 (CPU autocast would give bf16),
    cat in the widest type, everything else as its inputs; a parameter is cast once per step; gradients fp32."""
    lin, x = torch.nn.Linear(8, 8), torch.randn(4, 8)
    with CudaSemantics(torch.bfloat16) as mode:
        y = lin(x)
        z = F.layer_norm(y, (8,))
        assert (y.dtype, z.dtype, F.gelu(y).dtype, y.softmax(-1).dtype) == (torch.bfloat16, torch.float32,
                                                                             torch.bfloat16, torch.float32)
        assert torch.cat([y, z]).dtype == torch.float32 and (y @ z.T).dtype == torch.bfloat16
        lin(x).sum().backward()
        assert len(mode.cache) == 2  # weight and bias, cast once for both calls
    assert lin.weight.grad.dtype == torch.float32


def test_auto_resolves_on_the_cpu_to_no_checkpointing(capsys):
    cfg = parse_config(["--preset", "vit_g_hybrid_pt"], PRETRAIN)
    assert resolve_checkpoint(cfg, torch.device("cpu"), 1) == "none"
    assert "--with_checkpoint auto: none" in capsys.readouterr().out
    cfg.with_checkpoint = "every:3"
    assert resolve_checkpoint(cfg, torch.device("cuda"), 8) == "every:3"  # not auto: taken as given


def test_auto_resolves_on_a_gpu_to_the_plans_choice(monkeypatch, capsys):
    cfg = parse_config(["--preset", "vit_b_hybrid_pt", "--model", "pretrain_videomae_small_patch16_224",
                        "--batch_size", "2", "--with_checkpoint", "auto"], PRETRAIN)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * GIB))
    assert resolve_checkpoint(cfg, torch.device("cuda"), 2) == "none"  # ViT-S, 8 clips: everything fits
    assert "--with_checkpoint auto -> none (80.00 GiB GPU" in capsys.readouterr().out


def test_plan_takes_the_least_recomputation_that_fits():
    cfg = parse_config(["--preset", "vit_b_hybrid_pt", "--model", "pretrain_videomae_small_patch16_224",
                        "--batch_size", "2"], PRETRAIN)  # 8 clips of 16x224
    plan = memory_plan(cfg, 80 * GIB, world_size=2, modes=("none", "attn", "every:2", "full"))
    none, attn, every2, full = plan.modes
    assert none.step.flops < attn.step.flops < full.step.flops and every2.step.flops < full.step.flops
    assert none.peak > attn.peak > full.peak and none.static["DDP gradient buckets (fp32)"] > 0
    assert plan.choice is none  # everything fits 80 GiB
    # Between attn's and none's peaks both attn and every:2 fit; every:2 (half the blocks rerun: 381.9 GFLOP per step
    # against attn's 387.0, none's 342.0) is the cheaper one.
    plan.budget = (attn.peak + none.peak) // 2
    assert every2.peak < attn.peak <= plan.budget < none.peak
    assert plan.choice is every2
    plan.budget = full.peak - 1
    assert plan.choice is None


def test_cli_prints_the_vit_g_plan_on_an_h100():
    """ViT-g, 32 videos x 4 views per GPU, H100-80GB (budget 69.49 GiB). Full checkpointing fits, none does not;
    the plan is every:4: every:8 peaks at 74.26 GiB, every:4 at 68.06 GiB with 194.1 step TFLOP, below every other
    fitting mode (every:3 198.7, attn 200.3, mlp 203.7, every:2 204.4, full 224.7)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["--model", "pretrain_videomae_giant_patch14_224", "--batch_size", "32", "--gpu", "h100-80gb"])
    text = out.getvalue()
    assert rc == 0 and text.startswith("PREDICTED memory plan") and "--num_sample 4 = 128 clips per GPU" in text
    lines = text.splitlines()
    lines = lines[:next(i for i, line in enumerate(lines) if line.startswith("plan:")) + 2]  # notes follow the plan
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[6:-2])}
    modes, flops = rows["GiB"], rows["step TFLOP (recomputation included)"]
    fits = rows[next(k for k in rows if k.startswith("fits"))]
    assert fits[modes.index("none")] == "no" and fits[modes.index("full")] == "yes"
    assert [fits[modes.index(m)] for m in ("every:8", "every:4")] == ["no", "yes"]
    assert float(flops[modes.index("every:4")]) == pytest.approx(194.1, abs=0.05)
    assert lines[-2].split("--with_checkpoint ")[1].split(",")[0] == "every:4" and "PREDICTED" in lines[-1]
    assert text.rstrip().endswith("--compile may recompute on its own: not modelled")  # --compile auto: on a GPU
