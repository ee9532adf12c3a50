"""--fsdp: the trainer shards the model with FSDP2 (fully_shard) under torchrun; two CPU processes on gloo.

Two launches: `genlab train lm --fsdp` through the CLI (run a), then tests/fsdp_worker.py, which stops an
FSDP run with a Ctrl-C and resumes it (b), trains the same run with DDP (ddp) and resumes a copy of that
with FSDP (ddp_then_fsdp), and LoRA-fine-tunes run a with FSDP and with DDP (lora, lora_ddp).
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from genlab import runs
from genlab.cli import app
from genlab.config import DataConfig, train_config
from genlab.models.transformer import LMConfig, Transformer
from genlab.train import finetune as ft
from genlab.train.lm import LMTrainSpec, train_lm

from .conftest import ROOT

STEPS, STOP = 12, 7
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _launch(args, timeout=300):
    res = subprocess.run(TORCHRUN + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _train_losses(run):
    with open(run / runs.METRICS) as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r["split"] == "train"]


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, corpus_dir):
    out = tmp_path_factory.mktemp("fsdp")
    cli = _launch(["-m", "genlab", "train", "lm", "--data", str(corpus_dir), "--tokenizer", "char",
                   "--out", str(out / "a"), "--steps", str(STEPS), "--context", "32", "--batch-size", "4",
                   "--eval-every", "6", "--eval-batches", "2", "--checkpoint-every", "6", "--log-every", "1",
                   "--device", "cpu", "--fsdp"])
    _launch([str(ROOT / "tests" / "fsdp_worker.py"), str(corpus_dir), str(out), str(STEPS), str(STOP),
             str(out / "a")])
    return out, cli.stderr, json.loads((out / "losses.json").read_text())


@pytest.mark.slow
def test_fsdp_trains_and_saves_an_ordinary_model_file(fsdp_runs):
    out, stderr, _ = fsdp_runs
    run = out / "a"
    cfg = json.loads((run / runs.CONFIG).read_text())
    assert cfg["world_size"] == 2 and cfg["train"]["fsdp"] is True
    assert stderr.count("lm model:") == 1 and "2 processes (FSDP)" in stderr  # only rank 0 talks
    assert stderr.count(f"step {STEPS}: loss") == 1  # every rank evaluates, rank 0 reports
    losses = _train_losses(run)
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    assert losses[-1][1] < losses[0][1] - 0.3
    assert not (run / "samples").exists()  # no sampling under FSDP
    assert not list(run.glob("*.tmp"))
    # The full weights, gathered on rank 0: a plain Transformer loads them (strict names, tied head).
    model = Transformer(LMConfig.from_dict(cfg["model"]))
    assert runs.load_weights(run, model)["step"] == str(STEPS)
    with safe_open(str(run / runs.WEIGHTS), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # the tied head is stored once, as without FSDP
    state = runs.load_train_state(run)
    assert state["step"] == STEPS
    n_params = len(list(model.parameters()))
    assert sorted(state["optimizer"]["state"]) == list(range(n_params))  # optimizer.state_dict()'s layout


@pytest.mark.slow
def test_fsdp_resume_is_exact_and_matches_ddp(fsdp_runs):
    out, _, losses = fsdp_runs
    a, b, ddp = (load_file(str(out / name / runs.WEIGHTS)) for name in ("a", "b", "ddp"))
    # Stopped by Ctrl-C at step STOP and resumed: bit-for-bit the uninterrupted FSDP run.
    assert [s for s, _ in losses["resumed"]] == list(range(STOP + 1, STEPS + 1))
    assert _train_losses(out / "b") == _train_losses(out / "a")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (runs.load_train_state(out / name)["optimizer"]["state"] for name in ("a", "b"))
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    # FSDP is DDP's arithmetic, sharded: the same losses and weights up to float rounding (the
    # gradients are summed in another order), not bit for bit.
    assert [v for _, v in losses["ddp"][STOP:]] == pytest.approx([v for _, v in losses["resumed"]], rel=1e-5)
    assert set(a) == set(ddp)
    assert all(torch.allclose(a[k], ddp[k], rtol=0, atol=1e-5) for k in a)
    sd = runs.load_train_state(out / "ddp")["optimizer"]["state"]
    assert all(torch.allclose(sa[i][k], sd[i][k], rtol=1e-4, atol=1e-7) for i in sa for k in sa[i])


@pytest.mark.slow
def test_fsdp_lora_saves_only_the_adapters(fsdp_runs):
    out, _, losses = fsdp_runs
    run = out / "lora"
    assert (run / ft.ADAPTER).exists() and not (run / runs.WEIGHTS).exists()
    adapters = load_file(str(run / ft.ADAPTER))
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert all(adapters[n].abs().sum() > 0 for n in adapters if ".lora_B." in n)  # trained (B starts at 0)
    same = load_file(str(out / "lora_ddp" / ft.ADAPTER))
    assert all(torch.allclose(adapters[n], same[n], rtol=0, atol=1e-5) for n in adapters)
    assert [v for _, v in losses["lora"]] == pytest.approx([v for _, v in losses["lora_ddp"]], rel=1e-5)
    # Merged, only the adapted projections differ from the base.
    base = load_file(str(out / "a" / runs.WEIGHTS))
    merged = runs.weights_of(ft.merged_model(run, runs.read_config(run)))
    adapted = {n.split(".lora_")[0] + ".weight" for n in adapters}
    assert set(merged) == set(base)
    for name in base:
        assert torch.equal(merged[name], base[name]) == (name not in adapted), name


@pytest.mark.slow
def test_a_run_resumes_across_ddp_fsdp_and_one_process(fsdp_runs, tmp_path, corpus_dir):
    out, _, losses = fsdp_runs
    # The worker resumed the DDP run with FSDP; AdamW's step count shows the optimizer state came along.
    assert [s for s, _ in losses["ddp_then_fsdp"]] == [STEPS + 1, STEPS + 2]
    assert runs.load_train_state(out / "ddp_then_fsdp")["optimizer"]["state"][0]["step"] == STEPS + 2
    # The FSDP run, resumed in one process.
    run = tmp_path / "a"
    shutil.copytree(out / "a", run)
    tcfg = train_config("tiny", steps=STEPS + 2, eval_every=6, checkpoint_every=6, batch_size=4, eval_batches=1)
    res = train_lm(LMTrainSpec(run=run, train=tcfg, resume=True, quiet=True))
    assert [s for s, _ in res.losses] == [STEPS + 1, STEPS + 2]
    assert runs.load_train_state(run)["optimizer"]["state"][0]["step"] == STEPS + 2


def test_fsdp_in_one_process_is_a_no_op_that_says_so(tmp_path, corpus_dir, capsys):
    tcfg = train_config("tiny", steps=2, eval_every=2, checkpoint_every=2, batch_size=4, eval_batches=1,
                        fsdp=True)
    train_lm(LMTrainSpec(run=tmp_path / "r", data=DataConfig(corpus=[str(corpus_dir)], tokenizer="char"),
                         preset="tiny", model_overrides={"context": 32}, train=tcfg))
    assert "--fsdp: a single process, nothing to shard" in capsys.readouterr().err
    assert (tmp_path / "r" / runs.WEIGHTS).exists()


def test_fsdp_flag_is_shared_by_train_lm_and_finetune():
    for verb in (["train", "lm"], ["finetune"]):
        res = CliRunner().invoke(app, [*verb, "--help"], terminal_width=200)
        assert res.exit_code == 0 and "--fsdp" in res.output, res.output
