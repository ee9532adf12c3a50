"""Music (issue 12): chorales -> REMI tokens -> a tiny Transformer -> MIDI, MusicXML, WAV, piano roll,
and harmonization of a given soprano. The data is a handful of Bach chorales from music21's corpus."""

from __future__ import annotations

import os
import shutil
import subprocess
import wave

import numpy as np
import pytest

pytest.importorskip("music21")
pytest.importorskip("miditok")

from genlab.data import music as mdata  # noqa: E402

from .conftest import GENLAB, ROOT  # noqa: E402

CHORALES = ("bwv101.7", "bwv102.7", "bwv103.6", "bwv11.6", "bwv10.7")  # bwv11.6 is in 3/4


def notes_of(piece: mdata.Piece) -> list[tuple]:
    return sorted((v, n.onset, n.duration, n.pitch) for v, voice in enumerate(piece.voices) for n in voice)


def cli(*args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models; a shared machine
    return subprocess.run(GENLAB + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.fixture(scope="module")
def chorale_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chorales")
    by_name = {p.stem: p for p in mdata.chorale_files()}
    for name in CHORALES:
        shutil.copy(by_name[name], folder / by_name[name].name)
    return folder


@pytest.fixture(scope="module")
def pieces(chorale_dir):
    """Three of them (parsing costs a second each): 4/4 with a pickup, 3/4, and one with a 4-bar final note."""
    return [mdata.read_piece(next(chorale_dir.glob(f"{name}.*"))) for name in ("bwv101.7", "bwv11.6", "bwv10.7")]


@pytest.fixture(scope="module")
def music_run(chorale_dir, tmp_path_factory, one_thread):
    from genlab.config import train_config
    from genlab.train.music import MusicTrainSpec, train_music

    run = tmp_path_factory.mktemp("runs") / "music"
    with pytest.MonkeyPatch.context() as mp:  # the cache the per-test fixture uses: data prepared once
        mp.setenv("GENLAB_CACHE", str(tmp_path_factory.getbasetemp() / "genlab-cache"))
        result = train_music(MusicTrainSpec(
            run=run, data=mdata.MusicDataConfig(sources=[str(chorale_dir)], val_fraction=0.2, test_fraction=0.2),
            preset="tiny", train=train_config("tiny", steps=80, eval_every=80, eval_batches=2, log_every=25),
            quiet=True))
    assert result.step == 80
    return run, result


def main_error(monkeypatch, capsys, *args) -> str:
    """Run `genlab ARGS` in this process (a fresh process costs seconds of imports); expect exit 2 and
    return the one line it printed."""
    from genlab.cli import main

    monkeypatch.setattr("sys.argv", ["genlab", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in "".join(lines), lines
    return errors[0]


def test_tokens_round_trip_notes_and_durations(pieces):
    vocab = mdata.MusicVocab(mdata.new_tokenizer())
    for piece in pieces:
        assert all(piece.voices), piece.name  # four voices, soprano first
        assert np.mean([n.pitch for n in piece.voices[0]]) > np.mean([n.pitch for n in piece.voices[3]])
        ids = vocab.encode(piece)
        assert ids[0] == vocab.bos and ids[-1] == vocab.eos and vocab.key_of(ids[1]) == piece.key
        back = vocab.decode(ids)
        assert notes_of(back) == notes_of(piece), piece.name
        assert back.time_signature == piece.time_signature and back.key == piece.key
        # fermatas: one token after the Position of each held chord, read back at the same onsets
        assert len(piece.fermatas) >= 4 and back.fermatas == piece.fermatas, piece.name
        marks = [k for k, i in enumerate(ids) if i == vocab.fermata]
        assert len(marks) == len(piece.fermatas) and all(vocab.names[ids[k - 1]].startswith("Position_") for k in marks)
        onsets = {n.onset for v in piece.voices for n in v}
        assert set(piece.fermatas) <= onsets  # each marks a chord's onset
        old = mdata.MusicVocab(vocab.tokenizer, fermatas=False)  # runs made before fermata tokens
        assert old.size == vocab.size - 1 and old.fermata is None
        old_ids = old.encode(piece)
        assert old_ids == [i for i in ids if i != vocab.fermata] and notes_of(old.decode(old_ids)) == notes_of(piece)
    assert {p.time_signature for p in pieces} == {(4, 4), (3, 4)}
    assert pieces[0].fermatas == [10.0, 18.0, 26.0, 34.0, 42.0, 50.0]  # bwv101.7: every phrase's end
    assert 84.0 in pieces[2].fermatas  # bwv10.7: the last one sits on the tied half of the soprano's note
    assert mdata.FORMAT_VERSION == 3  # cached preparations of format 2 (no fermatas) are made again


def test_fermatas_are_sampled_written_and_held(pieces, tmp_path):
    """The grammar lets a fermata follow a Position once; MusicXML prints it on the chord's notes and reads
    back; MIDI and WAV hold the chord twice as long by a slower tempo, the notes keep their written times."""
    import symusic

    from genlab.generate.music import FERMATA_HOLD, Grammar, midi_bytes, musicxml_bytes, render_wav

    vocab = mdata.MusicVocab(mdata.new_tokenizer())
    g = Grammar(vocab, key=(0, "major"), bars=2)
    for tok in (vocab.key_id((0, "major")), vocab.bar, vocab.time_sig["TimeSig_4/4"], vocab.position[0]):
        g.advance(tok)
    assert vocab.fermata in g.allowed() and vocab.program[0] in g.allowed()
    g.advance(vocab.fermata)
    assert g.allowed() == [vocab.program[k] for k in range(4)]  # no second fermata: a voice comes next

    xml = tmp_path / "p.musicxml"
    xml.write_bytes(musicxml_bytes(pieces[0]))
    assert xml.read_text().count("<fermata") == 4 * len(pieces[0].fermatas)  # on all four voices
    again = mdata.read_piece(xml)
    assert again.fermatas == pieces[0].fermatas and notes_of(again) == notes_of(pieces[0])

    chord = [[mdata.Note(float(t), 1.0, p) for t in range(8)] for p in (72, 67, 64, 48)]
    plain = mdata.Piece("plain", chord, (4, 4), (0, "major"))
    held = mdata.Piece("held", chord, (4, 4), (0, "major"), fermatas=[3.0])
    scores = {}
    for piece in (plain, held):
        (tmp_path / f"{piece.name}.mid").write_bytes(midi_bytes(piece, tempo=120))
        scores[piece.name] = symusic.Score(str(tmp_path / f"{piece.name}.mid"))
    tpq = scores["held"].ticks_per_quarter
    assert [(t.time / tpq, round(t.qpm)) for t in scores["held"].tempos] == [(0, 120), (3, 120 / FERMATA_HOLD), (4, 120)]
    assert [m.text for m in scores["held"].markers] == ["fermata"]
    assert [[(n.time, n.duration, n.pitch) for n in t.notes] for t in scores["held"].tracks] == \
        [[(n.time, n.duration, n.pitch) for n in t.notes] for t in scores["plain"].tracks]
    if shutil.which("fluidsynth") is None:
        pytest.skip("no fluidsynth here")
    seconds = {}
    for piece in (plain, held):
        with wave.open(str(render_wav(piece, tmp_path / f"{piece.name}.wav", tempo=120))) as w:
            seconds[piece.name] = w.getnframes() / w.getframerate()
    assert seconds["held"] - seconds["plain"] == pytest.approx(0.5, abs=0.05)  # one quarter at 120 held twice


def test_unnamed_parts_are_voiced_by_pitch(tmp_path):
    import symusic

    score = symusic.Score(480)
    for name, pitch in (("left hand", 48), ("right hand", 72)):  # lowest first, names that say nothing
        track = symusic.Track(name=name, program=0)
        track.notes.append(symusic.Note(0, 960, pitch, 80))
        track.notes.append(symusic.Note(960, 480, pitch + 2, 80))
        score.tracks.append(track)
    path = tmp_path / "two.mid"
    score.dump_midi(str(path))
    piece = mdata.read_piece(path)
    assert [[(n.onset, n.duration, n.pitch) for n in v] for v in piece.voices] == \
        [[(0.0, 2.0, 72), (2.0, 1.0, 74)], [(0.0, 2.0, 48), (2.0, 1.0, 50)], [], []]


def test_prepare_splits_by_piece_and_transposes_within_ranges(chorale_dir):
    data = mdata.prepare_music(mdata.MusicDataConfig(sources=[str(chorale_dir)], val_fraction=0.2, test_fraction=0.2),
                               log=lambda m: None)
    names = {s: set(data.meta[f"{s}_names"]) for s in ("train", "val", "test")}
    assert sum(map(len, names.values())) == len(CHORALES) == len(set.union(*names.values()))
    assert all(names.values())
    for split in ("train", "val", "test"):  # pieces lie end to end in the token file, each BOS ... EOS
        tokens, index = data.tokens(split), data.pieces(split)
        assert index[-1, 0] + index[-1, 1] == len(tokens)
        assert all(tokens[s] == 1 for s in index[:, 0])  # BOS_None

    vocab = data.vocab()
    table = vocab.shift_table()
    tokens, index = data.tokens("train"), data.pieces("train")
    assert (index[:, 2] <= 0).all() and (index[:, 3] >= 0).all() and (index[:, 3] - index[:, 2] > 0).any()
    x, y = mdata.transposed_batch(tokens, index, table, 64, 64, np.random.default_rng(0))
    starts = np.random.default_rng(0).integers(0, len(tokens) - 65, size=64)  # the windows it drew
    inverse_pitch = {i: p for p, i in vocab.pitch.items()}
    shifts = set()
    for xb, yb, s in zip(x.numpy(), y.numpy(), starts, strict=True):
        orig = tokens[s:s + 65].astype(np.int64)
        got = np.concatenate([xb, yb[-1:]])
        is_pitch, is_key = np.isin(orig, list(inverse_pitch)), (orig >= vocab.base) & (orig != vocab.fermata)
        fixed = ~is_pitch & ~is_key  # fermatas among them
        assert (got[fixed] == orig[fixed]).all() and np.isin(got[is_pitch], list(inverse_pitch)).all()
        k = {inverse_pitch[b] - inverse_pitch[a] for a, b in zip(orig[is_pitch], got[is_pitch], strict=True)}
        for a, b in zip(orig[is_key], got[is_key], strict=True):  # the key moves with the notes
            (pa, ma), (pb, mb) = vocab.key_of(int(a)), vocab.key_of(int(b))
            assert ma == mb and (not k or (pa + next(iter(k))) % 12 == pb)
        assert len(k) <= 1  # one shift for the whole window
        shifts |= k
        first, last = (np.searchsorted(index[:, 0], t, side="right") - 1 for t in (s, s + 64))
        if k:  # within what every piece the window touches allows (its voices stay in range)
            assert index[first:last + 1, 2].max() <= next(iter(k)) <= index[first:last + 1, 3].min()
    assert len(shifts) > 1  # windows really are transposed, by different amounts


def test_train_and_compose_four_voices(music_run):
    from genlab.generate.music import RANGE_SLACK, MusicGenerator

    run, result = music_run
    assert (run / mdata.TOKENIZER_FILE).is_file() and (run / "model.safetensors").is_file()
    assert list((run / "samples").glob("step_*.mid"))
    assert np.isfinite(result.val["nll_per_note"]) and result.val["nll_per_note"] > result.val["loss"]
    gen = MusicGenerator.from_run(run, device="cpu")
    piece = gen.compose(bars=4, key=(2, "major"), seed=0)
    assert piece.key == (2, "major") and piece.time_signature in {(4, 4), (3, 4)}
    bar = piece.time_signature[0] * 4 / piece.time_signature[1]
    assert all(piece.voices), [len(v) for v in piece.voices]  # it parses back into four voices
    for v, notes in enumerate(piece.voices):
        lo, hi = mdata.VOICE_RANGES[v]
        assert all(lo - RANGE_SLACK <= n.pitch <= hi + RANGE_SLACK for n in notes)
        assert max(n.onset for n in notes) < 4 * bar  # four bars asked for, no more
    again = gen.compose(bars=4, key=(2, "major"), seed=0)
    assert notes_of(again) == notes_of(piece)  # seeded


def test_voice_leading_sampling_writes_no_parallel_fifths_or_octaves(music_run):
    """The grammar follows the notes through the tokens and takes away the pitch that would make
    parallel fifths; sampled pieces have none by the evaluation's own count."""
    from genlab.evaluate.music import voice_leading
    from genlab.generate.music import Grammar, MusicGenerator

    gen = MusicGenerator.from_run(music_run[0], device="cpu")
    v = gen.vocab
    beat = next(i for name, i in v.duration.items() if name == "Duration_1.0.8")
    tokens = [v.key_id((0, "major")), v.bar, v.time_sig["TimeSig_4/4"], v.position[0],
              v.program[0], v.pitch[67], beat, v.program[1], v.pitch[60], beat,  # G4 over C4: a fifth
              v.position[v.ticks_per_beat], v.program[0], v.pitch[69], beat, v.program[1]]  # soprano up to A4
    for strict in (True, False):
        g = Grammar(v, voice_leading=strict)
        for t in tokens:
            assert t in g.allowed()
            g.advance(t)
        allowed = g.allowed()
        assert v.pitch[64] in allowed and (v.pitch[62] in allowed) is not strict  # C4 -> D4 would be fifths
    for seed in range(3):
        _, fifths, octaves = voice_leading(gen.compose(bars=4, key=(7, "major"), seed=seed))
        assert fifths == octaves == 0


def test_the_voice_leading_rule_matches_the_evaluation():
    from genlab.generate.music import Grammar

    g = Grammar.__new__(Grammar)  # only the rule's state, without a vocabulary
    g.voice, g._previous_onset = 1, 0
    g._last_note = {1: (60, 0, 4)}  # alto on C4, sounding at the previous onset
    g._moves = {0: (67, 69)}  # soprano G4 -> A4 at this onset: a fifth above C4
    assert g._parallel(62)  # alto C4 -> D4: fifths in parallel
    assert not g._parallel(64)  # E4: a fourth, no parallel
    assert not g._parallel(57)  # contrary motion to A3: not similar motion
    g._moves = {0: (72, 74)}  # soprano C5 -> D5: an octave above
    assert g._parallel(62) and not g._parallel(60)  # parallel octave; a held pitch does not move
    g._last_note = {1: (60, 0, 0)}  # the alto rested at the previous onset: nothing to compare
    assert not g._parallel(62)


def test_eval_scores_the_test_pieces(music_run, monkeypatch, capsys):
    import json

    from genlab.cli import main

    run, result = music_run
    monkeypatch.setattr("sys.argv", ["genlab", "eval", str(run), "--json", "--device", "cpu", "--pieces", "2",
                                     "--bars", "2"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None)
    res = json.loads(capsys.readouterr().out)
    cfg = json.loads((run / "config.json").read_text())
    assert res["pieces"] == cfg["data"]["test_pieces"] == 1 and res["tokens"] == cfg["data"]["test_tokens"] - 1
    assert res["nll_per_note"] > res["loss"] > 0 and np.isfinite(res["perplexity"])
    assert res["loss"] < np.log(cfg["model"]["vocab_size"])  # better than uniform after 80 steps
    st = res["statistics"]
    assert st["generated"]["pieces"] == 2 and st["test"]["pieces"] == 1 and st["test"]["notes"] > 100
    assert st["test"]["in_key"] > 0.9 and st["test"]["in_range"] > 0.95  # Bach, by these measures
    assert st["generated"]["in_range"] > 0.8  # the sampler keeps voices within two semitones of range
    for name in ("generated", "baseline"):
        assert 0 <= st[name]["pitch_class_distance"] <= 1 and 0 <= st[name]["rhythm_distance"] <= 1
    assert st["baseline"]["pieces"] == 2 and st["baseline"]["in_range"] > 0.9  # drawn from each voice's own notes
    assert st["test"]["fermatas"] >= 4 and 0.5 < st["test"]["fermatas_per_4_bars"] < 3  # Bach: one per phrase
    assert st["test"]["fermatas_per_piece"] == st["test"]["fermatas"] and st["baseline"]["fermatas"] == 0
    assert st["generated"]["bars"] == 4 and st["generated"]["fermatas_per_4_bars"] == st["generated"]["fermatas"]
    for name in ("generated", "baseline"):  # one test piece: too few for a cross-validated discriminator
        d = st["discriminator"][name]
        assert d["accuracy"] is None and d["real_groups"] == 1 and "at least 2" in d["skipped"]


def test_discriminator_tells_the_baseline_from_bach_and_never_tests_on_a_trained_piece(chorale_dir):
    from genlab.evaluate.music import (
        FEATURE_GROUPS,
        discriminate,
        discriminator_sets,
        excerpts,
        group_folds,
        histogram_baseline,
        piece_features,
        split_pieces,
    )

    data = mdata.prepare_music(mdata.MusicDataConfig(sources=[str(chorale_dir)], val_fraction=0.2, test_fraction=0.2),
                               log=lambda m: None)
    real = [p for split in ("train", "val", "test") for p in split_pieces(data, split)]
    cut = excerpts(real[0], 2)
    bar = real[0].time_signature[0] * 4 / real[0].time_signature[1]
    assert len(cut) > 2 and all(0 <= n.onset < 2 * bar and n.onset + n.duration <= 2 * bar + 1e-9
                                for ex in cut for v in ex.voices for n in v)
    assert sum(ex.n_notes for ex in cut) <= real[0].n_notes
    assert len(piece_features(cut[0])) == sum(n for _, n in FEATURE_GROUPS)

    baseline = histogram_baseline(real, [p.key for p in real] * 8, bars=2, seed=0)
    ex, groups, fake = discriminator_sets(real, baseline, 2)
    assert len(ex) == len(fake) > 20 and len(set(groups)) == len(real)  # 2-bar excerpts of five chorales
    groups += [f"made:{i}" for i in range(len(fake))]
    res = discriminate(ex, fake, groups=groups)
    assert res["folds"] == 5 and res["repeats"] == 5 and res["real"] == res["generated"] == len(ex)
    assert res["accuracy_range"][0] <= res["accuracy"] <= res["accuracy_range"][1]
    assert res["accuracy"] > 0.85 and 0 <= res["stderr"] < 0.1  # independent notes are easy to spot
    y = np.array([0] * len(ex) + [1] * len(fake))
    for train, test in group_folds(y, groups, 5):
        assert not {groups[i] for i in train} & {groups[i] for i in test}  # a piece lies in one fold
        assert set(y[test]) == {0, 1}
    assert sorted(np.concatenate([t for _, t in group_folds(y, groups, 5)])) == list(range(len(y)))


def test_parallel_fifths_and_octaves_are_counted():
    from genlab.evaluate.music import piece_statistics, voice_leading

    def line(*pitches):
        return [mdata.Note(float(i), 1.0, p) for i, p in enumerate(pitches)]

    # soprano G-A-B-B, bass C-D-G-E: C/G -> D/A is a parallel fifth; D/A -> G/B contrary motion;
    # G/B -> E/B one voice holds. Three steps, one parallel fifth.
    fifths = mdata.Piece("p5", [line(67, 69, 71, 71), [], [], line(48, 50, 43, 40)])
    assert voice_leading(fifths) == (3, 1, 0)
    octaves = mdata.Piece("p8", [line(72, 74), [], [], line(48, 50)])  # C/C -> D/D in octaves
    assert voice_leading(octaves) == (1, 0, 1)
    st = piece_statistics([fifths])
    assert st["notes"] == 8 and st["in_key"] == 1.0 and st["parallel_fifths_per_100"] == 100 / 3
    assert abs(sum(st["pitch_classes"]) - 1) < 1e-3 and st["durations"][3] == 1.0  # all quarter notes


def test_resume_after_ctrl_c_is_exact(chorale_dir, tmp_path, monkeypatch, one_thread):
    from genlab.config import train_config
    from genlab.train.music import MusicTask, MusicTrainSpec, train_music
    from genlab.train.trainer import Interrupted

    from .conftest import ctrl_c_during_batch

    def spec(run, resume=False):
        return MusicTrainSpec(
            run=run, data=mdata.MusicDataConfig(sources=[str(chorale_dir)], val_fraction=0.2, test_fraction=0.2),
            train=train_config("tiny", steps=4, eval_every=100, eval_batches=1, log_every=1, sample_every=1000),
            resume=resume, quiet=True)

    straight = train_music(spec(tmp_path / "a"))
    ctrl_c_during_batch(monkeypatch, MusicTask, 2)  # transposed batches too come back identical
    with pytest.raises(Interrupted, match="stopped at step 2"):
        train_music(spec(tmp_path / "b"))
    monkeypatch.undo()
    resumed = train_music(spec(tmp_path / "b", resume=True))
    assert [s for s, _ in resumed.losses] == list(range(3, 5))
    assert resumed.losses == straight.losses[2:]  # bit-for-bit


def test_generate_music_cli_writes_midi_and_wav(music_run, tmp_path):
    import symusic

    run, _ = music_run
    mid, wav = tmp_path / "c.mid", tmp_path / "c.wav"
    res = cli("generate", "music", run, "--bars", 4, "--key", "D major", "--seed", 0, "--out", mid, "--wav", wav,
              "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "D major" in res.stdout
    score = symusic.Score(str(mid))
    assert [t.name for t in score.tracks] == ["Soprano", "Alto", "Tenor", "Bass"]
    assert all(len(t.notes) for t in score.tracks)
    with wave.open(str(wav)) as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2 and w.getframerate() == 44100
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert len(audio) > 44100 and np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 100  # seconds of sound


def test_musicxml_and_piano_roll_are_valid(music_run, tmp_path):
    from music21 import converter
    from PIL import Image

    from genlab.generate.music import MusicGenerator, piano_roll, write_musicxml

    piece = MusicGenerator.from_run(music_run[0], device="cpu").compose(bars=4, key=(9, "minor"), seed=1)
    xml, png = write_musicxml(piece, tmp_path / "c.musicxml"), piano_roll(piece, tmp_path / "c.png")
    parsed = converter.parse(str(xml))
    assert [p.partName for p in parsed.parts] == ["Soprano", "Alto", "Tenor", "Bass"]
    assert [len(p.flatten().notes) > 0 for p in parsed.parts] == [bool(v) for v in piece.voices]
    assert parsed.parts[0].flatten().getElementsByClass("KeySignature")[0].sharps == 0  # A minor
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 300


def test_harmonize_keeps_the_melody(music_run, pieces, tmp_path, monkeypatch, capsys):
    import symusic

    from genlab.cli import main
    from genlab.generate.music import write_midi

    run, _ = music_run
    source = pieces[0]  # bwv101.7: starts with a pickup
    tune = mdata.Piece("tune", [source.voices[0], [], [], []], source.time_signature, source.key)
    melody, out = tmp_path / "soprano.mid", tmp_path / "choral.mid"
    write_midi(tune, melody)
    monkeypatch.setattr("sys.argv", ["genlab", "harmonize", str(run), "--melody", str(melody), "--out", str(out),
                                     "--seed", "3", "--device", "cpu"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None), capsys.readouterr().err
    assert "choral.mid" in capsys.readouterr().out
    score = symusic.Score(str(out))
    tpq = score.ticks_per_quarter
    sop, *others = score.tracks
    assert [(n.time / tpq, n.duration / tpq, n.pitch) for n in sop.notes] == \
        [(n.onset, n.duration, n.pitch) for n in tune.voices[0]]  # the given soprano, note for note
    assert [t.name for t in others] == ["Alto", "Tenor", "Bass"] and all(len(t.notes) for t in others)
    end = max(n.onset + n.duration for n in tune.voices[0]) * tpq
    assert all(n.end <= end for t in others for n in t.notes)  # nothing outlasts the tune
    # The melody's fermatas (MusicXML keeps them; MIDI has no fermata) are the harmonization's.
    from genlab.generate.music import MusicGenerator

    gen = MusicGenerator.from_run(run, device="cpu")
    marked = mdata.Piece("tune", [source.voices[0], [], [], []], source.time_signature, source.key, source.fermatas)
    assert gen.harmonize(marked, seed=3).fermatas == source.fermatas
    assert gen.harmonize(tune, seed=3).fermatas == []  # none given: the model may not add one


def test_a_run_from_before_fermata_tokens_still_composes_and_eval_says_why_not(music_run, tmp_path, monkeypatch,
                                                                              capsys):
    import json

    from genlab import runs
    from genlab.generate.music import MusicGenerator
    from genlab.models.transformer import LMConfig, Transformer

    run, _ = music_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["model"]["vocab_size"] -= 1  # the vocabulary of data format 2: no Fermata token
    cfg["data"]["fingerprint"] = "0" * 64  # prepared by the format-2 tokenizer
    (old / "config.json").write_text(json.dumps(cfg))
    runs.save_weights(old, Transformer(LMConfig.from_dict(cfg["model"])))
    gen = MusicGenerator.from_run(old, device="cpu")
    assert gen.vocab.fermata is None and gen.vocab.size == cfg["model"]["vocab_size"]
    piece = gen.compose(bars=2, key=(7, "major"), seed=1)
    assert piece.n_notes > 0 and piece.fermatas == []  # random weights: notes, and never a fermata
    assert "before fermatas" in main_error(monkeypatch, capsys, "eval", old, "--device", "cpu", "--pieces", 0)


def test_bad_inputs_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")  # one line on the terminal too
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no MIDI or MusicXML" in main_error(monkeypatch, capsys, "data", "prepare", "--music", "--data", empty)
    bad = tmp_path / "broken.mid"
    bad.write_bytes(b"MThd\x00\x00\x00\x06 this is not a MIDI file")
    line = main_error(monkeypatch, capsys, "train", "music", "--data", bad, "--steps", 1, "--out", tmp_path / "r")
    assert "broken.mid" in line and "cannot be read" in line
    assert not (tmp_path / "r").exists()

    from music21 import note, stream

    silent = tmp_path / "silent.musicxml"
    stream.Score([stream.Part([note.Rest(quarterLength=4)])]).write("musicxml", fp=str(silent))
    assert "no notes" in main_error(monkeypatch, capsys, "data", "prepare", "--data", silent)
    assert "not a note name" in main_error(monkeypatch, capsys, "generate", "music", tmp_path, "--key", "H major")
    assert "is not a genlab run" in main_error(monkeypatch, capsys, "generate", "music", tmp_path)


def test_outputs_are_never_overwritten_by_accident(music_run, tmp_path, monkeypatch, capsys):
    run, _ = music_run
    mid = tmp_path / "taken.mid"
    mid.write_bytes(b"mine")
    assert "already exists" in main_error(monkeypatch, capsys, "generate", "music", run, "--bars", 1, "--out", mid,
                                          "--device", "cpu")
    assert mid.read_bytes() == b"mine"


# ---- the studio's music stage and POST /v1/audio/music -------------------------------------------------------

def test_studio_bundle_with_music(trained_run, music_run, tmp_path, monkeypatch):
    import base64
    import hashlib
    import json
    import zipfile
    from dataclasses import replace

    import symusic

    from genlab.generate.speech import SpeechOptions
    from genlab.safety.bundle import StudioSafety
    from genlab.safety.provenance import Signer, init_keys, verify_asset
    from genlab.studio.pipeline import StudioRequest, load_studio

    run, _ = music_run
    studio = load_studio(trained_run, None, device="cpu", semantic_labels=False, music_run=run, watermark=False)
    req = StudioRequest(prompt="A winter night in the rain", max_tokens=8, seed=5, quality_retries=0, narrate=False,
                        music_bars=2)
    events: list[dict] = []
    a = studio.make(req, tmp_path / "a", events.append)
    m = a.manifest
    names = {p.relative_to(a.folder).as_posix() for p in a.folder.rglob("*") if p.is_file()}
    assert {"music/music.mid", "music/music.wav"} <= names and set(m["assets"]) == names - {"manifest.json"}
    for name, rec in m["assets"].items():
        assert hashlib.sha256((a.folder / name).read_bytes()).hexdigest() == rec["sha256"], name
    with zipfile.ZipFile(a.zip_path) as z:
        assert set(z.namelist()) == names and z.read("music/music.wav") == (a.folder / "music/music.wav").read_bytes()
    roles = {rec["role"]: rec for rec in m["models"]}
    assert roles["music"]["run"] == run.name and roles["music"]["family"] == "music"
    assert roles["music"]["weights_sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert len(roles["music"]["config_sha256"]) == 64
    music = m["music"]
    assert music == m["parameters"]["music"] and music["midi"] == "music/music.mid" and music["wav"] == "music/music.wav"
    assert music["key"].endswith("minor") and music["key_choice"]["minor_words"] == ["night", "rain", "winter"]
    assert music["bars"] == 2 and music["seed"] == 7 == m["seeds"]["music"] and music["wav_skipped"] is None
    assert "music" in m["timings"] and ("music", "done") in [(e["stage"], e["status"]) for e in events
                                                             if e["event"] == "stage"]
    score = symusic.Score(str(a.folder / "music/music.mid"))
    assert [t.name for t in score.tracks] == ["Soprano", "Alto", "Tenor", "Bass"]
    page = (a.folder / "index.html").read_text()
    assert base64.b64encode((a.folder / "music/music.wav").read_bytes()).decode() in page and "<script" not in page
    # The same request: the same music, byte for byte; a key asked for is the key.
    b = studio.make(req, tmp_path / "b")
    assert all(b.manifest["assets"][n] == m["assets"][n] for n in ("music/music.mid", "music/music.wav"))
    keyed = studio.music.make(bars=1, key=mdata.parse_key("D major"), seed=0, wav=False)
    assert keyed.record["key"] == "D major" and keyed.record["key_choice"]["method"] == "given" and keyed.wav is None

    # No FluidSynth here: the MIDI ships, the WAV is skipped and the manifest says why.
    with monkeypatch.context() as mp:
        mp.setattr("genlab.generate.music.shutil.which", lambda name: None)
        c = studio.make(req, tmp_path / "c")
    assert "music/music.mid" in c.manifest["assets"] and "music/music.wav" not in c.manifest["assets"]
    assert c.manifest["music"]["wav"] is None and "fluidsynth" in c.manifest["music"]["wav_skipped"]
    assert c.manifest["assets"]["music/music.mid"] == m["assets"]["music/music.mid"]
    assert "data:audio/wav" not in (c.folder / "index.html").read_text()

    # With a narration: soundtrack.wav, the music under the narration (check_soundtrack measures it).
    told = replace(req, narrate=True, speech=SpeechOptions(backend="espeak"))
    n = studio.make(told, tmp_path / "n")
    assert {"narration.wav", "music/music.wav", "soundtrack.wav"} <= set(n.manifest["assets"])
    check_soundtrack(n.folder, n.manifest)
    page = (n.folder / "index.html").read_text()
    assert base64.b64encode((n.folder / "soundtrack.wav").read_bytes()).decode() in page
    assert 'href="narration.wav"' in page and 'href="music/music.wav"' in page
    assert studio.make(told, tmp_path / "n2").manifest["assets"]["soundtrack.wav"] == n.manifest["assets"]["soundtrack.wav"]
    nomix = studio.make(replace(told, mix=False), tmp_path / "nomix")  # --no-mix
    assert "soundtrack.wav" not in nomix.manifest["assets"] and nomix.manifest["mix"] is None
    assert nomix.manifest["music"]["mix_skipped"] == "mix off" and nomix.manifest["music"]["soundtrack"] is None
    assert m["mix"] is None and m["music"]["mix_skipped"] == "no narration"

    # Signed bundles: the music's WAV and the soundtrack carry C2PA credentials like the narration (MIDI: the
    # manifest's hash).
    init_keys(tmp_path / "keys")
    studio.safety = StudioSafety(signer=Signer.load(tmp_path / "keys"))
    s = studio.make(told, tmp_path / "s")
    assert s.manifest["credentials"]["signed"]
    assert {"music/music.wav", "soundtrack.wav", "narration.wav"} <= set(s.manifest["credentials"]["embedded"])
    for name in ("music/music.wav", "soundtrack.wav"):
        creds = verify_asset(name, (s.folder / name).read_bytes(), trust=tmp_path / "keys/ca.pem")
        assert creds.intact and json.loads(json.dumps(creds.record))["seeds"]["music"] == 7
    check_soundtrack(s.folder, s.manifest)  # the credentials' chunk leaves the audio readable

    # Without a music run, or with music off, the stage is skipped as before.
    off = studio.make(replace(req, music=False), tmp_path / "off")
    assert off.manifest["music"] is None and "music" not in off.manifest["seeds"]


def read_wav(path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as (frames x channels floats in [-1, 1], rate)."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768
        return x.reshape(-1, w.getnchannels()), w.getframerate()


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


def check_soundtrack(folder, manifest) -> None:
    """soundtrack.wav: the narration's rate and channels, as long as the manifest says (music alone for
    ``narration_starts`` seconds, the narration, the music's ending); the narration is in it sample for
    sample, and the music in it (the soundtrack minus the narration), against music.wav itself in 20 ms
    windows, is audible where no one speaks and about 12 dB lower under speech."""
    from math import gcd

    from scipy.signal import resample_poly

    mix = manifest["mix"]
    assert mix == manifest["parameters"]["mix"] and mix["file"] == manifest["music"]["soundtrack"] == "soundtrack.wav"
    track, rate = read_wav(folder / "soundtrack.wav")
    voice, voice_rate = read_wav(folder / "narration.wav")
    source, source_rate = read_wav(folder / "music/music.wav")
    assert rate == voice_rate == mix["sample_rate"] and track.shape[1] == voice.shape[1] == mix["channels"] == 1
    assert source_rate == mix["music"]["sample_rate"] == 44100 and "resample_poly" in mix["music"]["resampled"]
    start = round(mix["narration_starts"] * rate)
    assert start > 0.5 * rate and len(track) == start + len(voice) + round(2.5 * rate)
    assert abs(len(track) / rate - mix["seconds"]) < 1e-3 and mix["levels_db"]["duck"] == -12
    assert mix["music"]["plays"] == 1  # this piece is long enough: no loop (test_mix_... loops one)
    g = gcd(rate, source_rate)
    source = resample_poly(source.mean(1), rate // g, source_rate // g)
    music = track[:, 0].copy()
    music[start:start + len(voice)] -= voice[:, 0] * 10 ** (mix["levels_db"]["output_gain"] / 20)
    frame = round(0.02 * rate)
    loud_voice = max(rms(voice[i:i + frame]) for i in range(0, len(voice), frame))
    speech = [start + i for i in range(0, len(voice) - frame, frame) if rms(voice[i:i + frame]) > loud_voice / 10]
    assert len(speech) > 10, "the narration has speech"
    loud_music = max(rms(source[i:i + frame]) for i in range(0, len(source), frame))

    def gains(starts) -> list[float]:  # the music's gain in each window where the source is not quiet
        return [rms(music[i:i + frame]) / rms(source[i:i + frame]) for i in starts
                if i + frame <= len(source) and rms(source[i:i + frame]) > loud_music / 4]

    alone = gains(range(round(0.6 * rate), start - frame, frame))  # after the fade-in, before the narration
    under = gains(speech)
    assert len(alone) > 5 and len(under) > 5, (len(alone), len(under))
    assert rms(music[round(0.6 * rate):start]) > 0.005 and rms(track) > 0.005  # audible, not silent
    ducked = 20 * np.log10(np.median(under) / np.median(alone))
    assert -15 < ducked < -9, ducked  # -12 dB under speech
    assert rms(music[-round(0.05 * rate):]) < rms(music[round(0.6 * rate):start]) / 10  # faded out at the end


def test_mix_ducks_the_music_under_speech_loops_it_and_fades(tmp_path):
    """studio.mix on made-up sound: a voice speaking 0.6 s of every 2 s, a 1.2 s stereo tone at 44.1 kHz."""
    from genlab.studio.mix import MixSettings, mix, wav_bytes

    rate, music_rate = 16000, 44100
    t = np.arange(8 * rate) / rate
    voice = 0.3 * np.sin(2 * np.pi * 220 * t) * ((t % 2.0) < 0.6)
    tm = np.arange(round(1.2 * music_rate)) / music_rate
    tone = 0.05 * np.stack([np.sin(2 * np.pi * 440 * tm), np.sin(2 * np.pi * 440 * tm)], 1)
    data, rec = mix(wav_bytes(voice[:, None], rate), wav_bytes(tone, music_rate), MixSettings())
    (tmp_path / "s.wav").write_bytes(data)
    track, r = read_wav(tmp_path / "s.wav")
    start = round(1.5 * rate)
    assert r == rate and track.shape == (start + len(voice) + round(2.5 * rate), 1)
    assert rec["music"]["plays"] > 10 and rec["music"]["downmixed"] == "2 channels to 1"
    music = track[:, 0].copy()
    music[start:start + len(voice)] -= voice
    level = [rms(music[start + round(k * rate):start + round((k + 0.1) * rate)]) for k in np.arange(0, 8, 0.1)]
    speaking = [lv for k, lv in zip(np.arange(0, 8, 0.1), level, strict=True) if 0.1 <= k % 2.0 < 0.5]
    silent = [lv for k, lv in zip(np.arange(0, 8, 0.1), level, strict=True) if 1.6 <= k % 2.0 < 1.9]
    assert min(silent) > 0.01  # between phrases the music comes back up ...
    assert 20 * np.log10(np.median(speaking) / np.median(silent)) == pytest.approx(-12, abs=1.0)  # ... and ducks
    # the bed is 6 dB under the speech's RMS (0.3 / sqrt(2)), looped without gaps, faded in and out
    assert 20 * np.log10(np.median(silent) / (0.3 / np.sqrt(2))) == pytest.approx(-6, abs=1.0)
    assert rms(music[:round(0.05 * rate)]) < rms(music[round(0.6 * rate):start]) / 4
    assert rms(music[-round(0.05 * rate):]) < 0.002
    loud = np.abs(track).max()
    assert loud <= 0.97 + 1e-4


def test_music_endpoint_on_a_real_server(music_run, tmp_path):
    import io
    import wave

    import httpx
    import symusic

    from genlab.serve import ServerConfig, ServerThread, create_app

    run, _ = music_run
    cfg = ServerConfig(text_run=None, music_run=run, data_dir=tmp_path / "data", device="cpu")
    with ServerThread(create_app(cfg)) as srv:
        url = srv.url + "/v1/audio/music"
        assert run.name in [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]]
        mid = httpx.post(url, json={"bars": 2, "key": "G major", "seed": 4, "format": "mid"}, timeout=120)
        assert mid.status_code == 200 and mid.headers["content-type"] == "audio/midi"
        assert mid.headers["x-genlab-key"] == "G major"
        (tmp_path / "m.mid").write_bytes(mid.content)
        score = symusic.Score(str(tmp_path / "m.mid"))
        names = [t.name for t in score.tracks]  # a voice the tiny model leaves silent has no track (symusic)
        assert len(names) >= 3 and names == [v for v in ("Soprano", "Alto", "Tenor", "Bass") if v in names], names
        again = httpx.post(url, json={"bars": 2, "key": "G major", "seed": 4, "format": "mid"}, timeout=120)
        assert again.content == mid.content  # seeded
        wav = httpx.post(url, json={"bars": 2, "seed": 4}, timeout=120)  # wav by default
        assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(wav.content)) as w:
            assert w.getnchannels() == 2 and w.getframerate() == 44100 and w.getnframes() > 44100
        for body, param, says in (({"bars": 0}, "bars", "greater than or equal to 1"),
                                  ({"bars": 33}, "bars", "less than or equal to 32"),
                                  ({"key": "H major"}, "key", "not a note name"),
                                  ({"format": "mp3"}, "format", "'mid' or 'wav'"),
                                  ({"seed": "x"}, "seed", "integer")):
            r = httpx.post(url, json=body, timeout=60)
            err = r.json()["error"]
            assert r.status_code == 400 and err["param"] == param and says in err["message"], (body, err)
        r = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = httpx.post(url, json={"model": "nope"}, timeout=60)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with ServerThread(create_app(ServerConfig(text_run=None, data_dir=tmp_path / "d2", device="cpu"))) as srv:
        r = httpx.post(srv.url + "/v1/audio/music", json={}, timeout=60)
        err = r.json()["error"]
        assert r.status_code == 404 and "no music model" in err["message"] and "--music-run" in err["message"]


def test_music_request_bad_inputs(monkeypatch, capsys):
    from genlab.errors import ConfigError
    from genlab.studio.pipeline import StudioRequest

    with pytest.raises(ConfigError, match="between 1 and 32"):
        StudioRequest(prompt="x", music_bars=0).validate()
    with pytest.raises(ConfigError, match="^music key 'H major'"):
        StudioRequest(prompt="x", music_key="H major").validate()
    monkeypatch.setenv("COLUMNS", "400")
    assert "music bars must be between 1 and 32" in main_error(monkeypatch, capsys, "studio", "make", "x",
                                                               "--music-bars", 40)
    assert "music bars must be between 1 and 32" in main_error(monkeypatch, capsys, "studio", "make", "x",
                                                               "--no-mix", "--music-bars", 40)  # --no-mix parses


@pytest.mark.skipif(shutil.which("/usr/bin/chromium") is None, reason="Debian's chromium is not installed")
def test_page_plays_the_music_of_a_studio_job(trained_run, music_run, tmp_path):
    from genlab.serve import ServerConfig

    from .test_server_page import served_page

    cfg = ServerConfig(text_run=trained_run, music_run=music_run[0], data_dir=tmp_path / "data", device="cpu",
                       semantic_labels=False, speech_backend="espeak")
    with served_page(cfg, 1000, 900) as (srv, page, errors):
        page.goto(srv.url + "/")
        page.fill("#prompt", "Spring morning")
        page.fill("#max_tokens", "6")
        page.uncheck("#narrate")
        page.click("#go")
        page.wait_for_selector("#download:not([hidden])", timeout=90_000)
        page.wait_for_function("document.getElementById('music').duration > 0", timeout=10_000)
        assert page.locator("#stages li[data-stage=music]").get_attribute("class") == "done"
        assert page.locator("#narration").is_hidden() and page.locator("#soundtrack").is_hidden() and not errors
        # With the narration on: one player for the soundtrack (the music under the narration).
        page.check("#narrate")
        page.click("#go")
        page.wait_for_function("document.getElementById('soundtrack').duration > 0", timeout=90_000)
        assert page.locator("#narration").is_hidden() and page.locator("#music").is_hidden() and not errors, errors
