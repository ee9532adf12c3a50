"""The memorization audit: the suffix array and its longest-overlap search against brute force, the
audit's arithmetic on generators whose behaviour is known, a real tiny LM run through both forms of
`genlab audit`, the image comparison, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.errors import ConfigError, DataError
from genlab.safety.memorization import (
    TextAuditConfig,
    TextIndex,
    audit_generator,
    image_memorization,
    suffix_array,
)

from .cli_helpers import cli
from .conftest import make_text
from .test_studio_helpers import gan_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

ALPHABET = st.sampled_from("ab c\né")  # few letters: many repeats, the hard case for both searches
TEXT = st.text(ALPHABET, min_size=0, max_size=60)




@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A tiny LM trained for a few steps: the audit needs a run with data, tokenizer and weights, not a good model."""
    from genlab.config import DataConfig, train_config
    from genlab.train.lm import LMTrainSpec, train_lm

    corpus = tmp_path_factory.mktemp("memcorpus")
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(make_text(20, seed=i))
    run = tmp_path_factory.mktemp("memruns") / "tiny"
    train_lm(LMTrainSpec(
        run=run, data=DataConfig(corpus=[str(corpus)], tokenizer="bpe", vocab_size=300), preset="tiny",
        model_overrides={"context": 64},
        train=train_config("tiny", steps=4, eval_every=4, checkpoint_every=4, batch_size=4), quiet=True))
    return run


def brute_longest(docs: list[str], query: str) -> int:
    best = 0
    for i in range(len(query)):
        for j in range(i + best + 1, len(query) + 1):
            if any(query[i:j] in d for d in docs):
                best = j - i
            else:
                break
    return best


@settings(max_examples=150, deadline=None)
@given(st.text(ALPHABET, min_size=1, max_size=80))
def test_suffix_array_is_the_sorted_suffixes(s):
    codes = np.frombuffer(s.encode("utf-32-le"), dtype="<u4")
    assert suffix_array(codes).tolist() == sorted(range(len(s)), key=lambda i: s[i:])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(ALPHABET, min_size=1, max_size=60), min_size=1, max_size=4), TEXT)
def test_longest_overlap_equals_brute_force(docs, query):
    index = TextIndex.from_documents(docs)
    m = index.longest_match(query)
    assert m.length == brute_longest(docs, query)
    if m.length:
        found = m.text(query)
        assert index.text[m.corpus_start: m.corpus_start + m.length] == found
        assert any(found in d for d in docs)  # never across the separator between documents
        assert index.find(found) >= 0
    assert index.find(query + "\x01") == -1


def test_index_cache_round_trip_and_errors(tmp_path):
    docs = [make_text(30, seed=i) for i in range(3)]
    built = TextIndex.from_documents(docs, cache=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    loaded = TextIndex.from_documents(docs, cache=tmp_path)
    assert np.array_equal(built.sa, loaded.sa)
    q = "zz " + docs[1][100:180] + " qq"
    m = loaded.longest_match(q)
    assert m.length >= 80 and loaded.document_of(m.corpus_start) == 1
    with pytest.raises(DataError, match="empty"):
        TextIndex.from_documents(["", ""])


def test_audit_arithmetic_on_a_copier_and_on_a_model_that_writes_new_text():
    rng = np.random.default_rng(0)
    train = [make_text(8, seed=i) for i in range(30)]
    held = [make_text(8, seed=100 + i) for i in range(10)]
    index = TextIndex.from_documents(train)
    cfg = TextAuditConfig(n=6, prefixes=4, prefix_chars=40, min_chars=50)

    def copier(prompt: str, seed: int) -> str:  # recites training documents, continues them verbatim
        if prompt:
            doc = next(d for d in train if d.startswith(prompt))
            return doc[len(prompt):]
        return train[seed % len(train)]

    groups, findings = audit_generator(copier, index, cfg, train, held)
    by = {g.kind: g for g in groups}
    assert by["sample"].share_over == 1.0 and by["sample"].longest == max(len(train[i]) for i in range(6))
    assert by["continuation"].count == 4 and by["continuation"].share_extracted == 1.0
    assert all(f.exact == f.chars for f in findings if f.kind == "continuation")
    assert by["held-out"].count > 0

    def novel(prompt: str, seed: int) -> str:  # letters the corpus never holds in this order
        return "".join(rng.choice(list("xyzqwvk ")) for _ in range(120))

    groups, findings = audit_generator(novel, index, cfg, train, None)
    by = {g.kind: g for g in groups}
    assert set(by) == {"sample", "continuation"}
    assert by["sample"].share_over == 0.0 and by["sample"].longest < 10
    assert by["continuation"].share_extracted == 0.0
    with pytest.raises(ConfigError):
        audit_generator(novel, index, TextAuditConfig(n=0, prefixes=0), train)


def test_image_comparison_flags_copies_and_not_fresh_images():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (200, 1, 8, 8), dtype=np.uint8)
    test = rng.integers(0, 256, (100, 1, 8, 8), dtype=np.uint8)

    def feats(x):
        return x.reshape(len(x), -1)[:, :16].astype(np.float64)

    copies = train[rng.integers(0, 200, 50)]
    spaces, nearest = image_memorization(copies, train, test, feats)
    px = {s.space: s for s in spaces}["pixels"]
    assert px.exact_copies == 50 and px.share_below_test_p5 == 1.0
    assert np.array_equal(train[nearest["pixels"]], copies)
    fresh = rng.integers(0, 256, (50, 1, 8, 8), dtype=np.uint8)  # drawn like the test images
    spaces, _ = image_memorization(fresh, train, test, feats)
    px = {s.space: s for s in spaces}["pixels"]
    assert px.exact_copies == 0 and px.share_below_test_p5 < 0.3


def test_image_audit_of_a_real_run(gan_run):  # noqa: F811
    from genlab.evaluate.classifier import ClassifierConfig
    from genlab.safety.memorization import audit_images

    rep = audit_images(gan_run, n=40, reference=60, device="cpu", quiet=True,
                       classifier_config=ClassifierConfig(width=8, features=32, steps=60, batch_size=32))
    assert rep.family == "gan" and rep.n_samples == 40 and rep.n_test == 60 and rep.n_train > 0
    assert [s.space for s in rep.spaces] == ["pixels", "features"]
    for s in rep.spaces:
        assert s.sample_median > 0 and s.test_median > 0 and 0 <= s.share_below_test_p5 <= s.share_below_test_median <= 1
    assert all(0 <= i < rep.n_train for i in rep.nearest_train["pixels"]) and len(rep.nearest_train["features"]) == 40
    assert json.loads(json.dumps(rep.to_dict()))["spaces"][0]["space"] == "pixels"


def test_audit_memorization_of_a_tiny_run_and_both_audit_forms(small_run, tmp_path, monkeypatch, capsys):
    code, out, err = cli(["audit", "memorization", str(small_run), "--n", "3", "--prefixes", "2",
                          "--max-tokens", "24", "--json", "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    rep = json.loads(out)
    by = {g["kind"]: g for g in rep["groups"]}
    assert set(by) == {"sample", "continuation", "held-out"}
    assert by["sample"]["count"] == 3 and by["continuation"]["count"] == 2
    assert rep["corpus"].startswith("training split of") and rep["corpus_documents"] > 1
    # Every reported overlap is really in the training text, and never longer than the text it came from.
    corpus_text = open_corpus(small_run)
    for f in rep["findings"]:
        assert 0 <= f["overlap"] <= f["chars"]
        assert f["excerpt"] in corpus_text
    assert max(f["overlap"] for f in rep["findings"]) > 0
    assert by["held-out"]["longest"] > 0  # held-out sentences share words with the training ones

    other = tmp_path / "other.txt"
    other.write_text("Completely unrelated words: zebra quantum xylophone.\n")
    code, out, err = cli(["audit", "memorization", str(small_run), "--corpus", str(other), "--n", "2",
                          "--prefixes", "0", "--max-tokens", "16", "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    # The table's title may wrap anywhere, inside the path too: compare without the white space.
    assert f"against{other}".replace(" ", "") in "".join(out.split()) and "sample" in out

    # The bias audit keeps its old form and gains an explicit one: the same verdict on an LM run.
    for args in (["audit", str(small_run)], ["audit", "bias", str(small_run)], ["audit", "--n", "5", str(small_run)]):
        code, out, err = cli(args, monkeypatch, capsys)
        assert code == 2
        assert err.strip() == f"error: run '{small_run}' holds a lm model, not an image model (gan or vae)"


def open_corpus(run) -> str:
    from genlab.safety.memorization import run_training_split

    return "\n".join(run_training_split(run)[0])


def test_bad_inputs_are_one_line(tmp_path, monkeypatch, capsys):
    imported = tmp_path / "imported"
    imported.mkdir()
    (imported / "config.json").write_text(json.dumps({"family": "lm"}))
    cases = [
        (["audit", "memorization", str(imported)], "records no training data"),
        (["audit", "memorization", str(tmp_path / "missing")], "does not exist"),
        (["audit", "memorization", str(imported), "--corpus", str(tmp_path / "nope.txt")], "not a file"),
        (["audit", "memorization", str(imported), "--n", "0", "--prefixes", "0"], "--n"),
    ]
    for args, message in cases:
        code, _, err = cli(args, monkeypatch, capsys)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
