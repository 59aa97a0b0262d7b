"""Scaling out: ``srun`` launches (the Slurm environment read without Slurm's tools), and a run resumed on another
number of processes (the same global batch, schedule and epoch data: every sample of the interrupted epoch consumed
once). Gloo processes on CPU."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from vmae2.training.distributed import Dist, expand_nodelist, launcher_env

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra) -> dict:
    """This process's environment without any launcher's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


# -- the node list and the launcher's variables ---------------------------------------------------------------

@pytest.mark.parametrize("nodelist, hosts", [
    ("node7", ["node7"]),
    ("a,b,c", ["a", "b", "c"]),
    ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),  # no padding: the width grows
    ("n[008-010]", ["n008", "n009", "n010"]),  # padding kept past a carry
    ("r[1-2]-n[09-10]", ["r1-n09", "r1-n10", "r2-n09", "r2-n10"]),  # several bracketed groups in one name
    ("x[3],y[1-2]z,login", ["x3", "y1z", "y2z", "login"]),
    ("host-1.cluster.org,gpu[1,3]", ["host-1.cluster.org", "gpu1", "gpu3"]),
])
def test_node_lists_expand_like_slurm(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[01-03", "gpu[a-b]", "gpu[1-]", ""])
def test_a_node_list_that_cannot_be_read_says_to_set_master_addr(bad):
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        expand_nodelist(bad)


SLURM = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
         "SLURM_JOB_NODELIST": "gpu[07-08],gpu11"}


def test_srun_variables_give_rank_world_and_the_first_node():
    launcher, env = launcher_env(SLURM)
    assert launcher == "srun"
    assert env == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                   "MASTER_PORT": str(20000 + 4242)}
    assert launcher_env({**SLURM, "SLURM_JOB_ID": "123456"})[1]["MASTER_PORT"] == "23456"  # same on every task
    mine = launcher_env({**SLURM, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"})[1]
    assert (mine["MASTER_ADDR"], mine["MASTER_PORT"]) == ("10.0.0.1", "29400")  # the environment's own win
    step = launcher_env({**SLURM, "SLURM_STEP_NODELIST": "gpu11"})[1]
    assert step["MASTER_ADDR"] == "gpu11"  # the step's nodes, where srun runs on part of the job


def test_torchrun_variables_win_over_slurm():
    tr = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launcher_env({**SLURM, **tr}) == ("torchrun", tr)
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == ("single process", {})  # srun -n 1
    assert launcher_env({}) == ("single process", {})
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def _srun(module: str, args: list[str], tasks: int = 2, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """``srun -n tasks python -m module args`` on this machine: one process per task with Slurm's variables."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_clean_env(SLURM_PROCID=str(r), SLURM_NTASKS=str(tasks), SLURM_LOCALID=str(r),
                                             SLURM_JOB_ID="77", SLURM_JOB_NODELIST="localhost",
                                             MASTER_PORT=str(port)))
             for r in range(tasks)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    for r in out:
        assert r.returncode == 0, r.stderr[-3000:]
    return out


def _torchrun(module: str, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(_free_port()), "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                            env=_clean_env(), timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(output_dir) -> dict[int, float]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def data_list(tmp_path_factory):
    pytest.importorskip("av", reason="PyAV makes the training videos")
    from vmae2.data.synthetic import make_videos

    root = tmp_path_factory.mktemp("videos")
    make_videos(root, 8, seed=0, sizes=((96, 64),), num_frames=(24,))
    return str(root / "train.csv")


TINY = ["--preset", "demo", "--num_frames", "4", "--input_size", "64", "--batch_size", "2", "--num_sample", "1",
        "--num_workers", "0", "--lr", "0.05", "--warmup_steps", "1", "--log_every", "1", "--max_steps", "2"]


def test_srun_launch_trains_like_torchrun(data_list, tmp_path):
    """Two processes started the way ``srun -n 2`` starts them (Slurm's variables only, the rendezvous node from the
    node list) train the same losses, bit for bit, as the same two processes under ``torchrun``."""
    args = TINY + ["--data_path", data_list]
    srun = _srun("vmae2.train", args + ["--output_dir", str(tmp_path / "srun")])
    torchrun = _torchrun("vmae2.train", args + ["--output_dir", str(tmp_path / "torchrun")])
    assert "launcher: srun (Slurm job 77); 2 processes, rendezvous localhost:" in srun[0].stdout
    assert "2 process(es) (srun)" in srun[0].stdout and "launcher" not in srun[1].stdout  # rank 0 speaks
    assert "2 process(es) (torchrun)" in torchrun.stdout
    a, b = _losses(tmp_path / "srun"), _losses(tmp_path / "torchrun")
    assert sorted(a) == [1, 2] and a == b


def test_srun_evaluation_equals_one_process(tmp_path):
    """``vmae2.evaluate`` joins the same process group under ``srun``: 3 videos on 2 tasks score as on 1."""
    pytest.importorskip("av", reason="PyAV makes the test videos")
    from vmae2.data.synthetic import make_labeled_videos
    from vmae2.models import create_model
    from vmae2.weights import save_safetensors

    lists = make_labeled_videos(tmp_path / "v", {"test": 1}, motions=("up", "down", "left"), size=(48, 48),
                                num_frames=16)
    torch.manual_seed(3)
    save_safetensors(create_model("vit_tiny_patch16_224", num_classes=3, num_frames=4, img_size=32),
                     tmp_path / "w.safetensors")
    args = ["--model", "vit_tiny_patch16_224", "--nb_classes", "3", "--num_frames", "4", "--sampling_rate", "2",
            "--input_size", "32", "--short_side_size", "32", "--test_num_segment", "2", "--test_num_crop", "1",
            "--num_workers", "0", "--batch_size", "1", "--weights", str(tmp_path / "w.safetensors"),
            "--data_path", str(lists["test"])]
    one = subprocess.run([sys.executable, "-m", "vmae2.evaluate", *args, "--output_dir", str(tmp_path / "one")],
                         cwd=ROOT, capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _srun("vmae2.evaluate", args + ["--output_dir", str(tmp_path / "two")])
    assert "launcher: srun" in two[0].stdout
    a = json.loads((tmp_path / "one" / "test_metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "test_metrics.json").read_text())
    assert a == b and a["videos_scored"] == 3


# -- resuming on another number of processes --------------------------------------------------------------------

N_VIDEOS = 26  # 6 global batches of 4 and a tail of 2, dropped


class _Clips:
    """A stand-in for the clip source: a batch is the slots' positions as features (no decoding)."""

    def __init__(self, records):
        self.records, self.epoch = records, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def load_batch(self, pairs):
        slots = [s for s, _ in pairs]
        video = torch.tensor([[float(s), 1.0, -float(s) / 10, 0.5] for s in slots])
        return video, slots, [r for _, r in pairs], []


def _slot_task():
    from vmae2.data.lists import VideoRecord
    from vmae2.data.pretraining.loader import PretrainLoader
    from vmae2.training.loop import Task
    from vmae2.training.optim import build_optimizer

    class SlotTask(Task):
        """A linear model on the slots: each micro-batch's slots go to ``slots-rank{r}.jsonl``."""
        ENTRY = "train"

        def __init__(self, s):
            super().__init__(s)
            cfg, d = self.cfg, self.dist
            records = [VideoRecord(f"v{i}.mp4", 0, -1, -1, True, "", 1, "list") for i in range(N_VIDEOS)]
            self.loader = PretrainLoader(records, batch_size=cfg.batch_size, seed=cfg.seed, rank=d.rank,
                                         world_size=d.world_size, backend="torch", num_workers=0,
                                         accum_steps=cfg.accum_steps)
            self.loader.source = _Clips(self.loader.source.records)
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
            self.sharded = cfg.fsdp and d.world_size > 1
            if self.sharded:
                from torch.distributed.fsdp import fully_shard

                self.runner = fully_shard(self.model)
            elif d.world_size > 1:
                self.runner = torch.nn.parallel.DistributedDataParallel(self.model)
            else:
                self.runner = self.model
            self.log = Path(cfg.output_dir) / f"slots-rank{d.rank}.jsonl"

        def build_optimizer(self, lr):
            return build_optimizer(self.model, lr, 0.05, (0.9, 0.95), 1e-8, fused=False)

        def forward(self, batch, step, micro):
            with open(self.log, "a") as f:
                f.write(json.dumps({"step": step, "micro": micro, "epoch": self.loader.order.epoch,
                                    "slots": batch.slots, "world": self.dist.world_size}) + "\n")
            loss = self.runner(batch.video).pow(2).mean()
            return loss, loss.detach(), loss

        def state(self):
            if not self.sharded:
                return super().state()
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            model, optim = get_state_dict(self.model, self.optimizer,
                                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return {"model": model, "optimizer": optim}

        def load_state(self, state):
            if not self.sharded:
                return super().load_state(state)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"],
                           options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    return SlotTask


def _config(out, **kw):
    from vmae2.train import TrainConfig

    base = dict(output_dir=str(out), device="cpu", num_workers=0, epochs=2, warmup_steps=2, lr=0.1, min_lr=0.0,
                weight_decay=0.05, weight_decay_end=0.2, log_every=1, save_every_steps=1, keep_last=100, seed=3,
                compile="off", fsdp=False, batch_size=2, accum_steps=1)
    return TrainConfig(**{**base, **kw})


def _engine_worker(rank, world, port, kw, out):
    from vmae2.training import loop

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if world == 1:
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(k)
    code = loop.run(_slot_task(), _config(out, **kw))
    (Path(out) / f"exit-{rank}-{world}").write_text(str(code))


def _engine(world: int, out, **kw) -> None:
    mp.spawn(_engine_worker, args=(world, _free_port(), kw, str(out)), nprocs=world, join=True)
    assert all((Path(out) / f"exit-{r}-{world}").read_text() == "0" for r in range(world))


def _consumed(out) -> dict[int, tuple[int, list[int]]]:
    """Step -> (its epoch, the slots its micro-batches held on every rank)."""
    steps: dict[int, tuple[int, list[int]]] = {}
    for path in sorted(Path(out).glob("slots-rank*.jsonl")):
        for rec in map(json.loads, path.read_text().splitlines()):
            epoch, slots = steps.setdefault(rec["step"], (rec["epoch"], []))
            assert epoch == rec["epoch"]
            slots += rec["slots"]
    return {step: (epoch, sorted(slots)) for step, (epoch, slots) in steps.items()}


def _cut(out, step: int) -> None:
    """Leave ``out`` as a run stopped at ``step``: later checkpoints, metrics and slot records removed."""
    for p in Path(out, "checkpoints").glob("checkpoint-*.pt"):
        if int(p.stem.split("-")[1]) > step:
            p.unlink()
    for name in ["metrics.jsonl", *[p.name for p in Path(out).glob("slots-rank*.jsonl")]]:
        lines = Path(out, name).read_text().splitlines()
        kept = [ln for ln in lines if json.loads(ln)["step"] < step + (name == "metrics.jsonl")]
        Path(out, name).write_text("".join(ln + "\n" for ln in kept))


def _schedule(out) -> dict[int, tuple]:
    lines = Path(out, "metrics.jsonl").read_text().splitlines()
    return {r["step"]: (r["lr"], r["epoch"]) for r in map(json.loads, lines)}


@pytest.mark.parametrize("first, then, split", [(2, 1, dict(batch_size=2, accum_steps=1)),
                                                (1, 2, dict(batch_size=2, accum_steps=2))])
def test_a_run_resumed_on_another_world_size_sees_every_sample_once(tmp_path, first, then, split, capsys):
    """6 steps of 4 videos an epoch (26 videos, the tail of 2 dropped), 2 epochs; stopped at step 3 (mid-epoch 0)
    and at step 8 (mid-epoch 1), resumed on the other world size: the same global batch, lr per step and slots per
    step as the uninterrupted run, and every slot of each epoch consumed exactly once."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _engine(first, whole, **split)
    _engine(first, cut, **split)
    _cut(cut, 3)
    _engine(then, cut, **split)
    _cut(cut, 8)
    _engine(first, cut, **split)
    ref, got = _consumed(whole), _consumed(cut)
    assert sorted(ref) == list(range(12)) and ref == got
    for epoch in (0, 1):
        slots = sorted(s for e, steps in got.values() for s in steps if e == epoch)
        assert slots == list(range(24))  # every position of the epoch once; the tail (24, 25) dropped
    assert all(len(s) == 4 for _, s in got.values())
    assert _schedule(whole) == _schedule(cut)


def test_resume_refuses_a_world_size_that_cannot_split_the_global_batch(tmp_path):
    from vmae2.training.loop import fit_global_batch

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"world_size": 2, "config": {"batch_size": 3, "accum_steps": 1}, "step": 1},
               out / "checkpoints" / "checkpoint-00000001.pt")
    cfg = _config(out, batch_size=3)
    with pytest.raises(ValueError, match=r"global batch of 6 videos .* 4 processes cannot split.* \(1, 2, 3, 6\)"):
        fit_global_batch(cfg, Dist(0, 4, 0))
    assert fit_global_batch(cfg, Dist(0, 2, 0)) is cfg
    three = fit_global_batch(cfg, Dist(0, 3, 0))
    assert (three.batch_size, three.accum_steps) == (2, 1)  # 6 = 2 x 3 x 1: the largest batch up to 3 that divides
    one = fit_global_batch(cfg, Dist(0, 1, 0))
    assert (one.batch_size, one.accum_steps) == (3, 2)
    fresh = _config(out, resume="none", batch_size=3)
    assert fit_global_batch(fresh, Dist(0, 4, 0)) is fresh  # a new run: no change


def test_an_fsdp_checkpoint_of_two_processes_resumes_on_one_and_back(tmp_path):
    """FSDP2 (full state dict: parameter-name keys) on 2 ranks -> a single process (position keys) -> FSDP2 on 2:
    the model and the AdamW moments load as saved, and the data continues where it stopped."""
    out = tmp_path / "fsdp"
    _engine(2, out, fsdp=True)
    _cut(out, 3)
    saved = torch.load(out / "checkpoints" / "checkpoint-00000003.pt", weights_only=True)
    assert isinstance(next(iter(saved["optimizer"]["state"])), str)  # keyed by name
    _engine(1, out, fsdp=True)
    _cut(out, 8)
    _engine(2, out, fsdp=True)
    got = _consumed(out)
    assert all(sorted(s for e, st in got.values() for s in st if e == ep) == list(range(24)) for ep in (0, 1))
    whole = tmp_path / "whole"
    _engine(2, whole, fsdp=True)
    a = torch.load(whole / "checkpoints" / "checkpoint-00000012.pt", weights_only=True)["model"]
    b = torch.load(out / "checkpoints" / "checkpoint-00000012.pt", weights_only=True)["model"]
    for k in a:  # the same data and schedule; 1 process sums the same gradients in another order
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
