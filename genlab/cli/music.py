"""`genlab train music`, `genlab generate music`, `genlab harmonize`, and music for `genlab data prepare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import err, out, report_lm_training
from genlab.cli.options import (
    CheckpointEveryOpt,
    DeviceOpt,
    DModelOpt,
    EvalBatchesOpt,
    EvalEveryOpt,
    LmBatchOpt,
    LmLrOpt,
    LmWarmupOpt,
    LogEveryOpt,
    MinutesOpt,
    NLayerOpt,
    OverwriteOpt,
    OverwriteRunOpt,
    QuietOpt,
    ResumeOpt,
    RunOutOpt,
    SampleEveryOpt,
    SeedOpt,
    StepsOpt,
    model_overrides,
    train_config_from,
)

MusicDataOpt = Annotated[list[str], typer.Option(
    "--data", "-d", help="Music: 'chorales' (Bach, from music21's corpus) or MIDI/MusicXML files and folders (repeatable).")]
MusicRunArg = Annotated[Path, typer.Argument(help="Run directory of a trained music model.")]
KeyOpt = Annotated[str, typer.Option(help="Key, e.g. 'D major' or 'F# minor' (default: the model's choice).")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")]
TopKOpt = Annotated[int, typer.Option(help="Sample from the k most likely tokens only.")]
MusicXmlOpt = Annotated[Path, typer.Option("--musicxml", help="Also write the score as MusicXML.")]
WavOpt = Annotated[Path, typer.Option("--wav", help="Also render it to WAV (FluidSynth, General MIDI choir).")]
RollOpt = Annotated[Path, typer.Option("--roll", help="Also draw a piano-roll PNG.")]
TempoOpt = Annotated[float, typer.Option(help="Quarter notes per minute (MIDI and WAV).")]
VoiceLeadingOpt = Annotated[bool, typer.Option(
    "--voice-leading/--free-voice-leading",
    help="Forbid parallel fifths and octaves while sampling (where another pitch avoids them).")]


def is_music(specs: list[str]) -> bool:
    """Whether `data prepare --data ...` names music: 'chorales', or MIDI/MusicXML files or folders holding them."""
    from genlab.data.music import SUFFIXES

    def music(spec: str) -> bool:
        p = Path(spec)
        if spec == "chorales" or (p.is_file() and p.suffix.lower() in SUFFIXES):
            return True
        return p.is_dir() and any(f.suffix.lower() in SUFFIXES for f in p.rglob("*") if f.is_file())

    return bool(specs) and all(map(music, specs))


def prepare_music_cmd(data: list[str], val_fraction: float, test_fraction: float) -> None:
    """`data prepare` for music: prints the cache folder and what it holds, as for text."""
    from genlab.data.music import MusicDataConfig, prepare_music

    p = prepare_music(MusicDataConfig(sources=data, val_fraction=val_fraction, test_fraction=test_fraction),
                      log=err.print)
    meta = {k: v for k, v in p.meta.items() if not k.endswith("_names")}
    out.print_json(json.dumps({"cache": str(p.root), **meta}))


def train_music_cmd(
    data: MusicDataOpt = None,
    out_dir: RunOutOpt = None,
    preset: Annotated[str, typer.Option(help="Model preset: tiny or small.")] = "tiny",
    val_fraction: Annotated[float, typer.Option(help="Share of the pieces held out for validation.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Share of the pieces held out for testing.")] = 0.1,
    steps: StepsOpt = None, minutes: MinutesOpt = None, batch_size: LmBatchOpt = None, lr: LmLrOpt = None,
    warmup: LmWarmupOpt = None, eval_every: EvalEveryOpt = None, eval_batches: EvalBatchesOpt = None,
    checkpoint_every: CheckpointEveryOpt = None, sample_every: SampleEveryOpt = None, log_every: LogEveryOpt = None,
    seed: SeedOpt = None, device: DeviceOpt = "auto",
    context: Annotated[int, typer.Option(help="Context length (tokens).")] = None,
    n_layer: NLayerOpt = None, d_model: DModelOpt = None,
    resume: ResumeOpt = False, overwrite: OverwriteRunOpt = False, quiet: QuietOpt = False,
):
    """Train a four-part music model (genlab's Transformer on miditok REMI tokens) on chorales or your scores."""
    args = locals()
    from genlab.data.music import MusicDataConfig
    from genlab.train.music import MUSIC_PRESETS, MusicTrainSpec, train_music

    if preset not in MUSIC_PRESETS:
        from genlab.errors import ConfigError

        raise ConfigError(f"unknown music preset '{preset}'; choose one of: {', '.join(MUSIC_PRESETS)}")
    run = out_dir or Path("runs") / f"music-{preset}"
    dcfg = MusicDataConfig(sources=data or ["chorales"], val_fraction=val_fraction, test_fraction=test_fraction)
    result = train_music(MusicTrainSpec(
        run=run, data=dcfg, preset=preset, train=train_config_from(args, preset),
        model_overrides=model_overrides(args, ["context", "n_layer", "d_model"]), resume=resume,
        overwrite=overwrite, quiet=quiet))
    if not quiet:
        report_lm_training(result, run)


def _check_free(overwrite: bool, *paths: Path | None) -> None:
    """Refuse an existing output before any work (the writers check again as they write)."""
    from genlab.errors import GenlabError

    for p in paths:
        if p is not None and p.exists() and not overwrite:
            raise GenlabError(f"'{p}' already exists; pick another name or pass --overwrite")


def _write_outputs(gen, piece, out_path: Path, musicxml: Path | None, wav: Path | None, roll: Path | None,
                   overwrite: bool) -> None:
    from genlab.generate import music as gm

    written = [gm.write_midi(piece, out_path, overwrite, tempo=gen.tempo)]
    if musicxml:
        written.append(gm.write_musicxml(piece, musicxml, overwrite))
    if wav:
        written.append(gm.render_wav(piece, wav, overwrite, tempo=gen.tempo))
    if roll:
        written.append(gm.piano_roll(piece, roll, overwrite))
    from genlab.data.music import key_name

    counts = ", ".join(f"{v} {len(n)}" for v, n in zip(("S", "A", "T", "B"), piece.voices, strict=True))
    out.print(f"{key_name(piece.key)}, {piece.time_signature[0]}/{piece.time_signature[1]}, notes {counts} -> "
              f"{', '.join(map(str, written))}", markup=False, highlight=False, soft_wrap=True)  # whole paths


def generate_music_cmd(
    run: MusicRunArg,
    bars: Annotated[int, typer.Option(help="Length in bars (a pickup bar counts as one).")] = 16,
    key: KeyOpt = None,
    seed: int = 0,
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="MIDI file to write.")] = Path("chorale.mid"),
    musicxml: MusicXmlOpt = None, wav: WavOpt = None, roll: RollOpt = None,
    tempo: TempoOpt = 76.0, device: DeviceOpt = "auto", overwrite: OverwriteOpt = False,
    voice_leading: VoiceLeadingOpt = True,
):
    """Compose a four-part piece: MIDI, and MusicXML, WAV and a piano roll if asked."""
    from genlab.data.music import parse_key
    from genlab.generate.music import MusicGenerator

    k = parse_key(key) if key else None
    _check_free(overwrite, out_path, musicxml, wav, roll)
    gen = MusicGenerator.from_run(run, device=device)
    gen.tempo = tempo
    piece = gen.compose(bars=bars, key=k, seed=seed, temperature=temperature, top_k=top_k,
                        voice_leading=voice_leading)
    _write_outputs(gen, piece, out_path, musicxml, wav, roll, overwrite)


def harmonize_cmd(
    run: MusicRunArg,
    melody: Annotated[Path, typer.Option(help="The soprano as MIDI or MusicXML (its top voice is taken).")],
    key: KeyOpt = None,
    seed: int = 0,
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="MIDI file to write.")] = Path("choral.mid"),
    musicxml: MusicXmlOpt = None, wav: WavOpt = None, roll: RollOpt = None,
    tempo: TempoOpt = 76.0, device: DeviceOpt = "auto", overwrite: OverwriteOpt = False,
    voice_leading: VoiceLeadingOpt = True,
):
    """Write alto, tenor and bass under a given soprano melody (kept exactly)."""
    from genlab.data.music import parse_key, read_piece
    from genlab.errors import DataError
    from genlab.generate.music import MusicGenerator

    if not melody.is_file():
        raise DataError(f"--melody {melody} is not a file; give a MIDI or MusicXML file")
    k = parse_key(key) if key else None
    _check_free(overwrite, out_path, musicxml, wav, roll)
    tune = read_piece(melody)
    gen = MusicGenerator.from_run(run, device=device)
    gen.tempo = tempo
    piece = gen.harmonize(tune, key=k, seed=seed, temperature=temperature, top_k=top_k,
                          voice_leading=voice_leading)
    _write_outputs(gen, piece, out_path, musicxml, wav, roll, overwrite)
