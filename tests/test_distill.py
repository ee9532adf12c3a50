"""Distillation: the loss, training through the shared trainer (falling loss, exact resume), the
student as a normal run, and alpha = 0 as the from-scratch baseline."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import genlab
from genlab import runs
from genlab.config import DataConfig, train_config
from genlab.errors import ConfigError, RunError
from genlab.optimize.distill import DistillSpec, DistillTask, distill, distill_loss
from genlab.train.lm import LMTrainSpec, train_lm
from genlab.train.trainer import Interrupted

from .conftest import ctrl_c_during_batch

STUDENT = {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1}


def test_distill_loss_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g) * 3
    y = torch.randint(0, 11, (2, 5), generator=g)
    ce = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1))
    assert torch.allclose(distill_loss(s, t, y, 0.0, 2.0), ce)
    T = 2.0
    p = torch.softmax(t / T, -1)
    kl = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
    assert torch.allclose(distill_loss(s, t, y, 0.3, T), 0.3 * T * T * kl + 0.7 * ce, atol=1e-6)
    # a student that already matches the teacher pays only the hard-label term
    assert torch.allclose(distill_loss(t, t, y, 0.5, T), 0.5 * F.cross_entropy(t.reshape(-1, 11), y.reshape(-1)))


def _spec(run, teacher, steps, **kw):
    tcfg = train_config("tiny", steps=steps, batch_size=8, warmup_steps=2, eval_every=6, checkpoint_every=6,
                        eval_batches=2, log_every=1)
    return DistillSpec(run=run, teacher=teacher, preset="tiny", model_overrides=dict(STUDENT), train=tcfg,
                       quiet=True, **kw)


def test_student_loss_falls_resume_is_exact_and_the_student_is_a_normal_run(tmp_path, trained_run, monkeypatch):
    straight = distill(_spec(tmp_path / "a", trained_run, 12))
    losses = [v for _, v in straight.losses]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3

    # The same 12-step run, stopped by a Ctrl-C that arrives during step 7, then resumed.
    ctrl_c_during_batch(monkeypatch, DistillTask, 7)
    with pytest.raises(Interrupted, match="stopped at step 7"):
        distill(_spec(tmp_path / "b", trained_run, 12))
    monkeypatch.undo()
    resumed = distill(DistillSpec(run=tmp_path / "b", train=_spec(None, None, 12).train, resume=True, quiet=True))
    assert resumed.losses == straight.losses[7:]  # bit-for-bit the uninterrupted run's losses

    cfg = json.loads((tmp_path / "a" / runs.CONFIG).read_text())
    assert cfg["family"] == "lm" and cfg["distill"]["teacher"] == str(trained_run)
    assert cfg["model"]["context"] == 64 and cfg["model"]["d_model"] == 32  # teacher's context, student's size
    assert (tmp_path / "a" / runs.TOKENIZER).read_bytes() == (trained_run / runs.TOKENIZER).read_bytes()
    lm = genlab.load(tmp_path / "a")
    assert lm.model.num_params() < genlab.load(trained_run).model.num_params() / 2
    assert isinstance(lm.generate("The cat", max_tokens=10, seed=0), str)


def test_alpha_zero_is_the_same_training_as_train_lm(tmp_path, trained_run, corpus_dir):
    """The documented baseline: `genlab train lm` with the teacher's data and the student's settings
    computes exactly the losses of `genlab distill --alpha 0`."""
    base = distill(_spec(tmp_path / "ce", trained_run, 4, alpha=0.0))
    teacher_data = json.loads((trained_run / runs.CONFIG).read_text())["data"]["config"]
    plain = train_lm(LMTrainSpec(
        run=tmp_path / "plain", data=DataConfig(**teacher_data), preset="tiny",
        model_overrides={**STUDENT, "context": 64}, train=_spec(None, None, 4).train, quiet=True))
    assert plain.losses == base.losses


def test_bad_distillation_settings(tmp_path, trained_run):
    with pytest.raises(ConfigError, match="alpha"):
        distill(_spec(tmp_path / "x", trained_run, 2, alpha=1.5))
    with pytest.raises(ConfigError, match="temperature"):
        distill(_spec(tmp_path / "x", trained_run, 2, temperature=0))
    with pytest.raises(RunError, match="does not exist"):
        distill(_spec(tmp_path / "x", tmp_path / "no-teacher", 2))
    spec = _spec(tmp_path / "x", trained_run, 2)
    spec.model_overrides["context"] = 128
    with pytest.raises(ConfigError, match="cannot exceed the teacher"):
        distill(spec)
