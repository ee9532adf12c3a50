import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genlab import runs
from genlab.config import DataConfig, TrainConfig, train_config
from genlab.errors import ConfigError, RunError
from genlab.models.transformer import LMConfig, Transformer
from genlab.train.lm import LMTask, LMTrainSpec, train_lm
from genlab.train.trainer import Interrupted, lr_at

from .conftest import GENLAB, ROOT, ctrl_c_during_batch


def spec(run, corpus_dir, steps, resume=False, **train_kw):
    tcfg = train_config("tiny", steps=steps, eval_every=10, checkpoint_every=5, batch_size=8, log_every=1,
                        **train_kw)
    return LMTrainSpec(run=run, data=DataConfig(corpus=[str(corpus_dir)], tokenizer="char"), preset="tiny",
                       model_overrides={"context": 32}, train=tcfg, resume=resume, quiet=True)


def test_loss_falls_on_a_tiny_corpus(tmp_path, corpus_dir):
    res = train_lm(spec(tmp_path / "r", corpus_dir, 60))
    first = sum(v for _, v in res.losses[:5]) / 5
    last = sum(v for _, v in res.losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert res.val["loss"] < first
    for name in ("config.json", "model.safetensors", "tokenizer.json", "train_state.pt", "metrics.csv"):
        assert (tmp_path / "r" / name).exists()
    assert list((tmp_path / "r" / "samples").glob("step_*.txt"))
    assert list((tmp_path / "r" / "tb").iterdir())
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["family"] == "lm" and cfg["model"]["context"] == 32 and cfg["data"]["fingerprint"]


def test_resume_reproduces_the_uninterrupted_losses_exactly(tmp_path, corpus_dir, monkeypatch):
    straight = train_lm(spec(tmp_path / "a", corpus_dir, 20))
    # The same 20-step run, stopped by a Ctrl-C that arrives during step 10.
    ctrl_c_during_batch(monkeypatch, LMTask, 10)
    with pytest.raises(Interrupted, match="stopped at step 10"):
        train_lm(spec(tmp_path / "b", corpus_dir, 20))
    monkeypatch.undo()
    resumed = train_lm(spec(tmp_path / "b", corpus_dir, 20, resume=True))
    assert [s for s, _ in resumed.losses] == list(range(11, 21))
    assert resumed.losses == straight.losses[10:]  # bit-for-bit equal floats
    a = runs.weights_of(_load(tmp_path / "a"))
    b = runs.weights_of(_load(tmp_path / "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # metrics.csv has no duplicated steps after the resume
    with open(tmp_path / "b" / "metrics.csv") as f:
        train_steps = [int(r["step"]) for r in csv.DictReader(f) if r["split"] == "train"]
    assert train_steps == list(range(1, 21))


def _load(run: Path) -> Transformer:
    model = Transformer(LMConfig.from_dict(json.loads((run / "config.json").read_text())["model"]))
    runs.load_weights(run, model)
    return model


def test_init_from_fine_tunes_from_parent_weights(tmp_path, corpus_dir):
    train_lm(spec(tmp_path / "parent", corpus_dir, 10))
    other = tmp_path / "other.txt"
    other.write_text("a completely different corpus about zebras and quartz.\n" * 80)
    child_spec = spec(tmp_path / "child", corpus_dir, 5)
    child_spec.data = DataConfig(corpus=[str(other)], tokenizer="char")
    child_spec.init_from = tmp_path / "parent"
    res = train_lm(child_spec)
    assert res.step == 5
    assert (tmp_path / "child" / "tokenizer.json").read_text() == (tmp_path / "parent" / "tokenizer.json").read_text()
    cfg = json.loads((tmp_path / "child" / "config.json").read_text())
    assert cfg["init_from"] == str(tmp_path / "parent")


def test_grad_clip_zero_means_no_clipping(tmp_path, corpus_dir):
    # 0 turns clipping off; it must not clip the gradients to a norm of 0 (which stops all learning)
    res = train_lm(spec(tmp_path / "r", corpus_dir, 15, grad_clip=0.0, warmup_steps=2, weight_decay=0.0))
    first = sum(v for _, v in res.losses[:3]) / 3
    last = sum(v for _, v in res.losses[-3:]) / 3
    assert last < 0.9 * first, (first, last)


def test_negative_grad_clip_is_a_config_error():
    with pytest.raises(ConfigError, match="--grad-clip"):
        train_config("tiny", steps=1, grad_clip=-1.0)


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(cfg, s, s / 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_interrupted_checkpoint_write_is_recovered(tmp_path, corpus_dir):
    run = tmp_path / "r"
    train_lm(spec(run, corpus_dir, 5))
    good = (run / "model.safetensors").read_bytes()
    # A kill while writing temp files: garbage temp files, the committed checkpoint untouched.
    (run / "model.safetensors.tmp").write_bytes(b"partial")
    (run / "train_state.pt.tmp").write_bytes(b"partial")
    assert runs.load_train_state(run)["step"] == 5
    assert not (run / "model.safetensors.tmp").exists() and not (run / "train_state.pt.tmp").exists()
    assert (run / "model.safetensors").read_bytes() == good
    # A kill between the two renames: the new state is in place, the new weights still in temp.
    model = _load(run)
    state = runs.load_train_state(run)
    state["step"] = 6
    runs.save_checkpoint(run, model, state)
    os.replace(run / "model.safetensors", run / "model.safetensors.tmp")
    (run / "model.safetensors").write_bytes(good)  # the old step-5 weights
    assert runs.load_train_state(run)["step"] == 6  # rolled forward
    assert runs._weights_step(run / "model.safetensors") == 6


def test_corrupted_weights_are_a_clear_error(tmp_path, corpus_dir):
    run = tmp_path / "r"
    train_lm(spec(run, corpus_dir, 5))
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="corrupted|does not match"):
        _load(run)


def _train_cmd(run, corpus_dir, steps):
    return GENLAB + ["train", "lm", "--data", str(corpus_dir), "--tokenizer", "char", "--out", str(run),
                     "--steps", str(steps), "--context", "32", "--batch-size", "8", "--checkpoint-every", "1",
                     "--eval-every", "1000", "--log-every", "1"]


def _wait_for_checkpoint(run: Path, proc, timeout=120):
    t0 = time.time()
    while not (run / "train_state.pt").exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited early"
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_sigkill_mid_training_resumes_from_last_good_checkpoint(tmp_path, corpus_dir):
    run = tmp_path / "r"
    # Checkpoint every step so the kill is likely to land mid-write.
    proc = subprocess.Popen(_train_cmd(run, corpus_dir, 100000) + ["--quiet"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run, proc)
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = runs.load_train_state(run)["step"]
    assert step >= 1
    done = subprocess.run(_train_cmd(run, corpus_dir, step + 3) + ["--resume", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert runs.load_train_state(run)["step"] == step + 3
    assert not list(run.glob("*.tmp"))


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, corpus_dir):
    run = tmp_path / "r"
    cmd = _train_cmd(run, corpus_dir, 100000)
    cmd[cmd.index("--checkpoint-every") + 1] = "1000000"  # only the Ctrl-C checkpoint and the first
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run / "metrics.csv").exists() or len((run / "metrics.csv").read_text().splitlines()) < 4:
        assert proc.poll() is None and time.time() - t0 < 120
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved" in stderr and "Traceback" not in stderr
    state = runs.load_train_state(run)
    assert state["step"] >= 3
    assert runs._weights_step(run / "model.safetensors") == state["step"]


@pytest.mark.slow
def test_torchrun_two_processes_train_and_only_rank0_writes(tmp_path, corpus_dir):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "genlab",
           "train", "lm", "--data", str(corpus_dir), "--tokenizer", "char", "--out", str(run), "--steps", "12",
           "--context", "32", "--batch-size", "4", "--eval-every", "6", "--checkpoint-every", "6",
           "--log-every", "1", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_steps = [int(r["step"]) for r in rows if r["split"] == "train"]
    assert train_steps == list(range(1, 13))  # one writer: each step logged once
    losses = [float(r["loss"]) for r in rows if r["split"] == "train"]
    assert losses[-1] < losses[0]
    assert runs.load_train_state(run)["step"] == 12
    assert len(list((run / "samples").iterdir())) == 2
    assert not list(run.glob("*.tmp"))
    assert res.stderr.count("lm model:") == 1  # only rank 0 talks


def test_weights_of_another_shape_are_a_clear_error(tmp_path, corpus_dir):
    run = tmp_path / "r"
    train_lm(spec(run, corpus_dir, 2))
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["d_model"] = 128
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunError, match="does not match"):
        _load(run)
