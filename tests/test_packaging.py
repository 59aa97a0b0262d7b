import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ["triton", "flash_attn", "xformers", "nvidia.dali", "torchcodec", "decord"]


def test_imports_without_optional_dependencies():
    """vmae2 and vmae2_kernels import (and run a forward) with every GPU-only package made unimportable."""
    code = "\n".join([
        "import sys",
        *[f"sys.modules[{name!r}] = None" for name in OPTIONAL],
        "import torch, vmae2, vmae2.models, vmae2.attention, vmae2.weights, vmae2.loss, vmae2.masking",
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

    assert Path(vmae2_kernels.__file__).resolve().parent == ROOT / "vmae2_kernels"


def test_dependencies_are_floors_not_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]
    assert specs and not any("==" in s for s in specs)
    gpu_only = ("triton", "flash-attn", "xformers", "nvidia-dali")
    assert not any(s.startswith(gpu_only) for s in project["dependencies"])


# -- the native extension in setup.py and its loader ---------------------------------------------------------

NATIVE_TREE = ["setup.py", "pyproject.toml", "README.md", "vmae2_kernels", "csrc", "vmae2", "oracle"]  # oracle: not shipped


@pytest.fixture
def source_copy(tmp_path):
    """The files a build needs, copied (build/ and egg-info land in the copy, not in the checkout)."""
    dest = tmp_path / "src"
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "_build", "*.so", "*.json")
    for name in NATIVE_TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def _pip_wheel(src: Path, out: Path, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-v",
           "-w", str(out), str(src)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)


def test_setup_py_does_not_import_torch():
    code = ("import runpy, sys; sys.argv = ['setup.py', '--name']; runpy.run_path('setup.py'); "
            "assert 'torch' not in sys.modules, 'setup.py imported torch'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("vmae2"), out.stderr


def test_editable_install_skips_the_native_build(source_copy, tmp_path):
    """`pip install -e .` (make install) stays fast: setup.py points to the JIT build instead of compiling."""
    code = f"from setuptools import build_meta; print(build_meta.build_editable({str(tmp_path)!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=source_copy, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "editable install: build it in place with `python -m vmae2_kernels.build`" in out.stderr
    assert not list(source_copy.rglob("_vmae2_native*.so"))


@pytest.mark.slow
def test_wheel_builds_the_native_extension_and_the_install_loads_it(source_copy, tmp_path):
    """A regular build (`pip wheel --no-build-isolation .`, as `pip install` does) compiles csrc/ with ninja into the
    package; the unpacked wheel finds it (no JIT build there), records this torch, and dispatches CPU ops to it."""
    out = _pip_wheel(source_copy, tmp_path / "wheels")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "vmae2: building the native extension (CPU" in out.stdout + out.stderr
    (wheel,) = (tmp_path / "wheels").glob("vmae2-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    assert any(re.fullmatch(r"vmae2_kernels/_vmae2_native\..*\.so", n) for n in names), names
    info = json.loads((site / "vmae2_kernels" / "_vmae2_native.json").read_text())
    assert info["torch"] == torch.__version__ and info["backends"][0] == "cpu" and info["builder"] == "setup.py"
    code = "\n".join([
        "import torch, vmae2_kernels as K, vmae2_kernels.native as n",
        "from vmae2_kernels import dispatch, reference as R",
        "print(n.LIBRARY)",
        "print(dispatch.choose('recon_loss', 'cpu'))",
        "keys = torch.rand(3, 49)",
        "print(torch.equal(K.ops.tube_ids(keys, 4, 20, 'cpp'), R.tube_ids(keys, 4, 20)))",
    ])
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stderr[-3000:]
    library, chosen, equal = run.stdout.split()
    assert Path(library).parent == site / "vmae2_kernels" and chosen == "cpp" and equal == "True"


def test_a_failed_native_build_does_not_fail_the_install(source_copy, tmp_path):
    cpu = source_copy / "csrc" / "gather_cpu.cpp"
    cpu.write_text("#error vmae2 test: this source does not compile\n" + cpu.read_text())
    out = _pip_wheel(source_copy, tmp_path / "wheels")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "the native extension (csrc/) is not built: the build failed" in out.stdout + out.stderr
    (wheel,) = (tmp_path / "wheels").glob("vmae2-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "vmae2_kernels/ops.py" in names and not any("_vmae2_native" in n for n in names)
    assert not any(n.startswith("oracle/") for n in names)  # the test oracle stays in the checkout


def test_no_compiler_is_a_warning_not_an_error(source_copy, tmp_path):
    out = _pip_wheel(source_copy, tmp_path / "wheels", CXX="/nonexistent/c++")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no C++ compiler" in out.stdout + out.stderr


def test_loader_reports_a_build_for_another_torch(tmp_path):
    """A build recorded for another torch (or CUDA) is refused by name, and the ops fall back."""
    from vmae2_kernels import native

    assert native.mismatch({"torch": torch.__version__, "backends": ["cpu"]}) is None
    assert "built for torch 0.0.1" in native.mismatch({"torch": "0.0.1"})
    cuda = native.mismatch({"torch": torch.__version__, "backends": ["cpu", "cuda"], "cuda": "0.1"})
    assert (cuda is None) == (torch.version.cuda == "0.1") and (cuda is None or "built with CUDA 0.1" in cuda)
    (tmp_path / "vmae2_native.so").write_bytes(b"")
    (tmp_path / "build_info.json").write_text(json.dumps({"torch": "0.0.1"}))
    code = "from vmae2_kernels import dispatch\nprint(dispatch.report('token_gather', 'cpu')['cpp'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "VMAE2_EXT_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert f"{tmp_path / 'vmae2_native.so'}: built for torch 0.0.1" in out.stdout


def test_build_plan_cuda_choice_arch_and_jobs(monkeypatch):
    """CUDA is added only for a CUDA torch with nvcc; the visible GPU's architecture, else A100 + H100 + PTX (a build
    node without a GPU builds for both), unless TORCH_CUDA_ARCH_LIST says otherwise."""
    from vmae2_kernels import build

    for var in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "VMAE2_BUILD_CUDA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.version, "cuda", None)
    plan = build.plan()
    assert not plan["cuda"] and "not a CUDA build" in plan["cuda_skipped"]
    assert plan["sources"] == [str(s) for s in build.CPU_SOURCES] and plan["jobs"] == str(min(4, os.cpu_count()))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(build, "nvcc_path", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = build.plan()
    assert plan["cuda"] and plan["arch"] == "8.0;9.0+PTX" and os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0+PTX"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    assert build.plan()["arch"] == "8.6"
    assert plan["sources"][-len(build.CUDA_SOURCES):] == [str(s) for s in build.CUDA_SOURCES]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0 8.0")
    monkeypatch.setenv("MAX_JOBS", "1")
    assert build.plan()["arch"] == "7.0 8.0" and build.plan()["jobs"] == "1"
    monkeypatch.setenv("VMAE2_BUILD_CUDA", "0")
    assert build.plan()["cuda_skipped"] == "VMAE2_BUILD_CUDA=0"
    monkeypatch.setattr(build, "nvcc_path", lambda: None)
    monkeypatch.delenv("VMAE2_BUILD_CUDA")
    assert "nvcc was not found" in build.plan()["cuda_skipped"]


@pytest.mark.parametrize("archs,capability,runs", [
    ("8.0;9.0+PTX", (8, 0), True), ("8.0;9.0+PTX", (8, 6), True), ("8.0;9.0+PTX", (9, 0), True),
    ("8.0;9.0+PTX", (10, 0), True),  # PTX compiled by the driver
    ("9.0", (8, 0), False),  # sm_90 code alone does not run on an A100
    ("9.0", (10, 0), False), ("8.6", (8, 0), False), ("7.0 8.0", (8, 9), True), ("9.0a", (9, 0), True),
    ("9.0a+PTX", (10, 0), False), ("", (8, 0), False),
])
def test_built_architectures_against_the_running_gpu(archs, capability, runs):
    from vmae2_kernels import build

    assert build.runs_on(archs, capability) is runs
    reason = build.arch_reason({"backends": ["cpu", "cuda"], "cuda_arch_list": archs}, capability)
    assert (reason is None) is runs
    if not runs:
        assert f"built for {archs!r}" in reason and f'TORCH_CUDA_ARCH_LIST="{capability[0]}.{capability[1]}"' in reason
    assert build.arch_reason({"backends": ["cpu"]}, capability) is None  # no CUDA kernels: nothing to compare


def test_cuda_backend_without_code_for_the_gpu_falls_back_with_the_reason(monkeypatch):
    """The dispatcher asks the loaded build; `auto` then skips `cuda` and a forced `cuda` names the reason."""
    import types

    from vmae2_kernels import dispatch

    why = "the native CUDA kernels were built for '9.0', which has no code for this GPU (compute capability 8.0)"
    fake = types.SimpleNamespace(KERNELS={("token_gather", "cuda"): object()}, arch_reason=lambda: why,
                                 REBUILD="rebuild")
    monkeypatch.setattr(dispatch, "native_status", lambda: (fake, None))
    dispatch.reset()
    try:
        assert dispatch.report("token_gather", "cuda")["cuda"] == [why]
        with pytest.raises(RuntimeError, match="built for '9.0'"):
            dispatch.choose("token_gather", "cuda", "cuda")
        assert dispatch.choose("token_gather", "cuda", "auto") != "cuda"
    finally:
        dispatch.reset()


def test_the_kernel_package_imports_no_analysis_tooling():
    """vmae2_kernels is what a linking user needs: the compile report, the roofline model and the benchmarks live in
    benchmarks/ and are never imported by the ops, the launchers or the native loader."""
    code = ("import sys, vmae2_kernels, vmae2_kernels.ops, vmae2_kernels.dispatch, vmae2_kernels.info\n"
            "from vmae2_kernels import optional\n"
            "for name in ('vmae2_kernels.triton_ops', 'vmae2_kernels.native'):\n"
            "    optional.load(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('benchmarks', 'roofline', 'gpu_report')"
            " or 'roofline' in m or 'gpu_report' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of vmae2 / vmae2_kernels it imports (anywhere in the file, functions included)."""
    import ast

    roots = {"vmae2": ROOT / "vmae2", "vmae2_kernels": ROOT / "vmae2_kernels"}
    files = {}
    for package, folder in roots.items():
        for path in folder.rglob("*.py"):
            if "_build" not in path.parts:
                parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
                files[".".join([package, *parts])] = path
    graph = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module in files:
                subs = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                graph[name] |= subs if len(subs) == len(node.names) else subs | {node.module}  # `from pkg import mod`
        graph[name].discard(name)
    return graph


def test_no_import_cycles_in_the_packages():
    graph, cycles = _import_graph(), []

    def visit(node, path):
        for nxt in graph[node]:
            if nxt == path[0]:
                cycles.append(path)
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest module
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
    assert len(graph) > 40 and graph["vmae2.models.layers"]  # the graph is really read
    assert cycles == []


@pytest.mark.parametrize("entry", ["train", "finetune", "evaluate", "predict", "plan", "extract", "data.make_lists"])
def test_help_and_bad_values_answer_without_importing_torch(entry):
    """`--help` and a refused value come from the config layer alone (no torch import: well under 2 s); the run
    module, which imports torch, is loaded only after the config is valid."""
    existing = str(ROOT / "pyproject.toml")  # any existing file: evaluate's required paths are checked first
    required = {"evaluate": ["--model", "vit_tiny_patch16_224", "--nb_classes", "2", "--weights", existing,
                             "--data_path", existing],
                "predict": ["--model", "vit_tiny_patch16_224", "--nb_classes", "2", "--weights", existing, existing],
                "extract": ["--weights", existing, "--data_path", existing],
                "data.make_lists": [str(ROOT), "--out", "never"]}.get(entry, [])
    bad, value, refused = {"extract": ("--window", "0", "0 is invalid: must be >= 1"),
                           "data.make_lists": ("--val_fraction", "1", "1.0 is invalid: must be in [0, 1)")}.get(
        entry, ("--num_frames", "0", "0 is invalid: must be >= 1"))
    code = ("import sys\n"
            f"from vmae2.{entry} import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"rc = main({required!r} + [{bad!r}, {value!r}])\n"
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "2 False"
    assert f"{bad} {refused}" in out.stderr
