"""The quality gate: its scores on texts whose faults are known, its retry logic, the studio shipping
the first article that passes (or the best, marked), the illustration retried on low confidence,
`genlab check` on text and images, and bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from genlab.errors import ConfigError
from genlab.safety import quality as q
from genlab.studio.pipeline import Studio, StudioRequest

from .cli_helpers import cli
from .conftest import make_text
from .test_studio_helpers import gan_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = ("The old lighthouse keeper walked down to the harbour every morning before the sun came up. He "
        "liked to watch the fishing boats leave, one after another, and he knew the name of every captain. "
        "In the afternoon he would climb the stairs again, clean the great lamp and write a few lines in his "
        "book about the weather, the sea and the people he had met that day.")
LOOP = "the cat sat on the mat " * 20
GERMAN = ("Der alte Leuchtturmwärter ging jeden Morgen zum Hafen hinunter, bevor die Sonne aufging. Er sah "
          "gern den Fischerbooten zu, die nacheinander ausliefen, und kannte den Namen jedes Kapitäns. ") * 2


@pytest.fixture
def no_reference(monkeypatch):
    """Studio and `check` without a reference model: these tests are about the gate, not perplexity."""
    monkeypatch.setattr(q, "reference_model", lambda own_lm=None, device="auto": None)


def test_scores_tell_the_known_faults_apart():
    good = q.score_text(GOOD)
    assert good.passed, good.failures
    assert good.scores["repetition"] == 0 and good.scores["english"] > 0.4 and good.scores["perplexity"] is None
    loop = q.score_text(LOOP)
    assert loop.scores["repetition"] > 0.8 and any("repetition" in f for f in loop.failures)
    german = q.score_text(GERMAN)
    assert german.scores["english"] < 0.1 and any("English" in f for f in german.failures)
    short = q.score_text("A short line of text.")
    assert [f for f in short.failures if "words" in f]
    noise = q.score_text("#### 1234 ;;;; %%%% " * 30)
    assert any("letter" in f for f in noise.failures)
    assert q.repetition("a b c a b c".split()) == pytest.approx(1 / 4)  # abc bca cab abc: one repeat of four
    high = q.score_text(GOOD, perplexity=lambda text: 500.0)
    assert high.failures == ["perplexity 500.0 > 60.0"]
    with pytest.raises(ConfigError):
        q.Thresholds(min_english=2).validate()


def test_gate_retries_until_a_candidate_passes_then_keeps_it():
    for k in (1, 2, 3):  # the scorer fails the first k - 1 candidates
        made: list[int] = []

        def make(seed, made=made):
            made.append(seed)
            return seed

        def score(seed, made=made, k=k):
            ok = len(made) >= k
            return q.Verdict("text", {"english": 0.5, "repetition": 0.0, "words": 100, "perplexity": None},
                             [] if ok else ["bad"])

        res = q.gate(make, score, seed=7, retries=2)
        assert made == [7 + i * q.SEED_STRIDE for i in range(k)]
        assert len(res.attempts) == k and res.passed and res.kept.seed == made[-1]
        rec = res.record()
        assert rec["attempts"] == k and rec["kept"] == k - 1 and rec["status"] == "passed"
        assert [t["passed"] for t in rec["tries"]] == [False] * (k - 1) + [True]


def test_gate_ships_the_best_when_all_fail_and_respects_zero_retries():
    quality = {7: 0.1, 1007: 0.9, 2007: 0.5}

    def score(seed):
        return q.Verdict("image", {"confidence": quality[seed]}, ["low"])

    res = q.gate(lambda s: s, score, seed=7, retries=2)
    assert len(res.attempts) == 3 and not res.passed and res.kept.seed == 1007
    assert res.record()["status"] == "shipped-below-threshold"
    # fewer failed thresholds beat a higher score
    fails = {7: ["a", "b"], 1007: ["a"]}
    res = q.gate(lambda s: s, lambda s: q.Verdict("image", {"confidence": 1.0 if s == 7 else 0.0}, fails[s]), 7, 1)
    assert res.kept.seed == 1007
    assert len(q.gate(lambda s: s, score, seed=7, retries=0).attempts) == 1
    with pytest.raises(ConfigError):
        q.gate(lambda s: s, score, seed=7, retries=-1)


class ScriptedBackend:
    """A base-model text back end that writes a given text per seed (else LOOP)."""

    chat = False

    def __init__(self, texts: dict[int, str]) -> None:
        self.texts, self.seeds = texts, []

    def stream(self, prompt, opts, system=None):
        self.seeds.append(opts.seed)
        yield self.texts.get(opts.seed, LOOP)

    def describe(self):
        return {"role": "text", "kind": "scripted"}


def test_studio_rewrites_a_failing_article_and_marks_a_bundle_that_never_passes(tmp_path, no_reference):
    backend = ScriptedBackend({5 + 2 * q.SEED_STRIDE: GOOD})
    studio = Studio(backend, None)
    events = []
    b = studio.make(StudioRequest(prompt="A lighthouse", seed=5, narrate=False), tmp_path / "a", events.append)
    assert backend.seeds == [5, 1005, 2005]
    assert (b.folder / "article.md").read_text().strip().endswith(GOOD[-40:])
    m = json.loads((b.folder / "manifest.json").read_text())
    assert m["quality"]["status"] == "passed" and m["quality"]["illustration"] is None
    text = m["quality"]["text"]
    assert text["attempts"] == 3 and text["kept"] == 2 and text["passed"]
    assert [t["seed"] for t in text["tries"]] == [5, 1005, 2005]
    assert text["tries"][0]["scores"]["repetition"] > 0.8 and text["reference"] is None
    assert [e["attempt"] for e in events if e["event"] == "retry"] == [2, 3]
    assert [e for e in events if e["event"] == "article"][0]["text"] == GOOD

    backend = ScriptedBackend({})
    b = Studio(backend, None).make(StudioRequest(prompt="A lighthouse", seed=5, narrate=False, quality_retries=1),
                                   tmp_path / "b")
    assert backend.seeds == [5, 1005]
    assert b.manifest["quality"]["status"] == "shipped-below-threshold"
    assert b.manifest["quality"]["text"]["attempts"] == 2
    with pytest.raises(ConfigError, match="quality retries"):
        StudioRequest(prompt="x", quality_retries=9).validate()


def test_studio_illustration_is_retried_when_the_classifier_is_unsure(gan_run, tmp_path, no_reference,  # noqa: F811
                                                                      monkeypatch):
    from genlab.generate.images import ImageGenerator
    from genlab.studio import pipeline

    seeds = []

    def select(gen, cands, target, classifier):  # confident only about the second batch
        seeds.append(len(seeds))
        conf = [0.2] * len(cands) if len(seeds) == 1 else [0.3, 0.95] + [0.1] * (len(cands) - 2)
        return int(np.argmax(conf)), {"rule": "most-confident:test", "confidences": conf}

    monkeypatch.setattr(pipeline, "select_candidate", select)
    studio = Studio(ScriptedBackend({3: GOOD}), ImageGenerator.from_run(gan_run, device="cpu"), gan_run,
                    semantic_labels=False)
    b = studio.make(StudioRequest(prompt="A square garden", seed=3, candidates=3, image_scale=2, narrate=False),
                    tmp_path / "c")
    ill = b.manifest["parameters"]["illustration"]
    assert ill["quality"]["attempts"] == 2 and ill["quality"]["passed"] and ill["seed"] == 4 + q.SEED_STRIDE
    assert ill["kept"] == 1 and ill["quality"]["scores"]["confidence"] == 0.95
    assert b.manifest["quality"]["status"] == "passed" and b.manifest["quality"]["text"]["attempts"] == 1


@pytest.fixture(scope="module")
def scorer_run(tmp_path_factory):
    """A tiny LM trained briefly on pseudo-English: enough to prefer it to noise."""
    from genlab.config import DataConfig, train_config
    from genlab.train.lm import LMTrainSpec, train_lm

    corpus = tmp_path_factory.mktemp("qcorpus")
    (corpus / "a.txt").write_text(make_text(300, seed=1))
    run = tmp_path_factory.mktemp("qruns") / "lm"
    train_lm(LMTrainSpec(
        run=run, data=DataConfig(corpus=[str(corpus)], tokenizer="char"), preset="tiny",
        model_overrides={"context": 64},
        train=train_config("tiny", steps=20, eval_every=20, checkpoint_every=20, batch_size=8), quiet=True))
    return run


def test_check_text_under_a_reference_model(scorer_run, tmp_path, monkeypatch, capsys):
    like = tmp_path / "like.txt"
    like.write_text(make_text(12, seed=9))
    noise = tmp_path / "noise.txt"
    rng = np.random.default_rng(0)
    noise.write_text(" ".join("".join(rng.choice(list("qxzjvkw"), 5)) for _ in range(60)))
    ppl = {}
    for f in (like, noise):
        code, out, err = cli(["check", str(f), "--reference", str(scorer_run), "--json", "--device", "cpu"],
                             monkeypatch, capsys)
        assert code == 0, err
        res = json.loads(out)
        assert res["kind"] == "text" and res["scores"]["reference"]["run"] == str(scorer_run)
        ppl[f.name] = res["scores"]["perplexity"]
    assert 1 < ppl["like.txt"] < ppl["noise.txt"] and math.isfinite(ppl["noise.txt"])
    code, out, err = cli(["check", str(like), "--reference", str(scorer_run), "--device", "cpu"], monkeypatch, capsys)
    assert code == 0 and "quality:" in out and "perplexity" in out


def test_check_image_and_plain_text(gan_run, tmp_path, monkeypatch, capsys, no_reference):  # noqa: F811
    from genlab.data.images import ImageDataConfig, load_image_data

    data = load_image_data(ImageDataConfig("shapes", image_size=16, channels=1, shapes_count=256))
    square = data.train.images[list(data.train.labels).index(data.class_names.index("square"))]
    path = tmp_path / "square.png"
    Image.fromarray(np.kron(square[0], np.ones((8, 8), np.uint8))).save(path)  # enlarged, as the studio ships it
    code, out, err = cli(["check", str(path), "--run", str(gan_run), "--label", "square", "--json"], monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["kind"] == "image" and res["scores"]["label"] == "square"
    assert res["scores"]["predicted"] == "square" and res["scores"]["confidence"] > 0.5
    code, out, err = cli(["check", str(path), "--run", str(gan_run), "--label", "circle", "--json"], monkeypatch, capsys)
    assert json.loads(out)["scores"]["confidence"] < 0.5

    text = tmp_path / "a.txt"
    text.write_text(GOOD)
    code, out, err = cli(["check", str(text)], monkeypatch, capsys)
    assert code == 0 and "quality: passes" in out and "perplexity not scored" in out
    text.write_text(LOOP)
    code, out, err = cli(["check", str(text), "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["passed"] is False


def test_check_bad_inputs_are_one_line(tmp_path, gan_run, monkeypatch, capsys):  # noqa: F811
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02" * 10)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    cases = [([str(empty)], "empty"), ([str(binary)], "binary"), ([str(latin)], "UTF-8"),
             ([str(tmp_path / "missing.txt")], "not a file"),
             ([str(broken), "--run", str(gan_run)], "not a readable image"),
             ([str(tmp_path / "x.png"), "--run", str(tmp_path / "norun")], "does not exist")]
    for args, message in cases:
        code, _, err = cli(["check", *args], monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
