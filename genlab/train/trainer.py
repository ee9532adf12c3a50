"""The one training loop, shared by every model family.

A family plugs in through a ``Task``: it owns the model, draws batches, computes the loss, evaluates
and writes samples. The trainer owns everything else: device and autocast, DDP under torchrun (or,
with ``fsdp``, FSDP2 sharding: see ``genlab.train.fsdp``), AdamW with decay/no-decay groups, warmup +
cosine schedule, gradient accumulation and clipping, step or wall-clock budgets, metrics (CSV +
TensorBoard), atomic checkpoints, exact resume, a progress bar, and a clean stop on Ctrl-C / SIGTERM.

Exact resume: batches are drawn from an RNG seeded by (seed, step, micro-step, rank), and the
checkpoint holds the weights, the optimizer, the step and the torch RNG state, so a resumed run
computes bit-for-bit the losses an uninterrupted run would have.

A task with several optimizers (a GAN: discriminator, then generator) implements ``SteppingTask``:
it builds its optimizers and makes the updates itself in ``train_step``; the trainer keeps the
rest (schedule, budgets, logging, evaluation, checkpoints with every optimizer's state, resume).
"""

from __future__ import annotations

import csv
import math
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import genlab
from genlab import runs
from genlab.config import TrainConfig, write_json
from genlab.device import Dist, autocast, autocast_dtype, init_distributed, pick_device, shutdown_distributed
from genlab.errors import ConfigError, GenlabError

console = Console(stderr=True)


class Interrupted(GenlabError):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint."""

    exit_code = 130


class Task(Protocol):
    family: str
    unit: str  # what throughput counts: "tok" or "img"
    metric_names: tuple[str, ...]  # train "loss" plus what evaluate() returns
    model: torch.nn.Module

    def train_batch(self, rng: np.random.Generator) -> Any: ...

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """Mean loss of the batch and how many units (tokens, images) it holds."""
        ...

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Validation metrics; their names are listed in ``metric_names`` (the CSV columns)."""
        ...

    def sample(self, model: torch.nn.Module, step: int, out_dir: Path) -> None: ...


def clip_gradients(params, max_norm: float) -> torch.Tensor:
    """Clip the gradients' total norm to ``max_norm`` and return the norm before clipping.
    ``max_norm`` 0 means no clipping: the norm is only measured (for the log)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor


@dataclass
class StepContext:
    """What the trainer hands ``SteppingTask.train_step`` for one optimizer step."""

    step: int
    model: torch.nn.Module  # the module to call: wrapped by DDP / torch.compile when those are on
    optimizers: dict[str, torch.optim.Optimizer]
    batch: Callable[[int], Any]  # batch(i): the i-th batch of this step, from the seeded batch RNG
    grad_accum: int
    grad_clip: float  # 0: no clipping (the norm is still measured for the log)
    scaler: torch.amp.GradScaler
    autocast: Callable[[], Any]

    def sync(self, micro: int):
        """Skip the DDP gradient all-reduce on every micro-batch but the last."""
        if hasattr(self.model, "no_sync") and micro < self.grad_accum - 1:
            return self.model.no_sync()
        return _null()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step_optimizer(self, name: str) -> float:
        """Unscale, clip, step and zero the gradients of one optimizer; returns its gradient norm.
        (The trainer calls ``scaler.update()`` once after ``train_step``.)"""
        opt = self.optimizers[name]
        self.scaler.unscale_(opt)
        params = [p for group in opt.param_groups for p in group["params"]]
        norm = clip_gradients(params, self.grad_clip)
        self.scaler.step(opt)
        opt.zero_grad(set_to_none=True)
        return float(norm)


class SteppingTask(Protocol):
    """A task that updates its model itself, with several optimizers (used instead of ``loss``).

    Param groups may carry an ``lr_scale``: the scheduled lr times that scale is their lr."""

    family: str
    unit: str
    metric_names: tuple[str, ...]  # must hold "loss" and every other key train_step returns
    model: torch.nn.Module

    def train_batch(self, rng: np.random.Generator) -> Any: ...

    def optimizers(self, model: torch.nn.Module, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers; each is checkpointed in train_state.pt under its name."""
        ...

    def train_step(self, ctx: StepContext) -> tuple[dict[str, float], int]:
        """One step of every optimizer. Returns the values to log ("loss" is the one the progress bar
        and the divergence check use; "grad_norm" goes to its own column) and the units consumed."""
        ...

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]: ...

    def sample(self, model: torch.nn.Module, step: int, out_dir: Path) -> None: ...


@dataclass
class TrainResult:
    run: Path
    step: int
    train_loss: float
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    throughput: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimizer step


def begin(cfg: TrainConfig | None, quiet: bool) -> tuple[Dist, Callable[[str], None]]:
    """Validate the training config, join torchrun's group (if launched by it), and a logger that
    only rank 0 uses: the start of every family's training entry point."""
    if cfg is None:
        raise ConfigError("no training config given")
    cfg.validate()
    dist = init_distributed(cfg.device)
    return dist, ((lambda m: console.print(m)) if dist.is_main and not quiet else (lambda m: None))


def resumed_train_config(saved: dict, requested: TrainConfig) -> TrainConfig:
    """A resumed run keeps its own training settings; only the budget and the speed levers (device, compile,
    fsdp, channels_last: the same arithmetic, laid out or scheduled differently) change."""
    cfg = TrainConfig.from_dict(saved["train"])
    cfg.steps, cfg.minutes = requested.steps, requested.minutes
    cfg.device, cfg.compile, cfg.fsdp = requested.device, requested.compile, requested.fsdp
    cfg.channels_last = requested.channels_last
    return cfg


def create_run(run: Path, config: dict, dist: Dist, overwrite: bool) -> None:
    """Rank 0 makes (or, with ``overwrite``, replaces) the run folder and writes its config.json."""
    if dist.is_main:
        if overwrite and run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / runs.CONFIG, {"family": config["family"], "genlab_version": genlab.__version__,
                                       **config, "world_size": dist.world_size})


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup for ``warmup_steps``, then cosine decay to lr * min_lr_ratio over the budget
    (``progress`` in [0, 1]: steps done / steps, or seconds spent / seconds allowed)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); leave norms, biases and gains alone."""
    decay, no_decay = [], []
    for p in model.parameters():  # yields a tied weight once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def batch_rng(seed: int, step: int, micro: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, micro, rank])


class MetricsLog:
    """metrics.csv (and TensorBoard events under tb/), written by rank 0 only."""

    BASE_FIELDS = ["step", "time_s", "split", "lr", "throughput", "grad_norm"]

    def __init__(self, run: Path, resume_step: int | None, metric_names: tuple[str, ...]) -> None:
        self.FIELDS = self.BASE_FIELDS[:3] + list(metric_names) + self.BASE_FIELDS[3:]
        self.path = run / runs.METRICS
        if resume_step is not None and self.path.exists():
            # Drop rows logged after the checkpoint we resume from, so the log has no duplicates.
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.FIELDS)
                w.writeheader()
                w.writerows(rows)
        elif not self.path.exists() or resume_step is None:
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.FIELDS).writeheader()
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"), purge_step=resume_step)
        except Exception:  # tensorboard missing: the CSV is the record
            self.tb = None

    def log(self, step: int, split: str, **values) -> None:
        row = {"step": step, "split": split}
        row.update({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()})
        self.writer.writerow(row)
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and k != "time_s":
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class _StopFlag:
    """Turns Ctrl-C / SIGTERM into a flag checked between steps, so a checkpoint can be saved."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(task: Task | SteppingTask, cfg: TrainConfig, run: Path, *, resume: bool = False, quiet: bool = False,
          dist: Dist | None = None, extra_meta: dict | None = None) -> TrainResult:
    """Train ``task.model`` into the run directory ``run`` (which must hold config.json)."""
    cfg.validate()
    run = Path(run)
    dist = dist or init_distributed(cfg.device)
    device = pick_device(cfg.device, dist.local_rank)
    amp_dtype = autocast_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)

    model = task.model.to(device)
    stepping = hasattr(task, "train_step")  # the task steps its own optimizers (see SteppingTask)
    fsdp = cfg.fsdp and dist.enabled
    if fsdp and stepping:
        raise ConfigError(f"--fsdp supports single-optimizer training (lm, finetune), not {task.family}")
    # A task may keep its own weights file: ``save_checkpoint(run, model, state, meta, tensors=None)`` and
    # ``load_weights(run, model)`` in place of the run's model.safetensors (a LoRA run stores its adapters).
    # ``tensors``: the model's full state dict when the trainer gathered it (FSDP); None: read the model.
    save_checkpoint = getattr(task, "save_checkpoint", runs.save_checkpoint)
    load_weights = getattr(task, "load_weights", runs.load_weights)
    if resume:
        load_weights(run, model)  # into the whole model, before any sharding
    if fsdp:
        from genlab.train import fsdp as fsdp_mod

        fsdp_mod.shard(model)  # in place; the optimizer must see the sharded parameters
    optimizers: dict[str, torch.optim.Optimizer] = task.optimizers(model, cfg) if stepping else {
        "optimizer": torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                       foreach=device.type != "mps")}
    optimizer = optimizers.get("optimizer")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step, elapsed, units_seen = 0, 0.0, 0
    if resume:
        state = runs.load_train_state(run)
        for name, opt in optimizers.items():
            if fsdp:
                fsdp_mod.load_optimizer_state(model, opt, state[name])
            else:
                opt.load_state_dict(state[name])
        step, elapsed, units_seen = int(state["step"]), float(state["elapsed"]), int(state["units_seen"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])

    train_model: torch.nn.Module = model
    if cfg.compile:
        train_model = torch.compile(model)
    if dist.enabled and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # A stepping task's passes leave parts unused (a GAN's D pass runs G without gradients).
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=stepping)

    def log(msg: str) -> None:
        if dist.is_main and not quiet:
            console.print(msg)

    if cfg.fsdp and not dist.enabled:
        log("--fsdp: a single process, nothing to shard; training on one device "
            "(launch with torchrun --nproc-per-node N to shard)")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[bold]{task.family}[/] model: {n_params:,} parameters on {device}"
        f"{' (' + str(amp_dtype).replace('torch.', '') + ' autocast)' if amp_dtype else ''}"
        f"{f', {dist.world_size} processes' if dist.enabled else ''}{' (FSDP)' if fsdp else ''}"
        f"{f', resuming at step {step}' if resume else ''}")

    metrics = MetricsLog(run, step if resume else None, task.metric_names) if dist.is_main else None
    budget_s = cfg.minutes * 60 if cfg.minutes is not None else None

    def progress_fraction() -> float:
        parts = []
        if cfg.steps:
            parts.append(step / cfg.steps)
        if budget_s:
            parts.append(elapsed / budget_s)
        return max(parts)

    def checkpoint() -> None:
        # FSDP: every rank takes part in gathering the full (unsharded) state; rank 0 receives it.
        weights = fsdp_mod.full_weights(model) if fsdp else None
        opt_states = {name: fsdp_mod.full_optimizer_state(model, opt) if fsdp else opt.state_dict()
                      for name, opt in optimizers.items()}
        if not dist.is_main:
            return
        state = {"step": step, "elapsed": elapsed, "units_seen": units_seen, **opt_states,
                 "rng_cpu": torch.get_rng_state()}
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        meta = {"family": task.family, **(extra_meta or {})}
        save_checkpoint(run, model, state, meta, **({"tensors": weights} if fsdp else {}))

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad(), autocast(device, amp_dtype):
            values = task.evaluate(model)
        if (cfg.sample_every == 0 or step % cfg.sample_every == 0) and not fsdp:  # FSDP: no samples
            with torch.no_grad():
                task.sample(model, step, run / "samples")
        model.train()
        return values

    done = lambda: progress_fraction() >= 1.0  # noqa: E731

    def stopping(here: bool) -> bool:
        """Whether any rank got Ctrl-C / SIGTERM, so that every rank saves (and stops) at the same step."""
        if not dist.enabled:
            return here
        flag = torch.tensor(float(here), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    result = TrainResult(run=run, step=step, train_loss=float("nan"))
    val: dict[str, float] = {}
    progress = Progress(
        TextColumn("[bold blue]train"), BarColumn(), TextColumn("{task.fields[where]}"),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=quiet or not dist.is_main, transient=False,
    )
    total = cfg.steps if cfg.steps else int(budget_s)
    bar = progress.add_task("train", total=total, where="", loss="-", rate="")
    window_t, window_units, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
    window_extra: dict[str, float] = {}  # a stepping task's other logged values (a GAN's d_loss, g_loss)
    model.train()
    try:
        with _StopFlag() as stop, progress:
            while not done():
                t_step = time.perf_counter()
                lr = lr_at(cfg, step, progress_fraction())
                for opt in optimizers.values():
                    for group in opt.param_groups:
                        group["lr"] = lr * group.get("lr_scale", 1.0)
                if stepping:
                    values, units = task.train_step(StepContext(
                        step=step, model=train_model, optimizers=optimizers, grad_accum=cfg.grad_accum,
                        batch=lambda i, s=step: task.train_batch(batch_rng(cfg.seed, s, i, dist.rank)),
                        grad_clip=cfg.grad_clip, scaler=scaler, autocast=lambda: autocast(device, amp_dtype)))
                    scaler.update()
                    step_loss = torch.tensor(values.pop("loss"), dtype=torch.float64)
                    grad_norm = values.pop("grad_norm", float("nan"))
                    for k, v in values.items():
                        window_extra[k] = window_extra.get(k, 0.0) + v
                    units_seen += units * dist.world_size
                    window_units += units * dist.world_size
                else:
                    step_loss = torch.zeros((), device=device)
                    for micro in range(cfg.grad_accum):
                        batch = task.train_batch(batch_rng(cfg.seed, step, micro, dist.rank))
                        last = micro == cfg.grad_accum - 1
                        # FSDP reduce-scatters every micro-batch (skipping that would keep unsharded gradients).
                        sync = train_model.no_sync() if dist.enabled and not fsdp and not last else _null()
                        with sync, autocast(device, amp_dtype):
                            loss, units = task.loss(train_model, batch)
                        scaler.scale(loss / cfg.grad_accum).backward()
                        step_loss += loss.detach() / cfg.grad_accum
                        units_seen += units * dist.world_size
                        window_units += units * dist.world_size
                    scaler.unscale_(optimizer)
                    grad_norm = clip_gradients(model.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                step_time = time.perf_counter() - t_step
                elapsed += step_time
                result.step_seconds.append(step_time)
                loss_value = step_loss.item()
                if not math.isfinite(loss_value):
                    raise GenlabError(f"training diverged at step {step} (loss {loss_value}); lower --lr")
                result.losses.append((step, loss_value))
                window_loss += loss_value
                window_n += 1

                if step % cfg.log_every == 0 or done():
                    now = time.perf_counter()
                    rate = window_units / max(now - window_t, 1e-9)
                    mean_loss = window_loss / window_n
                    extra = {k: v / window_n for k, v in window_extra.items()}
                    if metrics:
                        metrics.log(step, "train", time_s=round(elapsed, 3), loss=mean_loss, **extra, lr=lr,
                                    throughput=rate, grad_norm=float(grad_norm))
                    shown = "".join(f" {k} {v:.3f}" for k, v in extra.items() if k.endswith("loss"))
                    progress.update(bar, loss=f"{mean_loss:.4f}{shown}", rate=f"{rate:,.0f} {task.unit}/s")
                    result.train_loss, result.throughput = mean_loss, rate
                    window_t, window_units, window_loss, window_n = now, 0, 0.0, 0
                    window_extra = {}
                progress.update(bar, completed=step if cfg.steps else min(elapsed, budget_s or 0),
                                where=f"step {step}" + (f"/{cfg.steps}" if cfg.steps else ""))

                t_pause = time.perf_counter()  # evaluation and checkpoints do not count as throughput
                if step % cfg.eval_every == 0 or done():
                    if dist.is_main or fsdp:  # a sharded model's forward needs every rank
                        val = evaluate()
                        if metrics:
                            metrics.log(step, "val", time_s=round(elapsed, 3), **val)
                        if dist.is_main and not quiet:
                            progress.console.print(
                                f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
                    dist.barrier()
                if step % cfg.checkpoint_every == 0 or done():
                    checkpoint()
                    dist.barrier()
                window_t += time.perf_counter() - t_pause
                if stopping(stop.signal is not None):
                    checkpoint()
                    raise Interrupted(f"stopped at step {step}; checkpoint saved in {run} "
                                      f"(continue with --resume)")
    finally:
        if metrics:
            metrics.close()
        shutdown_distributed()
    result.step, result.val, result.seconds = step, val, elapsed
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
