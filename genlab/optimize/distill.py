"""Knowledge distillation: train a small LM (the student) to match a larger one (the teacher).

The loss mixes the usual next-token cross-entropy with the KL divergence between the teacher's and
the student's temperature-softened distributions (Hinton et al., 2015):

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE

The T^2 factor keeps the soft term's gradients on the same scale as the hard term's as T changes.
``alpha = 0`` is plain training of the same student on the same data, tokens and seed: the baseline
to compare a distilled student against.

The student is an ``LMTask`` whose loss also asks the teacher, so it goes through the shared trainer
(progress, budgets, checkpoints, exact resume, DDP) and the result is a normal LM run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab import runs
from genlab.config import DataConfig, TrainConfig, lm_config
from genlab.data import prepare as prep
from genlab.data import tokenizer as tokmod
from genlab.errors import ConfigError, RunError
from genlab.models.transformer import LMConfig, Transformer
from genlab.runtimes.pytorch import load_float_model
from genlab.train.lm import LMTask, build_model
from genlab.train.trainer import TrainResult, begin, create_run, resumed_train_config, train


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 alpha: float, temperature: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy, averaged per token."""
    vocab = student_logits.size(-1)
    s = student_logits.float().reshape(-1, vocab)
    ce = F.cross_entropy(s, targets.reshape(-1))
    if alpha == 0:
        return ce
    t = teacher_logits.float().reshape(-1, vocab)
    # kl_div(input=log q_student, target=log p_teacher) = sum p_teacher * (log p_teacher - log q_student);
    # "batchmean" divides by the number of rows, i.e. tokens.
    kd = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                  reduction="batchmean", log_target=True)
    return alpha * temperature**2 * kd + (1 - alpha) * ce


class DistillTask(LMTask):
    """The LM objective with a frozen teacher's soft targets mixed in; evaluation reports the
    student's own loss and perplexity, as for any LM run."""

    def __init__(self, model: Transformer, teacher: Transformer, data: prep.Prepared, batch_size: int,
                 eval_batches: int, alpha: float, temperature: float) -> None:
        super().__init__(model, data, batch_size, eval_batches)
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def loss(self, model, batch):
        x, y = (t.to(self.device) for t in batch)
        logits = model(x)
        teacher_logits = None
        if self.alpha > 0:
            if self.teacher.norm.weight.device != x.device:
                self.teacher.to(x.device)
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        return distill_loss(logits, teacher_logits, y, self.alpha, self.temperature), y.numel()


@dataclass
class DistillSpec:
    """Everything `genlab distill` needs; the CLI only fills it in."""

    run: Path
    teacher: Path | None = None  # read from the run's config.json on --resume
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    train: TrainConfig | None = None
    alpha: float = 0.5
    temperature: float = 2.0
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1] (got {self.alpha})")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be positive (got {self.temperature})")


def distill(spec: DistillSpec) -> TrainResult:
    """Train (or resume) a student run distilled from ``spec.teacher``."""
    run = Path(spec.run)
    tcfg = spec.train
    dist, log = begin(tcfg, spec.quiet)
    if spec.resume:
        saved = runs.read_config(run, family="lm")
        if "distill" not in saved:
            raise RunError(f"run '{run}' was not made by `genlab distill`; resume it with `genlab train lm --resume`")
        d = saved["distill"]
        teacher_path, alpha, temperature = Path(d["teacher"]), d["alpha"], d["temperature"]
        tcfg = resumed_train_config(saved, tcfg)
    else:
        spec.validate()
        if spec.teacher is None:
            raise ConfigError("give the teacher run: --teacher RUN")
        runs.require_new(run, spec.overwrite)
        teacher_path, alpha, temperature = Path(spec.teacher), spec.alpha, spec.temperature

    teacher, t_cfg = load_float_model(teacher_path)
    if not isinstance(t_cfg.get("data"), dict):
        raise RunError(f"teacher '{teacher_path}' records no training data (an imported model?); "
                       f"distillation reuses the teacher's corpus")
    tok = tokmod.load(teacher_path / runs.TOKENIZER)
    data_cfg = DataConfig(**t_cfg["data"]["config"])

    # the teacher's corpus with the teacher's tokenizer
    data = dist.main_first(lambda: prep.prepare(data_cfg, tok=tok, log=log))

    if spec.resume:
        student_cfg = LMConfig.from_dict(saved["model"])
    else:
        overrides = dict(spec.model_overrides)
        overrides["vocab_size"] = teacher.cfg.vocab_size
        overrides.setdefault("context", teacher.cfg.context)
        student_cfg = lm_config(spec.preset, **overrides)
        if student_cfg.context > teacher.cfg.context:
            raise ConfigError(f"the student's context ({student_cfg.context}) cannot exceed the teacher's "
                              f"({teacher.cfg.context}): the teacher must read the same windows")
        create_run(run, {
            "family": "lm",
            "preset": spec.preset,
            "model": student_cfg.to_dict(),
            "train": tcfg.to_dict(),
            "data": t_cfg["data"],
            "distill": {"teacher": str(teacher_path), "alpha": alpha, "temperature": temperature,
                        "teacher_params": teacher.num_params()},
            "init_from": None,
        }, dist, spec.overwrite)
        if dist.is_main:
            shutil.copyfile(teacher_path / runs.TOKENIZER, run / runs.TOKENIZER)
        dist.barrier()

    student = build_model(student_cfg, tcfg.seed)
    log(f"distilling {teacher.num_params():,}-parameter teacher {teacher_path} into a "
        f"{student.num_params():,}-parameter student (alpha {alpha}, temperature {temperature})")
    task = DistillTask(student, teacher, data, tcfg.batch_size, tcfg.eval_batches, alpha, temperature)
    return train(task, tcfg, run, resume=spec.resume, quiet=spec.quiet, dist=dist,
                 extra_meta={"distilled_from": str(teacher_path)})
