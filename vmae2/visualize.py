"""``python -m vmae2.visualize CHECKPOINT VIDEO``: a PNG grid of what the model sees and reconstructs (matplotlib;
without it, the reason is printed and no file written).

Rows (one column per tubelet): original frames, the encoder mask (masked patches greyed), the decoder mask
(patches the decoder does not reconstruct greyed), and the reconstruction. A model trained on normalised
targets predicts normalised patches; they are de-normalised **with the true per-patch mean and std of the
original** (as the official visualisation does), which flatters the result; the row label says so.
Encoder-visible patches show the input; patches neither seen nor reconstructed stay grey.
"""
from __future__ import annotations

import argparse
import sys

import torch

from vmae2 import plot, rundir
from vmae2.data.clips import IMAGENET_MEAN, IMAGENET_STD
from vmae2.loss import denormalize_patches, patchify
from vmae2.masking import ids_to_mask

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


def main(argv: list[str] | None = None) -> int:
    from vmae2 import masking
    from vmae2.checkpoint import load_weights
    from vmae2.data.clips import augment
    from vmae2.data.decode import BadVideo, decode_frames, probe
    from vmae2.data.lists import VideoRecord
    from vmae2.data.sampling import Crop, frame_ids
    from vmae2.models import create_model
    from vmae2.runtime import Checkpoints

    parser = argparse.ArgumentParser(prog="python -m vmae2.visualize", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a vmae2 training checkpoint (.pt), or weights (.safetensors/.pth) "
                                           "with --model")
    parser.add_argument("video", help="a video file")
    parser.add_argument("--out", default="reconstruction.png")
    defaults = {"model": None, "num_frames": 16, "input_size": 224, "sampling_rate": 4, "mask_ratio": 0.9,
                "decoder_mask_ratio": 0.5}
    for name, value in defaults.items():
        parser.add_argument(f"--{name}", type=type(value) if value is not None else str, default=None,
                            help=f"default: the run's (its checkpoint or config.json), else {value}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks (default: 0)")
    args = parser.parse_args(argv)

    config = {}
    if args.checkpoint.endswith(".pt"):
        state = Checkpoints.load(args.checkpoint)
        config, weights = state.get("config", {}), state["model"]
    else:
        weights = args.checkpoint
        config = (rundir.read(weights) or (None, {}))[1]  # the config.json of the run that wrote the weights
    chosen = {}
    for name, value in defaults.items():
        flag, run = getattr(args, name), config.get(name)
        if flag is not None and run is not None and flag != run:
            print(f"warning: --{name} {flag} differs from the run's {run}; using {flag}", file=sys.stderr)
        chosen[name] = flag if flag is not None else run if run is not None else value
    if chosen["model"] is None:
        print("error: --model is needed for weights without a vmae2 run (config.json) beside them", file=sys.stderr)
        return 2
    num_frames, size, rate = chosen["num_frames"], chosen["input_size"], chosen["sampling_rate"]
    model = create_model(chosen["model"], num_frames=num_frames, img_size=size,
                         decoder_depth=config.get("decoder_depth", 4), attn_backend="sdpa")
    load_weights(model, weights, strict=False)
    record = VideoRecord(args.video, 0, -1, -1, True, "", rate, "cli")
    try:
        info = probe(record)
        frames = decode_frames(record, frame_ids(0, info.num_frames, num_frames, rate), info)
    except BadVideo as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    side = min(info.width, info.height)  # centre square crop
    crop = Crop((info.width - side) // 2, (info.height - side) // 2, side, side)
    video = augment(frames, crop, size)[None]
    g = torch.Generator().manual_seed(args.seed)
    enc = masking.tube_ids(1, model.grid, chosen["mask_ratio"], generator=g)
    dec = masking.running_cell_ids(1, model.grid, chosen["decoder_mask_ratio"], generator=g)
    print(save_reconstruction_png(model, video, enc, dec, args.out, config.get("normalize_target", True))
          or f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
