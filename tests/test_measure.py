"""Backends chosen by measurement: the slower candidate is never chosen, a choice is remembered on disk and reused,
the fixed order decides where nothing is measured, and an explicit backend still wins."""
import json
import time

import pytest
import torch

from vmae2 import attention
from vmae2_kernels import dispatch, measure, ops


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    """Measurement on (the suite turns it off), a fresh cache folder, nothing remembered in the process."""
    monkeypatch.setenv(measure.ENV_VAR, "1")
    monkeypatch.setenv("VMAE2_CACHE", str(tmp_path))
    measure.forget()
    attention.reset()
    yield tmp_path / "choices.json"
    measure.forget()
    attention.reset()


def _slow(fn, seconds=0.05):  # far above the tiny calls' own time, even on a loaded machine
    def wrapped(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)
    return wrapped


def test_fastest_picks_the_faster_and_remembers_it(measuring):
    calls = {"quick": 0, "slow": 0}

    def candidates():
        def quick():
            calls["quick"] += 1

        def slow():
            calls["slow"] += 1
            time.sleep(0.005)
        return {"slow": slow, "quick": quick}

    names = ("slow", "quick")
    assert measure.fastest("test", "cpu", ("k",), names, candidates) == "quick"
    assert calls == {"quick": measure.WARMUP + measure.ROUNDS, "slow": measure.WARMUP + measure.ROUNDS}
    entry = next(iter(json.loads(measuring.read_text()).values()))
    assert entry["choice"] == "quick" and entry["ms"]["slow"] > entry["ms"]["quick"]
    # remembered: neither in this process nor in a new one (the file) is anything timed again
    assert measure.fastest("test", "cpu", ("k",), names, candidates) == "quick"
    measure.forget()
    assert measure.fastest("test", "cpu", ("k",), names, candidates) == "quick"
    assert calls["slow"] == measure.WARMUP + measure.ROUNDS
    # another key, or another candidate set, is measured anew
    assert measure.fastest("test", "cpu", ("other",), names, candidates) == "quick"
    assert calls["slow"] == 2 * (measure.WARMUP + measure.ROUNDS)


def test_near_ties_keep_the_fixed_order():
    assert measure.pick({"sdpa": 10.0, "math": 10.4}, ("sdpa", "math")) == "sdpa"
    assert measure.pick({"sdpa": 10.0, "math": 9.6}, ("sdpa", "math")) == "sdpa"
    assert measure.pick({"sdpa": 10.0, "math": 9.0}, ("sdpa", "math")) == "math"


def test_attention_fixed_order_on_a_cpu_puts_math_first_for_half_dtypes():
    assert attention.usable("cpu", torch.float32, 64) == ("sdpa", "explicit", "math")
    assert attention.usable("cpu", torch.bfloat16, 64) == ("explicit", "math", "sdpa")
    reasons = attention.not_supported_reasons("explicit", "cuda", torch.bfloat16, 64)
    assert reasons and "verified on CPUs only" in reasons[0]


def test_nothing_is_measured_when_turned_off(measuring, monkeypatch):
    monkeypatch.setenv(measure.ENV_VAR, "0")
    assert measure.fastest("test", "cpu", ("k",), ("a", "b"), lambda: pytest.fail("timed while off")) is None
    assert not measuring.exists()


def test_a_torn_cache_file_is_measured_again(measuring):
    measuring.write_text("{not json")
    assert measure.fastest("test", "cpu", ("k",), ("a", "b"),
                           lambda: {"a": lambda: time.sleep(0.002), "b": lambda: None}) == "b"
    assert next(iter(json.loads(measuring.read_text()).values()))["choice"] == "b"


@pytest.mark.parametrize("slowed,expected", [(("sdpa", "explicit"), "math"), (("math", "explicit"), "sdpa")])
def test_attention_does_not_choose_a_backend_measured_slower(measuring, monkeypatch, slowed, expected):
    for name in slowed:
        monkeypatch.setitem(attention._KERNELS, name, _slow(attention._KERNELS[name]))
    qkv = torch.randn(2, 24, 3, 2, 16, requires_grad=True)
    out = attention.attention(qkv, 0.25)
    assert torch.allclose(out, attention.attention(qkv, 0.25, expected), atol=0, rtol=0)
    (entry,) = measure.used()
    assert entry["kind"] == "attention" and entry["choice"] == expected
    assert min(entry["ms"][s] for s in slowed) > entry["ms"][expected]
    assert "queries 24 of 24" in entry["key"] and "backward True" in entry["key"]
    # an explicit backend, or VMAE2_ATTENTION, still wins over the measurement
    monkeypatch.setenv(attention.ENV_VAR, slowed[0])
    with torch.no_grad():
        forced = attention.attention(qkv, 0.25)
    assert torch.equal(forced, attention.attention(qkv, 0.25, slowed[0]))


def test_attention_measures_each_shape_and_mode(measuring):
    qkv = torch.randn(2, 24, 3, 2, 16)
    attention.attention(qkv, 0.25)
    attention.attention(qkv, 0.25, num_query=8)
    keys = {e["key"] for e in measure.used()}
    assert {k.split(" | ")[3] for k in keys} == {"queries 24 of 24", "queries 8 of 24"}
    assert all("backward False" in k for k in keys)


def test_explain_lists_the_measured_choices(measuring):
    from vmae2.models import create_model
    from vmae2.masking import running_cell_ids, tube_ids

    model = create_model("pretrain_videomae_tiny_patch16_224", num_frames=4, img_size=32)
    model(torch.randn(2, 3, 4, 32, 32), tube_ids(2, model.grid, 0.5), running_cell_ids(2, model.grid, 0.5))
    report = attention.explain(model)
    assert len(report) == 2  # the encoder's and the decoder's head size
    for entry in report:
        assert entry["measured"] and all(f"head_dim {entry['head_dim']} |" in m["key"] for m in entry["measured"])
        assert all(set(m["ms"]) == {"sdpa", "explicit", "math"} and m["choice"] in m["ms"] for m in entry["measured"])


@pytest.mark.parametrize("slowed", ["cpp", "torch"])
def test_kernel_backend_measured_slower_is_not_chosen(measuring, monkeypatch, slowed):
    if "cpp" not in dispatch.usable("token_gather", "cpu", torch.float32):
        pytest.skip("the native extension is not built (python -m vmae2_kernels.build)")
    real = ops._kernel
    monkeypatch.setattr(ops, "_kernel", lambda op, device_type, name: _slow(real(op, device_type, name))
                        if name == slowed else real(op, device_type, name))
    x, ids = torch.randn(2, 10, 8), torch.tensor([[1, 3], [0, 9]])
    out = ops.token_gather(x, ids, None, "auto")
    assert torch.equal(out, torch.gather(x, 1, ids[..., None].expand(-1, -1, 8)))
    (entry,) = [e for e in measure.used() if e["kind"] == "kernel token_gather"]
    assert entry["choice"] != slowed and set(entry["ms"]) == {"cpp", "torch"}
    assert "(2, 10, 8) float32" in entry["key"]
