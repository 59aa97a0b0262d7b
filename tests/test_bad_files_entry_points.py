"""Bad files never stop a run, at any worker count.

Each entry point runs at its *default* ``--num_workers`` (> 0: the bad-file reports cross a process boundary) on
a list holding a missing file, a zero-byte file and a too-short clip; it must finish, name each file with its
reason and append it to ``quarantine.tsv``. Every exception type vmae2 defines must survive pickling.
"""
import importlib
import inspect
import os
import pickle
import pkgutil
import subprocess
import sys

import pytest

pytest.importorskip("av", reason="PyAV makes the videos")

import vmae2  # noqa: E402
from vmae2.data.decode import BadVideo  # noqa: E402
from vmae2.data.synthetic import make_bad_files, make_labeled_videos, make_videos  # noqa: E402
from vmae2.training.distributed import NonFiniteLoss  # noqa: E402

BAD = ("missing", "empty", "too_short")  # the reasons the loaders report for these three files

# One instance of every exception class defined in vmae2 (a new class without an entry here fails the test below).
EXCEPTIONS = [BadVideo("too_short", "/data/a.mp4", "3 frames < 4"), BadVideo("missing", "b.mp4"),
              NonFiniteLoss("the loss became non-finite at step 3")]


def _vmae2_exception_classes() -> set[type]:
    found = set()
    for info in pkgutil.walk_packages(vmae2.__path__, "vmae2."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.add(obj)
    return found


def test_every_exception_class_is_covered():
    assert _vmae2_exception_classes() == {type(e) for e in EXCEPTIONS}


@pytest.mark.parametrize("exc", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_exceptions_survive_pickling(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc) and back.args == exc.args
    assert vars(back) == vars(exc)  # reason, path, detail, ...


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    files = make_bad_files(tmp_path_factory.mktemp("bad"), size=(64, 48), num_frames=8)
    return {reason: files[reason] for reason in BAD}


def _run(module, args, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", module, *args, "--output_dir", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--num_workers" not in args  # the point: the default worker count
    return result


def _assert_reported(result, tmp_path, bad):
    """Each bad file is named with its reason in the log and in the quarantine list, once."""
    quarantine = (tmp_path / "out" / "quarantine.tsv").read_text().splitlines()
    got = {line.split("\t")[0]: line.split("\t")[1] for line in quarantine}
    assert got == {str(path): reason for reason, path in bad.items()}
    assert len(quarantine) == len(bad)
    for reason, path in bad.items():
        assert f"skipping bad file {path}: {reason}" in result.stderr
    assert "Traceback" not in result.stderr


def test_pretraining_with_workers_skips_bad_files(bad, tmp_path):
    make_videos(tmp_path / "v", 6, seed=0, sizes=((80, 64),), num_frames=(24,))
    listing = tmp_path / "list.txt"
    listing.write_text((tmp_path / "v" / "train.csv").read_text() + "".join(f"{p} 0 -1\n" for p in bad.values()))
    # 9 entries in 3 batches of 3: every entry is visited in the 3 steps (the demo preset: 2 workers)
    result = _run("vmae2.train", ["--preset", "demo", "--data_path", str(listing), "--num_frames", "4",
                                  "--input_size", "64", "--batch_size", "3", "--max_steps", "3", "--log_every", "1"],
                  tmp_path)
    _assert_reported(result, tmp_path, bad)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    return make_labeled_videos(tmp_path_factory.mktemp("labeled"), {"train": 2, "test": 1}, size=(48, 40),
                               num_frames=16, motions=("still", "right"))


def _with_bad(listing, bad, tmp_path):
    out = tmp_path / f"bad_{listing.name}"
    out.write_text(listing.read_text() + "".join(f"{p} {i % 2}\n" for i, p in enumerate(bad.values())))
    return out


GEOMETRY = ["--num_frames", "4", "--sampling_rate", "2", "--input_size", "32", "--short_side_size", "32",
            "--test_num_segment", "1", "--test_num_crop", "1"]


def test_fine_tuning_with_workers_skips_bad_files(labeled, bad, tmp_path):
    train, test = _with_bad(labeled["train"], bad, tmp_path), _with_bad(labeled["test"], bad, tmp_path)
    # 7 entries, batches of 7 (drop_last): one step visits every entry; the test pass visits them again
    result = _run("vmae2.finetune", ["--preset", "demo", "--data_path", str(train), "--test_data_path", str(test),
                                     *GEOMETRY, "--batch_size", "7", "--num_sample", "1", "--max_steps", "1",
                                     "--log_every", "1"], tmp_path)
    _assert_reported(result, tmp_path, bad)


def test_evaluation_with_workers_skips_bad_files(labeled, bad, tmp_path):
    from vmae2.models import create_model
    from vmae2.weights import save_safetensors

    weights = tmp_path / "w.safetensors"
    save_safetensors(create_model("vit_tiny_patch16_224", num_classes=2, num_frames=4, img_size=32), weights)
    result = _run("vmae2.evaluate", ["--model", "vit_tiny_patch16_224", "--weights", str(weights), "--nb_classes",
                                     "2", "--data_path", str(_with_bad(labeled["test"], bad, tmp_path)), *GEOMETRY],
                  tmp_path)
    _assert_reported(result, tmp_path, bad)
