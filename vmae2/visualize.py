"""``python -m vmae2.visualize CHECKPOINT VIDEO``: a PNG grid of what the model sees and reconstructs (matplotlib;
without it, the reason is printed and no file written).

Rows (one column per tubelet): original frames, the encoder mask (masked patches greyed), the decoder mask
(patches the decoder does not reconstruct greyed), and the reconstruction. A model trained on normalised
targets predicts normalised patches; they are de-normalised **with the true per-patch mean and std of the
original** (as the official visualisation does), which flatters the result; the row label says so.
Encoder-visible patches show the input; patches neither seen nor reconstructed stay grey.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from vmae2 import plot
from vmae2.cli import Command, check_fields, entry, opt
from vmae2.data.pretraining.clips import IMAGENET_MEAN, IMAGENET_STD
from vmae2.loss import denormalize_patches, patchify
from vmae2.masking import ids_to_mask
from vmae2.training import rundir

GREY = 0.5
MIN_WIDTH = 512  # pixels: narrower grids are enlarged by a whole factor to be readable
TITLE_HEIGHT = 20  # pixels above each row for its title
ROW_LABELS = ("original", "encoder input (grey = masked)", "decoder targets (grey = not reconstructed)")
RECON_LABEL = {True: "reconstruction (de-normalised with the true per-patch mean/std)",
               False: "reconstruction (raw pixel predictions)"}


def _unpatchify(patches: torch.Tensor, grid, p: int, tub: int) -> torch.Tensor:
    """``[N, tub*p*p, 3] -> [3, T, H, W]`` (inverse of :func:`patchify` for one clip)."""
    t, h, w = grid
    x = patches.reshape(t, h, w, tub, p, p, 3).permute(6, 0, 3, 1, 4, 2, 5)
    return x.reshape(3, t * tub, h * p, w * p)


@torch.no_grad()
def reconstruction_rows(model, video: torch.Tensor, enc_ids: torch.Tensor, dec_ids: torch.Tensor | None,
                        normalized_target: bool = True):
    """Four ``[3, T, H, W]`` tensors in [0, 1]: original, encoder view, decoder targets, reconstruction.
    ``normalized_target``: the model predicts per-patch-normalised pixels (official) rather than raw pixels."""
    model.eval()
    p, tub, grid = model.patch_size, model.tubelet_size, model.grid
    n = model.num_patches
    dec = dec_ids if dec_ids is not None else torch.sort(
        torch.argsort(ids_to_mask(enc_ids, n).to(torch.int8), dim=1, stable=True)[:, enc_ids.shape[1]:]).values
    pred = model(video, enc_ids, dec).float()[0]  # [Nd, P*3]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    original = (video[0].float().cpu() * std + mean).clamp(0, 1)  # [3, T, H, W]
    patches = patchify(original[None], p, tub)[0]  # [N, P, 3]
    enc_masked = ids_to_mask(enc_ids[:1].cpu(), n)[0]
    dec_visible = ~ids_to_mask(dec[:1].cpu(), n)[0]
    grey = torch.full_like(patches, GREY)
    encoder_view = torch.where(enc_masked[:, None, None], grey, patches)
    targets = torch.where(dec_visible[:, None, None], patches, grey)
    ids = dec[0].cpu()
    shown = pred.cpu().reshape(-1, patches.shape[1], 3)
    if normalized_target:  # de-normalise with the true statistics of each original patch
        shown = denormalize_patches(shown, patches[ids])
    recon = encoder_view.clone()
    recon[ids] = torch.where(enc_masked[ids][:, None, None], shown, patches[ids])
    rows = [original] + [_unpatchify(x, grid, p, tub) for x in (encoder_view, targets, recon.clamp(0, 1))]
    return rows


def reconstruction_grid(model, video, enc_ids, dec_ids, normalized_target: bool = True):
    """The grid as ``(Figure, None)``, or ``(None, reason)`` without matplotlib: one row per
    :func:`reconstruction_rows` tensor (titled), one column per tubelet's first frame, each image pixel drawn as a
    ``scale x scale`` block (a whole factor: grids narrower than ``MIN_WIDTH`` are enlarged), 100 dpi."""
    rows = reconstruction_rows(model, video, enc_ids, dec_ids, normalized_target)
    frames = [torch.cat(list(r[:, ::model.tubelet_size].unbind(1)), dim=2).permute(1, 2, 0).numpy() for r in rows]
    h, w = frames[0].shape[:2]
    scale = max(1, MIN_WIDTH // w)
    total = len(frames) * (h * scale + TITLE_HEIGHT)
    fig, reason = plot.figure(figsize=(w * scale / 100, total / 100), dpi=100)
    if fig is None:
        return None, reason
    for i, (label, img) in enumerate(zip(ROW_LABELS + (RECON_LABEL[normalized_target],), frames)):
        bottom = total - (i + 1) * (h * scale + TITLE_HEIGHT)
        ax = fig.add_axes((0, bottom / total, 1, h * scale / total))
        ax.imshow(img, interpolation="nearest", aspect="auto")
        ax.set_title(label, loc="left", fontsize=9, pad=3)
        ax.set_axis_off()
    return fig, None


def save_reconstruction_png(model, video, enc_ids, dec_ids, path, normalized_target: bool = True) -> str | None:
    """Write :func:`reconstruction_grid` as the PNG ``path`` and return None; without matplotlib write nothing and
    return the one-line reason (``"reconstruction.png skipped: matplotlib is not importable (...)"``)."""
    return plot.save(*reconstruction_grid(model, video, enc_ids, dec_ids, normalized_target), path)


RUN_DEFAULT = "default: the run's (its checkpoint or config.json), else {}"
FROM_THE_RUN = ("model", "num_frames", "input_size", "sampling_rate", "mask_ratio", "decoder_mask_ratio")


@dataclass
class VisualizeConfig:
    """The options of ``python -m vmae2.visualize``; the model and geometry default to those of the run that wrote
    the checkpoint (:func:`run_values`)."""

    checkpoint: str | None = opt(None, "a vmae2 training checkpoint (.pt), or weights (.safetensors/.pth) with "
                                       "--model (required, no default)", positional="CHECKPOINT", path=True)
    video: str | None = opt(None, "a video file (required, no default)", positional="VIDEO", path=True)
    out: str = opt("reconstruction.png", "the PNG written")
    model: str | None = opt(None, RUN_DEFAULT.format(None))
    num_frames: int = opt(16, RUN_DEFAULT.format(16), ">= 1")
    input_size: int = opt(224, RUN_DEFAULT.format(224), ">= 1")
    sampling_rate: int = opt(4, RUN_DEFAULT.format(4), ">= 1")
    mask_ratio: float = opt(0.9, RUN_DEFAULT.format(0.9), "[0, 1)")
    decoder_mask_ratio: float = opt(0.5, RUN_DEFAULT.format(0.5), "[0, 1)")
    seed: int = opt(0, "seed of the masks (default: 0)")

    def validate(self):
        """Raise ``ValueError`` naming the first missing or invalid value; return ``self``."""
        if self.checkpoint is None or self.video is None:
            raise ValueError("give a checkpoint and a video: python -m vmae2.visualize CHECKPOINT VIDEO")
        check_fields(self)
        if self.model is None:
            raise ValueError("--model is needed for weights without a vmae2 run (config.json) beside them")
        return self


def run_config(checkpoint: str) -> tuple[str | None, dict]:
    """``(source, options)`` of the run that wrote ``checkpoint``: the options a ``.pt`` training checkpoint holds,
    else the ``config.json`` beside the weights (``(None, {})`` when there is neither)."""
    if checkpoint.endswith(".pt"):
        from vmae2.training.state import Checkpoints

        return checkpoint, Checkpoints.load(checkpoint).get("config", {})
    found = rundir.read(checkpoint)
    return (str(found[0]), found[1]) if found else (None, {})


def run_values(values: dict) -> tuple[str | None, dict]:
    """The :class:`~vmae2.cli.Command` ``inherit`` hook: the model and geometry of the checkpoint's run."""
    if not values.get("checkpoint") or not os.path.isfile(values["checkpoint"]):
        return None, {}  # validate() names the missing file
    source, config = run_config(values["checkpoint"])
    return source, {k: config[k] for k in FROM_THE_RUN if config.get(k) is not None}


VISUALIZE = Command("python -m vmae2.visualize", __doc__.splitlines()[0], VisualizeConfig, inherit=run_values)


def run(cfg: VisualizeConfig) -> int:
    """Build the model of ``cfg``, load its weights, and write the grid of one clip of ``cfg.video``."""
    from vmae2 import masking
    from vmae2.data.pretraining.clips import augment
    from vmae2.data.decode import BadVideo, decode_frames, probe
    from vmae2.data.lists import VideoRecord
    from vmae2.data.pretraining.sampling import Crop, frame_ids
    from vmae2.models import create_model
    from vmae2.training.state import Checkpoints
    from vmae2.weights import load_weights

    if cfg.checkpoint.endswith(".pt"):
        state = Checkpoints.load(cfg.checkpoint)
        config, weights = state.get("config", {}), state["model"]
    else:
        config, weights = run_config(cfg.checkpoint)[1], cfg.checkpoint
    model = create_model(cfg.model, num_frames=cfg.num_frames, img_size=cfg.input_size,
                         decoder_depth=config.get("decoder_depth", 4), attn_backend="sdpa")
    load_weights(model, weights, strict=False)
    record = VideoRecord(cfg.video, 0, -1, -1, True, "", cfg.sampling_rate, "cli")
    try:
        info = probe(record)
        frames = decode_frames(record, frame_ids(0, info.num_frames, cfg.num_frames, cfg.sampling_rate), info)
    except BadVideo as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    side = min(info.width, info.height)  # centre square crop
    crop = Crop((info.width - side) // 2, (info.height - side) // 2, side, side)
    video = augment(frames, crop, cfg.input_size)[None]
    g = torch.Generator().manual_seed(cfg.seed)
    enc = masking.tube_ids(1, model.grid, cfg.mask_ratio, generator=g)
    dec = masking.running_cell_ids(1, model.grid, cfg.decoder_mask_ratio, generator=g)
    print(save_reconstruction_png(model, video, enc, dec, cfg.out, config.get("normalize_target", True))
          or f"wrote {cfg.out}")
    return 0


main = entry(VISUALIZE, "vmae2.visualize:run")


if __name__ == "__main__":
    raise SystemExit(main())
