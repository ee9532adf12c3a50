"""Music training: genlab's Transformer on REMI tokens of four-part scores (genlab.data.music), through
the LM task and the one trainer. What differs from text: batches are transposed within the voices'
ranges (training only), the validation metric adds the NLL per note, the run keeps the music
tokenizer (music_tokenizer.json) and samples are MIDI files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genlab import runs
from genlab.config import TrainConfig
from genlab.data import music as mdata
from genlab.data import prepare as prep
from genlab.errors import ConfigError
from genlab.models.transformer import LMConfig
from genlab.train.lm import LMTask, batches_nll, build_model, training_window
from genlab.train.trainer import TrainResult, begin, create_run, resumed_train_config, train

FAMILY = "music"
# Model shapes for music (the vocabulary, ~325 tokens, comes from the tokenizer). A chorale is
# ~600-1,200 tokens, so `small` sees about half of one at a time.
#   tiny  ~0.1M parameters: tests, seconds of CPU
#   small ~4.5M: minutes of CPU to learn the grammar and the voices' ranges and motion
MUSIC_PRESETS: dict[str, dict] = {
    "tiny": dict(context=128, n_layer=2, n_head=4, n_kv_head=2, d_model=64),
    "small": dict(context=512, n_layer=6, n_head=4, n_kv_head=2, d_model=256, ffn_hidden=704),
}


def music_model_config(preset: str, vocab_size: int, **overrides) -> LMConfig:
    if preset not in MUSIC_PRESETS:
        raise ConfigError(f"unknown music preset '{preset}'; choose one of: {', '.join(MUSIC_PRESETS)}")
    values = {**MUSIC_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    cfg = LMConfig(vocab_size=vocab_size, **values)
    cfg.validate()
    return cfg


class MusicTask(LMTask):
    family = FAMILY
    metric_names = ("loss", "perplexity", "nll_per_note")

    def __init__(self, model, data: mdata.MusicData, batch_size: int, eval_batches: int,
                 window: int | None = None, sample_bars: int = 8) -> None:
        self.model, self.data = model, data
        self.batch_size, self.eval_batches, self.sample_bars = batch_size, eval_batches, sample_bars
        self.train_tokens, self.val_tokens = data.tokens("train"), data.tokens("val")
        self.pieces = data.pieces("train")
        self.vocab = data.vocab()
        self.table = self.vocab.shift_table()
        self.tokenizer = None
        self.context = context = training_window(model, window)
        if len(self.train_tokens) <= context + 1:
            raise ConfigError(f"the music has {len(self.train_tokens)} training tokens, fewer than the context "
                              f"({context}); give more pieces or a smaller --context")

    def train_batch(self, rng: np.random.Generator):
        return mdata.transposed_batch(self.train_tokens, self.pieces, self.table, self.batch_size, self.context, rng)

    def evaluate(self, model) -> dict[str, float]:
        import math

        x, y = prep.eval_windows(self.val_tokens, self.context, self.eval_batches * self.batch_size)
        b = self.batch_size
        nll, count = batches_nll(model, ((x[i:i + b], y[i:i + b]) for i in range(0, len(x), b)), self.device)
        loss = nll / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                "nll_per_note": loss * self.data.meta["tokens_per_note"]}

    def sample(self, model, step: int, out_dir: Path) -> None:
        from genlab.generate.music import MusicGenerator, write_midi

        gen = MusicGenerator(model, self.vocab, time_signatures=self.data.meta["time_signatures"])
        piece = gen.compose(bars=self.sample_bars, seed=step)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_midi(piece, out_dir / f"step_{step:06d}.mid", overwrite=True)


@dataclass
class MusicTrainSpec:
    """Everything `genlab train music` needs; the CLI only fills it in."""

    run: Path
    data: mdata.MusicDataConfig = field(default_factory=mdata.MusicDataConfig)
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    train: TrainConfig | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False


def train_music(spec: MusicTrainSpec) -> TrainResult:
    run = Path(spec.run)
    tcfg = spec.train
    dist, log = begin(tcfg, spec.quiet)
    if spec.resume:
        saved = runs.read_config(run, family=FAMILY)
        model_cfg = LMConfig.from_dict(saved["model"])
        data_cfg = mdata.MusicDataConfig.from_dict(saved["data"]["config"])
        tcfg = resumed_train_config(saved, tcfg)
    else:
        runs.require_new(run, spec.overwrite)
        music_model_config(spec.preset, 1, **spec.model_overrides)  # bad settings fail before any data work
        data_cfg = spec.data
    data = dist.main_first(lambda: mdata.prepare_music(data_cfg, log=log))
    if spec.resume and data.fingerprint != saved["data"]["fingerprint"]:
        raise ConfigError(f"the music of run '{run}' changed since it was trained; train a new run")
    if not spec.resume:
        model_cfg = music_model_config(spec.preset, data.meta["vocab_size"], **spec.model_overrides)
        create_run(run, {
            "family": FAMILY,
            "preset": spec.preset,
            "model": model_cfg.to_dict(),
            "train": tcfg.to_dict(),
            "data": {"config": data_cfg.to_dict(), "fingerprint": data.fingerprint,
                     **{k: data.meta[k] for k in ("pieces", "train_pieces", "val_pieces", "test_pieces",
                                                  "train_tokens", "val_tokens", "test_tokens", "tokens_per_note",
                                                  "time_signatures", "test_names")}},
            "tokenizer": "miditok-remi",
        }, dist, spec.overwrite)
        if dist.is_main:
            shutil.copyfile(data.tokenizer_path, run / mdata.TOKENIZER_FILE)
        dist.barrier()
    model = build_model(model_cfg, tcfg.seed)
    task = MusicTask(model, data, tcfg.batch_size, tcfg.eval_batches, window=tcfg.window)
    return train(task, tcfg, run, resume=spec.resume, quiet=spec.quiet, dist=dist)
