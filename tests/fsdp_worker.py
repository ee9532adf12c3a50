"""Run under torchrun by tests/test_fsdp.py, in one launch (one process group for all phases):

  b     an FSDP LM run that a Ctrl-C stops at step STOP (on every rank, as torchrun's signal would),
        then resumed to the same budget of STEPS
  ddp   the same run with DDP; ddp_then_fsdp: a copy of it resumed with FSDP for 2 more steps
  lora  a LoRA fine-tune of BASE with FSDP, and lora_ddp the same with DDP

Rank 0 writes each phase's losses (exact floats) to OUT/losses.json.

    torchrun --nproc_per_node=2 tests/fsdp_worker.py CORPUS OUT STEPS STOP BASE
"""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch.distributed

from genlab.config import DataConfig, train_config
from genlab.errors import GenlabError
from genlab.train import finetune as ft
from genlab.train import trainer
from genlab.train.lm import LMTask, LMTrainSpec, train_lm

corpus, out, steps, stop, base = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
# Keep the one process group across the phases (init_distributed joins it once): a process group
# destroyed and created again in the same torchrun worker can meet its old rendezvous keys.
trainer.shutdown_distributed = lambda: None


def tcfg(n_steps: int, fsdp: bool, **kw):
    return train_config("tiny", steps=n_steps, eval_every=6, checkpoint_every=6, batch_size=4, log_every=1,
                        eval_batches=2, device="cpu", fsdp=fsdp, **kw)


def spec(run: Path, resume: bool = False, fsdp: bool = True, n_steps: int = steps) -> LMTrainSpec:
    return LMTrainSpec(run=run, data=DataConfig(corpus=[corpus], tokenizer="char"), preset="tiny",
                       model_overrides={"context": 32}, train=tcfg(n_steps, fsdp), resume=resume, quiet=True)


def lora(run: Path, fsdp: bool):
    return ft.finetune(ft.FinetuneSpec(run=run, base=Path(base), data=DataConfig(corpus=[corpus]), method="lora",
                                       lora=ft.LoraSettings(rank=4, dropout=0.0),
                                       train=tcfg(6, fsdp, lr=1e-2, warmup_steps=2), quiet=True))


calls = []
original = LMTask.train_batch


def train_batch(self, rng):  # a SIGINT to this process during step STOP
    calls.append(1)
    if len(calls) == stop:
        os.kill(os.getpid(), signal.SIGINT)
    return original(self, rng)


LMTask.train_batch = train_batch
try:
    train_lm(spec(out / "b"))
    raise SystemExit("the Ctrl-C did not stop the run")
except GenlabError as e:
    assert f"stopped at step {stop}" in str(e), e
LMTask.train_batch = original
losses = {"resumed": train_lm(spec(out / "b", resume=True)).losses,
          "ddp": train_lm(spec(out / "ddp", fsdp=False)).losses}
if int(os.environ["RANK"]) == 0:
    shutil.copytree(out / "ddp", out / "ddp_then_fsdp")
torch.distributed.barrier()
losses |= {"ddp_then_fsdp": train_lm(spec(out / "ddp_then_fsdp", resume=True, n_steps=steps + 2)).losses,
          "lora": lora(out / "lora", fsdp=True).losses,
          "lora_ddp": lora(out / "lora_ddp", fsdp=False).losses}
if int(os.environ["RANK"]) == 0:
    (out / "losses.json").write_text(json.dumps(losses))
torch.distributed.destroy_process_group()
