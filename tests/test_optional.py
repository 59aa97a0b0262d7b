"""vmae2_kernels.optional: asking about an optional dependency never raises."""
import sys

import pytest

from vmae2_kernels import optional


def test_missing_parent_package_is_a_plain_no():
    # importlib.util.find_spec raises ModuleNotFoundError here (the parent is missing): the helper says False
    with pytest.raises(ModuleNotFoundError):
        __import__("importlib.util").util.find_spec("no_such_parent_pkg.child")
    assert optional.importable("no_such_parent_pkg.child") is False
    assert optional.importable("json") is True


def test_load_gives_a_reason_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # as if flash-attn were not installed
    optional.load.cache_clear()
    try:
        module, reason = optional.load("flash_attn")
        assert module is None and "flash_attn is not importable" in reason and "pip install vmae2[flash]" in reason
    finally:
        optional.load.cache_clear()


def test_a_broken_module_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    (tmp_path / "vmae2_broken_probe.py").write_text("raise OSError('libfoo.so: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module, reason = optional.load("vmae2_broken_probe")
    assert module is None and "OSError" in reason and "libfoo.so" in reason
