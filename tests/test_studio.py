"""The studio pipeline: a bundle from a prompt with a genlab LM, a GAN and a voice; reproducible;
atomic; with every model, seed and asset hash in its manifest."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zipfile

import numpy as np
import pytest

from genlab.cli import main
from genlab.generate.images import ImageGenerator
from genlab.generate.speech import SpeechOptions
from genlab.generate.text import SamplingOptions
from genlab.studio.labels import keyword_choice, pick_label
from genlab.studio.pipeline import (
    NearestCentroid,
    StudioRequest,
    load_studio,
    parse_article,
    select_candidate,
)

from .test_studio_helpers import gan_run  # noqa: F401  (fixture)

PROMPT = "A square garden where the cat sat"


def request(**kw) -> StudioRequest:
    base = dict(prompt=PROMPT, max_tokens=40, seed=3, candidates=3, image_scale=2,
                speech=SpeechOptions(backend="espeak"))
    base.update(kw)
    return StudioRequest(**base)


def test_bundle_is_complete_and_reproducible(trained_run, gan_run, tmp_path):  # noqa: F811
    studio = load_studio(trained_run, gan_run, device="cpu", semantic_labels=False)
    events: list[dict] = []
    a = studio.make(request(), tmp_path / "a", events.append)
    b = studio.make(request(), tmp_path / "b")
    c = studio.make(request(seed=4), tmp_path / "c")

    names = {p.relative_to(a.folder).as_posix() for p in a.folder.rglob("*") if p.is_file()}
    assert {"index.html", "article.md", "narration.wav", "manifest.json", "images/illustration.png"} <= names
    m = a.manifest
    assert json.loads((a.folder / "manifest.json").read_text()) == m
    # Every asset's hash is the hash of the file on disk.
    for name, rec in m["assets"].items():
        assert hashlib.sha256((a.folder / name).read_bytes()).hexdigest() == rec["sha256"], name
    assert set(m["assets"]) == names - {"manifest.json"}
    # Same inputs and seeds: the same assets, byte for byte; another seed: another article.
    assert m["assets"] == b.manifest["assets"]
    assert c.manifest["assets"]["article.md"] != m["assets"]["article.md"]
    # Models: the LM run and the GAN run with config and weights hashes; the voice.
    roles = {rec["role"]: rec for rec in m["models"]}
    assert roles["text"]["run"] == trained_run.name and len(roles["text"]["weights_sha256"]) == 64
    assert roles["illustration"]["family"] == "gan" and len(roles["illustration"]["config_sha256"]) == 64
    assert roles["narration"]["kind"] == "speech:espeak"
    ill = m["parameters"]["illustration"]
    assert ill["label"]["label"] == "square" and ill["label"]["method"] == "keyword"  # "square" is in the prompt
    assert ill["selection"]["rule"] == "most-confident:nearest-centroid"
    assert ill["kept"] == int(np.argmax(ill["selection"]["confidences"]))
    assert m["seeds"] == {"text": 3, "illustration": 4} and m["music"] is None
    assert set(m["timings"]) == {"text", "illustration", "narration", "bundle"}
    # The page is self-contained: picture and sound inline, the article text in it.
    page = (a.folder / "index.html").read_text()
    png = (a.folder / "images/illustration.png").read_bytes()
    assert base64.b64encode(png).decode() in page and "data:audio/wav;base64," in page
    assert "src=\"http" not in page and "<script" not in page
    # The zip holds the same files.
    with zipfile.ZipFile(a.zip_path) as z:
        assert set(z.namelist()) == names
        assert z.read("images/illustration.png") == png
    # Progress: every stage reported, in order; text streamed.
    stages = [(e["stage"], e["status"]) for e in events if e["event"] == "stage"]
    assert [s for s, st in stages if st != "running"] == ["text", "illustration", "narration", "music", "bundle"]
    assert ("music", "skipped") in stages
    # Each attempt of the quality gate streams after a "retry" event; an "article" event names the kept one.
    kept = [e["text"] for e in events if e["event"] == "article"]
    streamed = kept[-1] if kept else "".join(e["text"] for e in events if e["event"] == "text")
    # Bytes, not read_text(): a tiny model may write a "\r", which universal newlines would turn into "\n".
    assert streamed.strip() in (a.folder / "article.md").read_bytes().decode()
    gate = m["quality"]["text"]
    assert gate["attempts"] == len([e for e in events if e["event"] == "retry"]) + 1 == len(gate["tries"])
    assert gate["attempts"] == 1 or kept


def test_existing_bundle_is_not_replaced_without_overwrite(trained_run, tmp_path):
    studio = load_studio(trained_run, None, device="cpu")
    first = studio.make(request(narrate=False, max_tokens=5), tmp_path / "x")
    before = (first.folder / "article.md").read_bytes()
    with pytest.raises(Exception, match="already exists"):
        studio.make(request(narrate=False, max_tokens=5, seed=9), tmp_path / "x")
    assert (first.folder / "article.md").read_bytes() == before
    again = studio.make(request(narrate=False, max_tokens=5, seed=9), tmp_path / "x", overwrite=True)
    assert again.manifest["seeds"]["text"] == 9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_label_picking_semantic_and_keywords():
    classes = ["circle", "square", "triangle", "cross"]
    assert keyword_choice("Two squares and a circle, then squares again", classes).label == "square"
    none = keyword_choice("nothing relevant", classes)
    assert none.method == "keyword:no-match" and none.score == 0
    sem = pick_label("The pyramids of Egypt rise to a sharp three-sided point", classes)
    assert sem.method.startswith("semantic:") and sem.label == "triangle"
    assert sem.scores["triangle"] > sem.scores["circle"]


def test_nearest_centroid_selection_prefers_the_class_like_candidate():
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 40, (20, 1, 4, 4), dtype=np.uint8)
    light = rng.integers(200, 255, (20, 1, 4, 4), dtype=np.uint8)
    clf = NearestCentroid(np.concatenate([dark, light]), np.array([0] * 20 + [1] * 20), 2)
    cands = np.stack([dark[0], light[0], dark[1]])
    best, why = select_candidate(None, cands, 1, clf)
    assert best == 1 and why["confidences"][1] > 0.99
    best, why = select_candidate(None, cands, None, None)
    assert why["rule"] == "closest-to-candidate-mean"


def test_parse_article():
    assert parse_article("# Cats\nThey sit.\n\nThey nap.", "x", titled=True) == ("Cats", "They sit.\n\nThey nap.")
    assert parse_article("Title: \"Dogs\"\nRun.", "x", titled=True) == ("Dogs", "Run.")
    assert parse_article("they sit", "about cats", titled=False) == ("About cats", "they sit")


def test_hf_folder_backend(trained_run, tmp_path):
    """A local Hugging Face model folder (a tiny random Llama with our tokenizer) as text back end."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from genlab.studio.backends import GenlabTextBackend, text_backend

    tok = PreTrainedTokenizerFast(tokenizer_file=str(trained_run / "tokenizer.json"), eos_token="<|endoftext|>")
    cfg = LlamaConfig(vocab_size=tok.vocab_size + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    backend = text_backend(tmp_path / "hf")
    assert isinstance(backend, GenlabTextBackend) and backend.lm.runtime == "transformers" and not backend.chat
    opts = SamplingOptions(max_tokens=8, temperature=1.0, seed=1)
    text = "".join(backend.stream("The cat", opts))
    assert text and text == "".join(backend.stream("The cat", opts))
    assert backend.describe()["kind"] == "huggingface"


def test_studio_make_cli(trained_run, gan_run, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "cli-bundle"
    monkeypatch.setattr(sys, "argv", ["genlab", "studio", "make", "A circle of friends", "--out", str(out),
                                      "--text-run", str(trained_run), "--image-run", str(gan_run),
                                      "--max-tokens", "10", "--no-narrate", "--keywords", "--device", "cpu"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    io = capsys.readouterr()
    assert "bundle ->" in io.out and "illustration" in io.err and (out / "index.html").exists()
    assert json.loads((out / "manifest.json").read_text())["parameters"]["illustration"]["label"]["label"] == "circle"
    monkeypatch.setattr(sys, "argv", ["genlab", "studio", "make", "x", "--out", str(out), "--text-run",
                                      str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: ")
    assert ImageGenerator  # imported for the fixture's type
