"""Optional dependencies, asked about without ever raising.

``importable("nvidia.dali")`` answers whether a module can be imported without importing it (a missing parent
package such as ``nvidia`` is a plain ``False``, where ``importlib.util.find_spec`` raises);
``load("flash_attn")`` imports it once and returns ``(module, None)`` or ``(None, reason)``, the reason naming
the install command. Every optional import of vmae2 and vmae2_kernels (Triton, the native extension, DALI,
flash-attn, xformers, tensorboard, matplotlib, PyYAML) goes through one of the two.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

# How to get each optional top-level package; anything else is named as it is.
INSTALL_HINTS = {
    "triton": "pip install vmae2[triton]",
    "nvidia": "pip install vmae2[dali]",
    "flash_attn": "pip install vmae2[flash]",
    "xformers": "pip install vmae2[xformers]",
    "matplotlib": "pip install vmae2[plot]",
    "tensorboard": "pip install tensorboard",
    "yaml": "pip install pyyaml",
    "vmae2_kernels": "python -m vmae2_kernels.build",  # the native extension
}


def hint(name: str) -> str:
    """The install command for module ``name`` (by its top-level package)."""
    top = name.split(".")[0]
    return INSTALL_HINTS.get(top, f"pip install {top}")


def importable(name: str) -> bool:
    """Whether ``import name`` can find the module; imports its parent packages at most, never raises."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module with no spec
        return False


@functools.lru_cache(maxsize=None)
def load(name: str) -> tuple[ModuleType | None, str | None]:
    """``(module, None)``, or ``(None, reason)`` when importing ``name`` fails for any reason (missing, a broken
    install, a missing shared library); tried once per process."""
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # noqa: BLE001 - any failure to import is a reason, not a crash
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        return None, f"{name} is not importable ({type(exc).__name__}: {exc}; {hint(missing or name)})"

