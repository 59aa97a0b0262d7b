"""Items of ``python -m benchmarks.gpu.check`` beyond the per-op forward checks: backward with non-contiguous
upstream gradients, ragged and odd shapes and layouts, one case past 2^31 elements, a side stream, a CUDA-graph
replay, ``torch.compile(fullgraph=True)`` of the step, ``compute-sanitizer`` memcheck, the MFU peak of the card found
and the first-step losses of the step arms.

Each function takes the device (and the provider: ``triton``, or ``cuda`` for the native build) and returns the
result dict of a :class:`benchmarks.gpu.check.Recorder` item: ``{"status": "skip", "detail": reason}`` where it
cannot run here, else what it measured; a mismatch raises ``AssertionError`` naming the case. On the CPU the Triton
items run under the interpreter at the same (small) sizes as on the GPU, except the 2^31 case (scaled down, and
said so) and the CUDA-only ones (skipped with the reason).
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TWO_31 = 2 ** 31


def _cuda_only(device) -> dict | None:
    if device.type != "cuda":
        return {"status": "skip", "detail": f"needs a CUDA device (this run is on {device.type})"}
    return None


def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def _ids(B: int, N: int, K: int, device, seed: int = 0):
    """``[B, K]`` int64 ids unique per row, in random order (the kernels take any order)."""
    import torch

    g = _gen(seed)
    rows = [torch.randperm(N, generator=g)[:K] for _ in range(B)]
    return (torch.stack(rows) if rows else torch.zeros(0, K, dtype=torch.int64)).to(device)


def _grads(fn, inputs: list, upstream) -> list:
    """Gradients of ``fn(*inputs)`` for ``upstream`` w.r.t. every input, on fresh leaves."""
    import torch

    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    return list(torch.autograd.grad(fn(*leaves), leaves, upstream))


# -- backward -------------------------------------------------------------------------------------------------------

def check_loss_backward_p14(device, provider: str = "triton") -> dict:
    """The fused loss's gradient at patch 14 (ViT-g: 392 pixels in a 512 tile, the padded lanes) in fp32, for an
    upstream gradient that is a 0-dim view at a storage offset, against the reference."""
    import torch

    from benchmarks import cases
    from benchmarks.gpu.check import compare
    from benchmarks.gpu.roofline import ALL_SHAPES
    from vmae2_kernels import ops

    shape = ALL_SHAPES["ViT-g"]
    setting = cases.Setting(device, 1, torch.float32)
    _, dec = cases.mask_ids(shape, setting)
    dec = dec[:, :48]  # 48 tokens: the tile, not the size, is under test
    video = cases.randn(setting, 1, 3, shape.frames, shape.image, shape.image, seed=3)
    pred = cases.randn(setting, 1, dec.shape[1], shape.pred_dim, seed=1)
    weights = (torch.rand(1, dec.shape[1], generator=_gen(2)) < 0.7).float().to(device)
    upstream = torch.tensor([0.0, 0.75], device=device)[1]  # storage offset 1

    def grad(backend):
        return _grads(lambda p: ops.recon_loss(p, video, dec, weights, shape.patch, shape.tubelet, 1, cases.MEAN,
                                               cases.STD, backend), [pred], upstream)[0]

    return {"grad_vs_torch": compare(grad(provider), grad("torch"))["match"]}


def check_table_gradients(device, provider: str = "triton") -> dict:
    """Gradients of ``x`` and a learnable position table through ``token_gather``, and of ``x_vis``, the mask token
    and the table through ``decoder_input``, for transposed and strided upstream gradients, against the reference."""
    import torch

    import vmae2_kernels as K
    from benchmarks.gpu.check import compare

    B, N, C, Kk, Nd = 2, 196, 96, 37, 60
    g = _gen(0)
    x, pos = torch.randn(B, N, C, generator=g).to(device), torch.randn(N, C, generator=g).to(device)
    vis, dec = _ids(B, N, Kk, device, 1), _ids(B, N, Nd, device, 2)
    up_gather = torch.randn(B, C, Kk, generator=g).to(device).transpose(1, 2)  # non-contiguous
    up_dec = torch.randn(B, Kk + Nd, 2 * C, generator=g).to(device)[..., ::2]  # strided
    token = torch.randn(C, generator=g).to(device)
    out = {}
    for name, fn, inputs, upstream in (
            ("token_gather", lambda b: (lambda a, p: K.token_gather(a, vis, p, backend=b)), [x, pos], up_gather),
            ("decoder_input", lambda b: (lambda a, t, p: K.decoder_input(a, vis, dec, t, p, backend=b)),
             [x[:, :Kk], token, pos], up_dec)):
        assert not upstream.is_contiguous()
        got, ref = _grads(fn(provider), inputs, upstream), _grads(fn("torch"), inputs, upstream)
        out[name] = [compare(a, r)["match"] for a, r in zip(got, ref)]
    return out


# -- ragged and odd shapes, layouts ---------------------------------------------------------------------------------

RAGGED = [(3, 37, 13, 11), (2, 300, 200, 150), (1, 5, 1, 5), (0, 10, 8, 4), (2, 10, 8, 0), (2, 70, 136, 33)]
LAYOUTS = ("contiguous", "expanded", "strided", "offset")


def _layout(t, layout: str):
    """``t`` (float ``[B, R, C]``) as the same values in another memory layout: a batch-expanded view (row 0 of the
    batch for every sample: the values change), every other element of a wider tensor, or one element past an
    aligned start."""
    import torch

    if layout == "expanded":
        return t[:1].expand_as(t) if t.shape[0] else t
    if layout == "strided":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "offset":
        flat = torch.zeros(t.numel() + 1, dtype=t.dtype, device=t.device)
        flat[1:] = t.reshape(-1)
        return flat[1:].view(t.shape)
    return t


def check_ragged(device, provider: str = "triton", dtypes=("float32", "float16")) -> dict:
    """Row ops at K, C not multiples of 16/128/256, odd C, B = 0, K = 0, in fp32 and fp16, for contiguous,
    expanded, strided and offset inputs; the tubelet gather and the loss on strided and offset videos: against the
    reference (the last-block masks and the CUDA non-vector fallbacks)."""
    import torch

    import vmae2_kernels as K
    from vmae2_kernels import ops

    count = 0
    for (B, N, C, Kk), dtype, layout in ((s, d, lay) for s in RAGGED for d in dtypes for lay in LAYOUTS):
        dt = getattr(torch, dtype)
        case = f"B={B} N={N} C={C} K={Kk} {dtype} {layout}"
        g = _gen(count)
        x = _layout(torch.randn(B, N, C, generator=g).to(device, dt), layout)
        src = _layout(torch.randn(B, Kk, C, generator=g).to(device, dt), layout)
        pos, token = torch.randn(N, C, generator=g).to(device), torch.randn(C, generator=g).to(device)
        vis, dec = _ids(B, N, Kk, device, 1), _ids(B, N, max(1, N - Kk), device, 2)
        runs = {"token_gather": lambda b: K.token_gather(x, vis, pos, backend=b),
                "token_gather_nopos": lambda b: K.token_gather(x, vis, backend=b),
                "token_scatter": lambda b: K.token_scatter(src, vis, N, backend=b),
                "decoder_input": lambda b: K.decoder_input(src, vis, dec, token, pos, backend=b),
                "mask_token_grad": lambda b: ops.mask_token_grad(x, min(Kk, N), b)}
        count += _against_reference(runs, provider, case)
    return {"cases": count + _ragged_videos(device, provider, dtypes)}


def _against_reference(runs: dict, provider: str, case: str) -> int:
    """Each ``runs[op](backend)`` on ``provider`` against the plain-torch reference; the number compared. A mismatch
    raises ``AssertionError`` naming the op and ``case``."""
    from benchmarks.gpu.check import compare

    for op, run in runs.items():
        try:
            compare(run(provider), run("torch"))
        except AssertionError as exc:
            raise AssertionError(f"{op} {case}: {exc}") from None
    return len(runs)


def _ragged_videos(device, provider: str, dtypes) -> int:
    """tubelet_gather and the loss on strided (a crop of a wider clip) and offset videos, patch 14 and 16."""
    import torch

    from benchmarks import cases
    from vmae2_kernels import ops

    count = 0
    for patch, dtype, layout in ((p, d, lay) for p in (14, 16) for d in dtypes for lay in ("strided", "offset")):
        dt = getattr(torch, dtype)
        B, T, H, W = 2, 4, 2 * patch, 3 * patch
        base = torch.randn(B, 3, T, H, W + (patch if layout == "strided" else 0), generator=_gen(count))
        video = base.to(device, dt)[..., :W] if layout == "strided" else _layout(base.to(device, dt), "offset")
        N = (T // 2) * (H // patch) * (W // patch)
        ids = _ids(B, N, 5, device, 3)
        pred = torch.randn(B, 5, 6 * patch * patch, generator=_gen(4)).to(device, dt)
        weights = torch.ones(B, 5, device=device)
        runs = {"tubelet_gather": lambda b: ops.tubelet_gather(video, ids, patch, 2, b),
                "recon_loss": lambda b: ops.recon_loss(pred, video, ids, weights, patch, 2, 1, cases.MEAN,
                                                       cases.STD, b)}
        count += _against_reference(runs, provider, f"patch {patch} {dtype} {layout} video")
    return count


# -- past 2^31 elements ---------------------------------------------------------------------------------------------

def _memory_reason(device, need_bytes: int) -> str | None:
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    if free < 1.25 * need_bytes:
        return f"needs {need_bytes / 2 ** 30:.1f} GiB (+25 %) of free GPU memory, {free / 2 ** 30:.1f} GiB free"
    return None


def check_past_2_31(device, what: str, provider: str = "triton", smoke: bool = False) -> dict:
    """``what = "token_scatter"``: an output ``[1, N, 1024]`` past 2^31 elements, rows written near its end;
    ``"video"``: a bf16 clip batch past 2^31 elements, tubelets and the loss of its last clip. Checked against the
    reference on the slice that holds them (and the rest of the output still zero). On the CPU (``smoke``) the
    same code at 2^16 elements: it proves the script, not the 64-bit offsets."""
    import torch

    elements = 2 ** 16 if smoke and device.type == "cpu" else TWO_31 + 2 ** 24
    if device.type == "cpu" and not smoke:
        return {"status": "skip", "detail": "past 2^31 elements runs on the GPU only"}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    esize = torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        reason = _memory_reason(device, elements * esize * 2)
        if reason:
            return {"status": "skip", "detail": reason}
    run = _scatter_past if what == "token_scatter" else _video_past
    try:
        return dict(run(device, elements, dtype, provider), elements=elements, scaled_down=elements < TWO_31)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _scatter_past(device, elements: int, dtype, provider: str) -> dict:
    import torch

    from benchmarks.gpu.check import compare
    from vmae2_kernels import ops
    from vmae2_kernels import reference as R

    C, K = 1024 if elements > 2 ** 20 else 16, 64
    N = -(-elements // C)
    src = torch.randn(1, K, C, generator=_gen(0)).to(device, dtype)
    ids = (N - K + torch.randperm(K, generator=_gen(1))).reshape(1, K).to(device)
    out = ops.token_scatter(src, ids, N, provider)
    tail = compare(out[:, N - K:], R.token_scatter(src, ids - (N - K), K))["match"]
    untouched = not bool(out[:, :N - K].any())
    del out
    if not untouched:
        raise AssertionError("token_scatter wrote rows outside its ids")
    return {"tail_vs_reference": tail, "output_elements": N * C}


def _video_past(device, elements: int, dtype, provider: str) -> dict:
    import torch

    from benchmarks import cases
    from benchmarks.gpu.check import compare
    from vmae2_kernels import ops

    T, S, patch = (16, 224, 16) if elements > 2 ** 20 else (2, 32, 16)
    B = -(-elements // (3 * T * S * S)) + 1
    video = torch.zeros(B, 3, T, S, S, dtype=dtype, device=device)
    video[-1] = torch.randn(3, T, S, S, generator=_gen(0)).to(device, dtype)
    N = (T // 2) * (S // patch) ** 2
    ids = _ids(B, N, 4, device, 1)
    pred = torch.randn(B, 4, 6 * patch * patch, generator=_gen(2)).to(device, dtype)
    weights = torch.zeros(B, 4, device=device)
    weights[-1] = 1.0  # only the last clip counts: the loss is the last clip's loss
    rows = ops.tubelet_gather(video, ids, patch, 2, provider)[-1:]
    loss = ops.recon_loss(pred, video, ids, weights, patch, 2, 1, cases.MEAN, cases.STD, provider)
    last = video[-1:].clone()
    result = {"video_elements": video.numel(),
              "tubelets_vs_reference": compare(rows, ops.tubelet_gather(last, ids[-1:], patch, 2, "torch"))["match"],
              "loss_vs_reference": compare(loss, ops.recon_loss(pred[-1:], last, ids[-1:], weights[-1:], patch, 2,
                                                                1, cases.MEAN, cases.STD, "torch"))["match"]}
    del video
    return result


# -- streams, graphs, compile ---------------------------------------------------------------------------------------

def _op_chain(device, provider: str, B: int = 2):
    """``(inputs, fn)``: the token ops of one step on ViT-B-shaped rows (fn(*inputs) -> outputs, backward included:
    the loss's gradient w.r.t. pred and the table gradients)."""
    import torch

    from benchmarks import cases
    import vmae2_kernels as K
    from benchmarks.gpu.roofline import ALL_SHAPES
    from vmae2_kernels import ops

    shape = ALL_SHAPES["ViT-B"]
    setting = cases.Setting(device, B, torch.float32)
    vis, dec = cases.mask_ids(shape, setting)
    g = _gen(0)
    inputs = [torch.randn(B, shape.num_tokens, 64, generator=g).to(device), torch.randn(shape.num_tokens, 64,
                                                                                         generator=g).to(device),
              cases.randn(setting, B, 3, shape.frames, shape.image, shape.image, seed=3),
              torch.randn(B, dec.shape[1], shape.pred_dim, generator=g).to(device)]

    def fn(x, pos, video, pred):
        x, pred = x.detach().requires_grad_(), pred.detach().requires_grad_()
        rows = K.token_gather(x, vis, pos, backend=provider)
        seq = K.decoder_input(rows, vis, dec, pos[0], pos, backend=provider)
        tubes = ops.tubelet_gather(video, vis, shape.patch, shape.tubelet, provider)
        loss = ops.recon_loss(pred, video, dec, torch.ones(dec.shape, device=device), shape.patch, shape.tubelet, 1,
                              cases.MEAN, cases.STD, provider)
        gx, gp = torch.autograd.grad(seq.sum() + loss, (x, pred))
        return [seq.detach(), tubes, loss.detach(), gx, gp]

    return inputs, fn


def check_side_stream(device, provider: str = "triton") -> dict:
    """The op chain on a side stream (inputs made on the default stream, the streams joined by events), against the
    same chain on the default stream."""
    skip = _cuda_only(device)
    if skip:
        return skip
    import torch

    from benchmarks.gpu.check import compare

    inputs, fn = _op_chain(device, provider)
    ref = fn(*inputs)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        got = fn(*inputs)
    torch.cuda.current_stream(device).wait_stream(side)
    return {"outputs": [compare(a, r)["match"] for a, r in zip(got, ref)]}


def check_graph_replay(device, provider: str = "triton") -> dict:
    """The op chain captured in a CUDA graph after 3 warm-up runs, replayed on new inputs copied into the captured
    ones, against eager runs; plus a token_gather of a row count never run before captured (the autotuner cannot
    time inside a capture: the launcher runs its default tile)."""
    skip = _cuda_only(device)
    if skip:
        return skip
    import torch

    import vmae2_kernels as K
    from benchmarks.gpu.check import compare

    inputs, fn = _op_chain(device, provider)
    # 48 rows: a key the warm-up did not tune, a multiple of 16 as the warmed counts are, so Triton's integer
    # specialisation (divisibility by 16) and with it the compiled binary are the warmed one's (a capture cannot
    # compile)
    odd_ids = _ids(2, inputs[0].shape[1], 48, device, 9)
    warm = torch.cuda.Stream(device)
    warm.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(warm):
        for _ in range(3):
            fn(*inputs)
    torch.cuda.current_stream(device).wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = fn(*inputs)
        odd = K.token_gather(inputs[0], odd_ids, backend=provider)
    fresh = [torch.randn(t.shape, generator=_gen(7 + i)).to(device) for i, t in enumerate(inputs)]
    for static, new in zip(inputs, fresh):
        static.copy_(new)
    graph.replay()
    torch.cuda.synchronize(device)
    ref = fn(*fresh)
    return {"replay_vs_eager": [compare(a, r)["match"] for a, r in zip(outs, ref)],
            "untuned_key_captured": compare(odd, K.token_gather(fresh[0], odd_ids, backend="torch"))["match"]}


def check_compile_step(device, size_name: str, batch: int) -> dict:
    """``torch.compile(fullgraph=True)`` of the dual step's forward and loss (one graph: a break raises), its
    backward through AOTAutograd: loss and gradient norm against the eager step from the same weights. Inductor on
    the GPU; ``aot_eager`` on the CPU (the same tracing and autograd, without Inductor's C++ build of minutes)."""
    import torch

    from benchmarks import official_step as O

    size = next(s for s in O.SIZES if s.name == size_name)
    cuda = device.type == "cuda"
    backend = "inductor" if cuda else "aot_eager"

    def loss_and_norm(forward):
        step, _ = O.make_step("dual", size, "bf16" if cuda else "fp32", batch, device)
        loss = (forward(step) if forward else step.forward_loss)()[1]
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in step.model.parameters()
                                                     if p.grad is not None]))
        return float(loss.detach()), float(norm)

    torch._dynamo.reset()
    eager = loss_and_norm(None)
    compiled = loss_and_norm(lambda step: torch.compile(step.forward_loss, fullgraph=True, backend=backend))
    tol = 2e-2 if cuda else 1e-4
    rel = [abs(c - e) / max(abs(e), 1e-12) for c, e in zip(compiled, eager)]
    if max(rel) > tol:
        raise AssertionError(f"compiled (loss, grad norm) {compiled} vs eager {eager}: relative {rel} > {tol}")
    return {"backend": backend, "loss": compiled[0], "eager_loss": eager[0], "grad_norm_rel_diff": rel[1]}


# -- compute-sanitizer -------------------------------------------------------------------------------------------------

SANITIZER_PROBE = """
import torch
from benchmarks.gpu.items import _op_chain
for provider in {providers}:
    inputs, fn = _op_chain(torch.device("cuda"), provider, B=1)
    fn(*inputs)
torch.cuda.synchronize()
print("probe done")
"""


def sanitizer_path() -> str | None:
    """``compute-sanitizer`` on PATH, else in the CUDA home of nvcc or of torch (``bin/``)."""
    from vmae2_kernels import build

    found = shutil.which("compute-sanitizer")
    homes = [Path(build.nvcc_path()).parents[1]] if build.nvcc_path() else []
    homes += [Path(build.torch_cuda_home())] if build.torch_cuda_home() else []
    candidates = [home / "bin" / "compute-sanitizer" for home in homes]
    return found or next((str(c) for c in candidates if c.exists()), None)


def check_sanitizer(device, out: Path, providers=("triton",), timeout_s: float = 120.0) -> dict:
    """``compute-sanitizer --tool memcheck`` over the op chain at toy size (batch 1), in a subprocess; its log in
    ``out/memcheck.log``. Skipped without a GPU or without the tool."""
    skip = _cuda_only(device)
    if skip:
        return skip
    tool = sanitizer_path()
    if tool is None:
        return {"status": "skip", "detail": "compute-sanitizer was not found (not on PATH, beside nvcc or in torch's "
                                            "CUDA home)"}
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # every allocation its own: exact bounds
    code = SANITIZER_PROBE.format(providers=list(providers))
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "99", sys.executable, "-c", code]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: a timeout ends the tool and the probe it runs
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        (out / "memcheck.log").write_text(stdout + stderr)
        raise AssertionError(f"memcheck did not finish within {timeout_s:.0f} s (stopped; see memcheck.log)") from None
    (out / "memcheck.log").write_text(stdout + stderr)
    summary = next((line for line in (stdout + stderr).splitlines() if "ERROR SUMMARY" in line), "")
    if proc.returncode != 0 or "probe done" not in stdout:
        raise AssertionError(f"memcheck rc {proc.returncode}: {summary or (stderr[-400:] or '(no output)')}")
    return {"summary": summary.strip("= ").strip(), "providers": list(providers)}


# -- MFU peak and the arms' first-step losses ---------------------------------------------------------------------

def card_peak(name: str) -> tuple[float | None, str]:
    """``(dense bf16 peak in FLOP/s, the pattern it matched)`` from :data:`vmae2.flops.PEAK_TFLOPS` (the one table
    of peaks, the most specific device-name pattern first), or ``(None, why there is no MFU)``."""
    from vmae2.flops import card_peaks

    found = card_peaks(name)
    if found is not None:
        return found[1]["bf16"] * 1e12, found[0]
    return None, (f"no MFU: {name!r} has no bf16 peak in vmae2.flops.PEAK_TFLOPS (add its dense datasheet "
                  "values)")


def check_card_peak(device) -> dict:
    skip = _cuda_only(device)
    if skip:
        return {"status": "skip", "detail": "no MFU on the CPU: " + skip["detail"]}
    import torch

    name = torch.cuda.get_device_name(device)
    peak, why = card_peak(name)
    if peak is None:
        return {"status": "skip", "detail": why, "gpu": name}
    return {"gpu": name, "matched": why, "peak_tflops_bf16": peak / 1e12}


def compare_first_losses(items: list, size: str) -> dict:
    """The first-step losses of the ``size`` arms (stage d's items): dual and official (same weights, masks and
    inputs) within the precision's tolerance; v1 (every masked token reconstructed, not half) reported beside."""
    arms = {i["name"].split()[-1]: i for i in items
            if i.get("stage") == "d" and i["name"].startswith(f"{size} ") and i.get("status") == "ok"}
    losses = {arm: i.get("first_loss") for arm, i in arms.items()}
    if losses.get("dual") is None or losses.get("official") is None:
        return {"status": "skip", "detail": f"the dual and official arms of {size} did not both run: {losses}"}
    if not all(math.isfinite(v) for v in losses.values() if v is not None):
        raise AssertionError(f"a first-step loss is not finite: {losses}")
    rel = abs(losses["dual"] - losses["official"]) / max(abs(losses["official"]), 1e-12)
    tol = 2e-2 if arms["dual"].get("precision") == "bf16" else 1e-4
    result = {"losses": losses, "dual_vs_official_rel": rel, "tolerance": tol}
    if losses.get("v1") is not None:
        result["v1_vs_dual_rel"] = abs(losses["v1"] - losses["dual"]) / max(abs(losses["dual"]), 1e-12)
    if rel > tol:
        raise AssertionError(f"dual and official first-step losses differ by {rel:.2e} (> {tol}): {losses}")
    return result
