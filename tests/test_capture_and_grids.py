"""The autotuned Triton kernels inside a CUDA graph capture, and the row-copy launch grids.

During a capture the autotuner cannot time its candidates (timing syncs, which a capture cannot contain): the
launchers then run the autotuner's pick for the key when it has one, else the default tile, and never call the
autotuner. On this CPU the capture probe is replaced (the kernels run under the interpreter). The row-copy and
decoder-input grids put the row blocks (``B * cdiv(K, BLOCK_K)``) on axis 0, read from the launchers with the kernel
replaced by a recorder.
"""
import pytest
import torch

from vmae2_kernels import reference as R
from vmae2_kernels.tiles import MAX_GRID, ROW_TILES

triton_ops = pytest.importorskip("vmae2_kernels.triton_ops", reason="triton is not installed")
from vmae2_kernels import triton_common  # noqa: E402  (after the skip: needs triton)
from vmae2_kernels.decoder import triton_kernels as decoder_kernels  # noqa: E402
from vmae2_kernels.gather import triton_kernels as gather_kernels  # noqa: E402

MANY = 70_000 * 16  # rows: 70 000 row blocks of 16, past grid axis 1's 65535
# Where the kernels run: the GPU when there is one, else the CPU under the interpreter (tests/conftest.py sets it).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _ids(B, N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N, generator=g)[:K].sort().values for _ in range(B)]).to(DEVICE)


def _randn(*size):
    return torch.randn(*size).to(DEVICE)


class NoTuning:
    """Replaces an Autotuner's ``run``: any call through the autotuner fails the test."""

    def __init__(self, kernel, monkeypatch):
        monkeypatch.setattr(kernel, "run", self.fail)

    @staticmethod
    def fail(*args, **kwargs):
        raise AssertionError("the autotuner was called during a capture")


class FnSpy:
    """Wraps an Autotuner's ``fn`` (the JIT kernel): records the block sizes of each direct launch, then runs it."""

    def __init__(self, kernel, monkeypatch):
        self.fn, self.blocks = kernel.fn, []
        monkeypatch.setattr(kernel, "fn", self)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.blocks.append((kwargs["BLOCK_K"], kwargs["BLOCK_C"], kwargs["num_warps"]))
            return self.fn[grid](*args, **kwargs)
        return launch


@pytest.fixture
def capturing(monkeypatch):
    """The capture probe says yes (on the CPU too, where there is no capture)."""
    monkeypatch.setattr(triton_common, "capturing", lambda device: True)


def test_capture_probe_is_false_on_cpu_and_outside_a_capture():
    assert triton_common.capturing(torch.device("cpu")) is False
    if torch.cuda.is_available():
        assert triton_common.capturing(torch.device("cuda")) is False


@pytest.mark.parametrize("op", ["token_gather", "token_scatter", "decoder_input"])
def test_capture_of_an_untuned_key_runs_the_default_tile_without_the_autotuner(op, capturing, monkeypatch):
    kernel = decoder_kernels._decoder_input_kernel if op == "decoder_input" else gather_kernels._row_copy_kernel
    NoTuning(kernel, monkeypatch)
    monkeypatch.setattr(kernel, "cache", {})  # no key tuned yet
    spy = FnSpy(kernel, monkeypatch)
    B, N, C, K = 2, 37, 40, 11
    x, ids, pos = _randn(B, N, C), _ids(B, N, K), _randn(N, C)
    if op == "token_gather":
        out, ref = triton_ops.token_gather(x, ids, pos), R.token_gather(x, ids, pos)
    elif op == "token_scatter":
        out, ref = triton_ops.token_scatter(x[:, :K], ids, N), R.token_scatter(x[:, :K], ids, N)
    else:
        dec = _ids(B, N, 5, seed=1)
        args = (x[:, :K], ids, dec, _randn(C), pos)
        out, ref = triton_ops.decoder_input(*args), R.decoder_input(*args)
    torch.testing.assert_close(out, ref)
    default, warps = ROW_TILES[0][0], ROW_TILES[0][1]
    assert spy.blocks == [(default["BLOCK_K"], default["BLOCK_C"], warps)]


def test_capture_of_a_tuned_key_runs_the_autotuners_pick(capturing, monkeypatch):
    """A key tuned before the capture keeps its tile inside it (here the autotuner's cache names the second tile)."""
    import triton

    kernel = gather_kernels._row_copy_kernel
    B, N, C, K = 2, 37, 40, 11
    x, ids = _randn(B, N, C), _ids(B, N, K)
    kw, warps, stages, _ = ROW_TILES[1]
    key = (K, C, "torch.float32", "torch.int64", "torch.float32", "torch.float32")  # x, ids, pos (= x), out
    monkeypatch.setattr(kernel, "cache", {key: triton.Config(kw, num_warps=warps, num_stages=stages)})
    NoTuning(kernel, monkeypatch)
    spy = FnSpy(kernel, monkeypatch)
    torch.testing.assert_close(triton_ops.token_gather(x, ids), R.token_gather(x, ids))
    assert spy.blocks == [(kw["BLOCK_K"], kw["BLOCK_C"], warps)]


def test_outside_a_capture_the_autotuner_runs(monkeypatch):
    kernel = gather_kernels._row_copy_kernel
    calls = []
    run = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a, **k: calls.append(1) or run(*a, **k))
    x, ids = _randn(2, 9, 8), _ids(2, 9, 4)
    torch.testing.assert_close(triton_ops.token_gather(x, ids), R.token_gather(x, ids))
    assert calls == [1]


# -- launch grids ---------------------------------------------------------------------------------------------------

class GridRecorder:
    """Stands in for an autotuned kernel: evaluates each launch grid at every candidate tile, runs nothing."""

    arg_names, keys, cache, configs = (), (), {}, ()

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids += [tuple(grid({**kw})) for kw, _, _, _ in ROW_TILES]
        return lambda *args, **kwargs: None


@pytest.mark.parametrize("op", ["token_gather", "token_scatter", "decoder_input"])
def test_row_grids_take_many_rows_on_axis_0(op, monkeypatch):
    """``B * cdiv(K, BLOCK_K)`` row blocks on axis 0 (past 65535 here), the column blocks on axis 1."""
    spy = GridRecorder()
    family, name = ((decoder_kernels, "_decoder_input_kernel") if op == "decoder_input" else
                    (gather_kernels, "_row_copy_kernel"))
    monkeypatch.setattr(family, name, spy)
    B, C = 2, 3
    rows, ids = torch.zeros(B, MANY, C), torch.zeros(B, MANY, dtype=torch.int64)
    if op == "token_gather":
        triton_ops.token_gather(rows, ids)
    elif op == "token_scatter":
        triton_ops.token_scatter(rows, ids, MANY)
    else:
        triton_ops.decoder_input(rows[:, :1], ids[:, :1], ids, torch.zeros(C), torch.zeros(MANY, C))
    rows_in = MANY + 1 if op == "decoder_input" else MANY
    expected = [(B * -(-rows_in // kw["BLOCK_K"]), -(-C // kw["BLOCK_C"])) for kw, _, _, _ in ROW_TILES]
    assert spy.grids == expected
    assert all(g[0] > MAX_GRID[1] and all(n <= most for n, most in zip(g, MAX_GRID)) for g in spy.grids)


def test_row_grid_past_axis_0_is_refused_by_name():
    grid = triton_common.row_grid(2 ** 20, 2 ** 16, 256, "token_gather")
    with pytest.raises(ValueError, match=r"token_gather: launch grid axis 0 needs \d+ programs, above CUDA's"):
        grid({"BLOCK_K": 16, "BLOCK_C": 256})


@pytest.mark.parametrize("B,N,C,K", [(3, 70, 40, 37), (1, 20, 300, 20), (2, 33, 7, 1)])
def test_flattened_row_grid_matches_the_reference(B, N, C, K):
    """Several row blocks per sample and a ragged last block, through the flattened axis 0."""
    x, ids, pos = _randn(B, N, C), _ids(B, N, K), _randn(N, C)
    torch.testing.assert_close(triton_ops.token_gather(x, ids, pos), R.token_gather(x, ids, pos))
    src = _randn(B, K, C)
    assert torch.equal(triton_ops.token_scatter(src, ids, N), R.token_scatter(src, ids, N))
    dec = _ids(B, N, N - K, seed=2) if N > K else _ids(B, N, 1, seed=2)
    args = (src, ids, dec, _randn(C), pos)
    torch.testing.assert_close(triton_ops.decoder_input(*args), R.decoder_input(*args))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_real_capture_of_untuned_keys_replays_the_reference():
    """A CUDA graph captures the three autotuned ops at row counts the autotuner has not timed (warmed at other counts
    with the same divisibility by 16: the compiled binaries are there, a capture cannot compile); the replay on new
    inputs gives the reference."""
    N, C = 96, 64
    x, pos, token = _randn(2, N, C), _randn(N, C), _randn(C)

    def run(ids, dec):
        K = ids.shape[1]
        return (triton_ops.token_gather(x, ids, pos), triton_ops.token_scatter(x[:, :K], ids, N),
                triton_ops.decoder_input(x[:, :K], ids, dec, token, pos))

    run(_ids(2, N, 32), _ids(2, N, 16, 1))  # warm-up: tunes the keys of 32 rows (and 48 decoder rows)
    ids, dec = _ids(2, N, 48, 2), _ids(2, N, 32, 3)  # made before the capture (a host copy cannot be captured)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run(ids, dec)
    x.copy_(_randn(2, N, C))
    graph.replay()
    torch.cuda.synchronize()
    refs = (R.token_gather(x, ids, pos), R.token_scatter(x[:, :48], ids, N), R.decoder_input(x[:, :48], ids, dec,
                                                                                            token, pos))
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref)
