import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ["triton", "flash_attn", "xformers", "nvidia.dali", "torchcodec", "decord"]


def test_imports_without_optional_dependencies():
    """vmae2 and vmae2_kernels import (and run a forward) with every GPU-only package made unimportable."""
    code = "\n".join([
        "import sys",
        *[f"sys.modules[{name!r}] = None" for name in OPTIONAL],
        "import torch, vmae2, vmae2.models, vmae2.attention, vmae2.checkpoint, vmae2.loss, vmae2.masking",
        "import vmae2_kernels",
        "m = vmae2.models.create_model('pretrain_videomae_small_patch16_224', num_frames=2, img_size=32)",
        "ids = vmae2.masking.tube_ids(1, m.grid, 0.5)",
        "print(tuple(m(torch.zeros(1, 3, 2, 32, 32), ids).shape))",
        "print('kernels' in sys.modules)",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["(1,", "2,", "1536)", "False"]


def test_vmae2_kernels_is_the_kernels_folder():
    import vmae2_kernels

    assert Path(vmae2_kernels.__file__).resolve().parent == ROOT / "kernels"


def test_dependencies_are_floors_not_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]
    assert specs and not any("==" in s for s in specs)
    gpu_only = ("triton", "flash-attn", "xformers", "nvidia-dali")
    assert not any(s.startswith(gpu_only) for s in project["dependencies"])
