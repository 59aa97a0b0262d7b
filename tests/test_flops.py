"""FLOP counting: the paper's MAC figures, CPU SDPA counted, the vmae2:: custom ops harmless."""
from __future__ import annotations

import pytest
import torch
from torch.utils import flop_counter

from vmae2.flops import count_flops, macs_per_clip, mfu, peak_flops, peak_for, register_flop_formulas, token_counts
from vmae2.masking import running_cell_ids, tube_ids
from vmae2.models import create_model

BASE = "pretrain_videomae_base_patch16_224"
GIANT = "pretrain_videomae_giant_patch14_224"
TINY = "pretrain_videomae_tiny_patch16_224"

# Paper Tables 1-2 "FLOPs" (multiply-accumulates, G) and the counts re-derived from the official architecture
# (reference doc section 8.2). Tube masking 0.9 everywhere; decoder ratio None = no decoder masking (v1).
PAPER = [
    (BASE, None, 35.48, 35.44),
    (BASE, 0.25, 31.63, 31.59),
    (BASE, 0.5, 25.87, 25.84),
    (BASE, 0.75, 21.06, 21.03),
    (GIANT, None, 263.93, 263.96),
    (GIANT, 0.5, 241.61, 241.61),
]


@pytest.mark.parametrize("name, dec_ratio, paper, derived", PAPER,
                         ids=[f"{n.split('_')[2]}-{r}" for n, r, _, _ in PAPER])
def test_macs_per_clip_match_paper(name, dec_ratio, paper, derived):
    gmacs = macs_per_clip(name, 0.9, dec_ratio, embed_tokens="all", decoder_rows="all")  # the paper's (official) work
    assert gmacs == pytest.approx(paper, rel=5e-3)
    assert gmacs == pytest.approx(derived, abs=0.006)  # the independent derivation, to its 2 decimals


# Dual masking (tube 0.9, running cell 0.5), forward GMACs: every tubelet embedded (= paper) vs only the visible
# ones (ViT-g's 238.567 is 238.57 to two decimals). The saving is the embedding of the masked
# tubelets, (N - Nv) * D * 3 * t * p^2 MACs: ViT-S/16 (1568 - 160) * 384 * 1536 = 0.83 G.
VISIBLE_ONLY = [
    ("pretrain_videomae_small_patch16_224", 7.84, 7.01, (1568, 160, 384, 1536)),
    (BASE, 25.84, 24.18, (1568, 160, 768, 1536)),
    ("pretrain_videomae_large_patch16_224", 68.27, 66.06, (1568, 160, 1024, 1536)),
    ("pretrain_videomae_huge_patch16_224", 122.09, 119.32, (1568, 160, 1280, 1536)),
    (GIANT, 241.61, 238.57, (2048, 208, 1408, 1176)),
]


@pytest.mark.parametrize("name", ["pretrain_videomae_small_patch16_224", BASE, GIANT])
def test_last_decoder_block_skips_the_visible_rows(name):
    """The default computes only the predicted rows in the last decoder block. Per dropped row (the Nv visible
    tokens) that is its queries' scores and weighted sum over all N = Nv + Nd keys (2 N D MACs), the output
    projection (D^2) and the MLP (2 D H, H its hidden width); the qkv projection still covers every row."""
    from vmae2.models import SIZES

    cfg = SIZES[name.split("_")[2]]
    D, H = cfg.decoder_embed_dim, int(cfg.decoder_embed_dim * cfg.mlp_ratio)
    n_vis, n_dec = (208, 1024) if name == GIANT else (160, 784)
    saved = macs_per_clip(name, 0.9, 0.5, decoder_rows="all") - macs_per_clip(name, 0.9, 0.5)
    assert saved == pytest.approx(n_vis * (2 * (n_vis + n_dec) * D + D * D + 2 * D * H) / 1e9, rel=1e-9)


@pytest.mark.parametrize("name, every_tubelet, visible_only, sizes", VISIBLE_ONLY,
                         ids=[v[0].split("_")[2] for v in VISIBLE_ONLY])
def test_visible_only_embedding_macs(name, every_tubelet, visible_only, sizes):
    full = macs_per_clip(name, 0.9, 0.5, embed_tokens="all", decoder_rows="all")
    visible = macs_per_clip(name, 0.9, 0.5, decoder_rows="all")
    assert full == pytest.approx(every_tubelet, abs=0.006) and visible == pytest.approx(visible_only, abs=0.006)
    n, nv, dim, width = sizes
    assert full - visible == pytest.approx((n - nv) * dim * width / 1e9, rel=1e-9)


def test_frame_and_random_decoder_masks_cost_the_same_as_running_cell():
    # Paper Table 1: frame / random / running cell at 50 % all cost 25.87 G (same number of decoded tokens).
    run_cell = macs_per_clip(BASE, 0.9, 0.5)
    for kind in ("frame", "random"):
        assert macs_per_clip(BASE, 0.9, 0.5, decoder_mask_type=kind) == pytest.approx(run_cell, rel=1e-12)


def test_token_counts():
    assert token_counts((8, 14, 14), 0.9, 0.5) == (160, 784)
    assert token_counts((8, 14, 14), 0.9, None) == (160, 1408)
    assert token_counts((8, 16, 16), 0.9, 0.5) == (208, 1024)
    with pytest.raises(ValueError, match="unknown"):
        token_counts((8, 14, 14), 0.9, 0.5, "checkerboard")


@pytest.mark.parametrize("embed_tokens", ["all", "visible"])
def test_count_flops_breakdown_and_decoder_share(embed_tokens):
    with torch.device("meta"):
        model = create_model(BASE, embed_tokens=embed_tokens, decoder_rows="all")
        video = torch.empty(2, 3, 16, 224, 224)
        enc = torch.empty(2, 160, dtype=torch.int64)
        dec = torch.empty(2, 784, dtype=torch.int64)
    r = count_flops(model, video, enc, dec)
    assert r["batch"] == 2 and r["backward_flops"] == 0 and r["total_flops"] == r["forward_flops"]
    assert r["forward_macs"] / 2 / 1e9 == pytest.approx(25.84 if embed_tokens == "all" else 24.18, abs=0.006)
    assert sum(r["by_op"].values()) == r["total_flops"]
    assert r["by_module"][""] == r["total_flops"]
    parts = ("encoder", "encoder_to_decoder", "decoder")
    assert sum(r["by_module"][p] for p in parts) == r["total_flops"]
    # Reference doc 8.2: ViT-B decoder (+ e2d + head) share 19.5 -> 9.9 GMACs when rho_d goes 0 -> 0.5.
    dec_gmacs = (r["by_module"]["decoder"] + r["by_module"]["encoder_to_decoder"]) / 2 / 2e9
    assert dec_gmacs == pytest.approx(9.9, abs=0.06)
    # Patch embedding, 768 * (3*2*16*16) MACs per tubelet: all 1568 by the Conv3d, or the 160 visible by one GEMM
    if embed_tokens == "all":
        assert r["by_module"]["encoder.patch_embed"] == r["by_op"]["aten.convolution"] == 2 * 2 * 1568 * 768 * 1536
    else:
        assert "aten.convolution" not in r["by_op"]
        blocks = sum(v for k, v in r["by_module"].items() if k.startswith("encoder.blocks.") and k.count(".") == 2)
        assert r["by_module"]["encoder"] - blocks == 2 * 2 * 160 * 768 * 1536


def _tiny(backend: str):
    torch.manual_seed(0)
    model = create_model(TINY, attn_backend=backend, num_frames=4, img_size=64, decoder_rows="all")
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(2, 3, 4, 64, 64, generator=gen)
    enc = tube_ids(2, model.grid, 0.75, generator=gen)
    dec = running_cell_ids(2, model.grid, 0.5, generator=gen)
    return model, video, enc, dec


def _attention_flops(model, enc, dec) -> int:
    """Analytic forward attention FLOPs: 4 * B * heads * N^2 * head_dim per layer (QK^T and PV)."""
    b, nv, nd = enc.shape[0], enc.shape[1], dec.shape[1]
    total = 0
    for name, mod in model.named_modules():
        if type(mod).__name__ == "Attention":
            n = nv if name.startswith("encoder.") else nv + nd
            total += 4 * b * mod.num_heads * n * n * mod.head_dim
    return total


def test_cpu_sdpa_is_counted_like_math():
    model_s, video, enc, dec = _tiny("sdpa")
    model_m = _tiny("math")[0]
    rs = count_flops(model_s, video, enc, dec, backward=True)
    rm = count_flops(model_m, video, enc, dec, backward=True)
    fwd_op = "aten._scaled_dot_product_flash_attention_for_cpu"
    attn = _attention_flops(model_s, enc, dec)
    assert rs["forward_by_op"][fwd_op] == attn  # the CPU SDPA kernel plain FlopCounterMode misses
    assert rm["forward_by_op"]["aten.bmm"] == attn
    assert rs["forward_flops"] == rm["forward_flops"]
    # Backward: flash-style SDPA recomputes Q K^T (2.5x forward), the math autograd graph is 2x forward.
    assert rs["backward_by_op"][fwd_op + "_backward"] == 5 * attn // 2
    assert rm["backward_by_op"]["aten.bmm"] == 2 * attn
    assert rs["backward_flops"] - rm["backward_flops"] == attn // 2
    # Linear backward is 2x forward (grad input + grad weight), but the patch embedding's: only grad weight (the
    # video needs no gradient); 64 * 1536 MACs per visible tubelet (the tiny model's width, 3 * 2 * 16 * 16).
    embed = 2 * enc.numel() * model_s.cfg.embed_dim * 1536
    assert rs["backward_by_op"]["aten.mm"] == 2 * (rs["forward_by_op"]["aten.addmm"]
                                                   + rs["forward_by_op"]["aten.mm"]) - embed


def test_meta_and_cpu_counts_agree():
    model, video, enc, dec = _tiny("sdpa")
    cpu = count_flops(model, video, enc, dec)
    with torch.device("meta"):
        meta_model = create_model(TINY, attn_backend="sdpa", num_frames=4, img_size=64, decoder_rows="all")
    meta = count_flops(meta_model, video.to("meta"), enc.to("meta"), dec.to("meta"))
    assert meta["forward_flops"] == cpu["forward_flops"]


def test_custom_ops_count_zero_and_do_not_break_counting():
    model, video, enc, dec = _tiny("sdpa")
    for d in (dec, None):  # dual masking and v1
        r = count_flops(model, video, enc, d, backward=True)
        assert r["total_flops"] > r["forward_flops"] > 0
        for op in ("tubelet_gather", "decoder_input", "recon_loss", "recon_loss_backward", "mask_token_grad"):
            assert r["by_op"][f"vmae2.{op}"] == 0
        assert model.mask_token.grad is not None  # the custom ops' autograd ran under the counter
        model.zero_grad(set_to_none=True)


def test_register_is_idempotent():
    register_flop_formulas()
    assert register_flop_formulas() == []
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in flop_counter.flop_registry
    assert torch.ops.vmae2.recon_loss in flop_counter.flop_registry


def test_mfu():
    assert mfu(1e12, 0.5, 4e12) == pytest.approx(0.5)
    assert mfu(0, 1.0, 1.0) == 0
    assert mfu(1e12, 1.0, None) is None  # no known peak (a CPU, an unlisted GPU)
    for bad in ((1e12, 0.0, 1e12), (1e12, 1.0, 0.0), (-1.0, 1.0, 1.0), (1e12, float("nan"), 1.0)):
        with pytest.raises(ValueError, match="must be a finite positive number"):
            mfu(*bad)


def test_peak_follows_the_run_precision():
    """Datasheet dense peaks (TFLOP/s): H100 SXM bf16/fp16 989, TF32 494.5, fp32 67; A100 312 / 156 / 19.5."""
    h100, a100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
    assert peak_for(h100, "bf16") == peak_for(h100, "fp16") == 989e12
    assert peak_for(h100, "fp32") == 67e12 and peak_for(h100, "fp32", tf32=True) == 494.5e12
    assert peak_for(a100, "bf16") == 312e12 and peak_for(a100, "fp32") == 19.5e12
    assert peak_for(a100, "fp32", tf32=True) == 156e12 and peak_for(a100, "fp16", tf32=True) == 312e12
    assert peak_for("NVIDIA H200", "bf16") == 989e12 and peak_for("Tesla V100-SXM2-16GB", "bf16") is None
    # PCIe and NVL parts before the plain names they contain: H100 PCIe 756 / 378 / 51, H100 NVL 835
    assert peak_for("NVIDIA H100 PCIe", "bf16") == 756e12 and peak_for("NVIDIA H100 PCIe", "fp32") == 51e12
    assert peak_for("NVIDIA H100 PCIe", "fp32", tf32=True) == 378e12 and peak_for("NVIDIA H100 NVL", "fp16") == 835e12
    assert peak_flops(torch.device("cpu"), "fp32") is None
    with pytest.raises(ValueError, match="precision 'fp8' is unknown"):
        peak_for(h100, "fp8")


def test_logged_mfu_divides_by_the_fp32_peak_in_an_fp32_run(tmp_path, monkeypatch):
    """A 3-step fp32 run whose device reports itself as an H100: each logged MFU is clips/s x 3 x the forward FLOPs
    of one clip (counted by FlopCounterMode on the run's model shape and token counts) / 67e12, the H100's fp32
    peak (the run keeps matmuls in full fp32), not its bf16 peak 989e12."""
    import json

    import vmae2.runs.pretrain
    from vmae2.data.synthetic import make_videos
    from vmae2.train import main

    asked = []

    def h100_peak(device, precision):
        asked.append(precision)
        return peak_for("NVIDIA H100 80GB HBM3", precision, tf32=torch.backends.cuda.matmul.allow_tf32)

    monkeypatch.setattr(vmae2.runs.pretrain, "peak_flops", h100_peak)
    make_videos(tmp_path / "videos", 2, seed=0, sizes=((96, 64),), num_frames=(24,))
    out = tmp_path / "run"
    assert main(["--preset", "demo", "--num_frames", "4", "--input_size", "64", "--batch_size", "2",
                 "--num_sample", "1", "--num_workers", "0", "--max_steps", "3", "--log_every", "1",
                 "--data_path", str(tmp_path / "videos" / "train.csv"), "--output_dir", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "mfu" in r]
    config = json.loads((out / "config.json").read_text())
    config = config.get("config", config)
    model = create_model(config["model"], num_frames=4, img_size=64, tubelet_size=config["tubelet_size"],
                         decoder_depth=config["decoder_depth"])
    nv, nd = token_counts(model.grid, config["mask_ratio"], config["decoder_mask_ratio"],
                          config["decoder_mask_type"])
    video = torch.zeros(1, 3, 4, 64, 64)
    forward = count_flops(model, video, torch.zeros(1, nv, dtype=torch.long),
                          torch.zeros(1, nd, dtype=torch.long))["forward_flops"]
    assert len(records) == 3 and set(asked) == {"fp32"}
    for r in records:
        assert r["mfu"] == pytest.approx(r["clips_per_s"] * 3 * forward / 67e12, rel=2e-3), r


def test_training_mfu_formula_matches_the_counted_forward():
    """vmae2.training.distributed's closed-form FLOPs (used for MFU while training) = 3 x the counted forward."""
    import torch

    from vmae2.flops import count_flops, model_flops_per_clip
    from vmae2.models import create_model

    with torch.device("meta"):
        model = create_model("pretrain_videomae_base_patch16_224")
        video = torch.empty(1, 3, 16, 224, 224)
        enc = torch.zeros(1, 160, dtype=torch.long)
        dec = torch.zeros(1, 784, dtype=torch.long)
    counted = count_flops(model, video, enc, dec)["forward_flops"]
    assert model_flops_per_clip(model, 160, 784) == pytest.approx(3 * counted, rel=1e-3)
