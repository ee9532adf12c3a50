"""Watermarks and provenance (genlab.safety): the text watermark in genlab's sampler (stream and the
batching scheduler), its detector (and its statistic against transformers' reference detector), the
image watermark through JPEG, C2PA sign-then-verify and tampering, `genlab detect` on files, bundles
and bad inputs, and the server's per-request field through the official openai client."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.errors import ConfigError
from genlab.generate.text import load_lm
from genlab.safety.watermark_text import TextWatermark, p_value, z_score

from .conftest import GENLAB

KEY, OTHER = "test-key-1", "another-key"
# At 0.7 the tiny model mostly writes the tokenization its tokenizer would give the text back (at 1.0 it
# writes many non-canonical splits and broken UTF-8, which re-tokenize into other ids).
SAMPLING = dict(max_tokens=120, temperature=0.7, ignore_eot=True)


@pytest.fixture(scope="module")
def tiny_lm(trained_run, one_thread):
    return load_lm(trained_run, device="cpu")


def _z(lm, text: str, key: str) -> float:
    ids = lm.encode(text)
    return TextWatermark(key).detect(ids, lm.config.vocab_size).z


def _sample(lm, seed: int, key: str | None) -> tuple[str, list[int]]:
    text = lm.generate("the cat", seed=seed, watermark=TextWatermark(key) if key else None, **SAMPLING)
    return text, list(lm.info.completion_ids)


def test_marked_text_is_detected_unmarked_and_wrong_key_are_not(tiny_lm):
    lm = tiny_lm
    V = lm.config.vocab_size
    marked = [_sample(lm, s, KEY) for s in range(3)]
    plain = [_sample(lm, s, None) for s in range(3)]
    for text, ids in marked:
        # The sampled ids (exactly what the sampler chose), then the text as a detector gets it.
        det = TextWatermark(KEY).detect(ids, V)
        assert det.detected and det.z > 6 and det.p_value < 1e-9 and det.scored >= 40, det
        det = TextWatermark(KEY).detect(lm.encode(text), V)
        assert det.detected and det.p_value < 1e-4, det
        assert TextWatermark(OTHER).detect(ids, V).z < 4 and _z(lm, text, OTHER) < 4  # another key: nothing
    for text, ids in plain:
        assert TextWatermark(KEY).detect(ids, V).z < 4 and _z(lm, text, KEY) < 4
    # The mark changes what is sampled (same seed, other text), and each key marks differently.
    assert marked[0][0] != plain[0][0]
    _, other = _sample(lm, 0, OTHER)
    assert TextWatermark(OTHER).detect(other, V).z > 6 and TextWatermark(KEY).detect(other, V).z < 4


def test_batching_scheduler_marks_like_stream(tiny_lm):
    from genlab.generate.text import SamplingOptions
    from genlab.studio.batching import BatchScheduler

    sched = BatchScheduler(tiny_lm, max_batch=4)
    try:
        opts = [SamplingOptions(seed=s, watermark=TextWatermark(KEY), **SAMPLING) for s in range(2)]
        texts = ["".join(sched.stream("the dog", o)) for o in opts]
    finally:
        sched.close()
    for text in texts:
        assert _z(tiny_lm, text, KEY) > 4
    # The same request through LanguageModel.stream samples the same tokens (one TokenSampler).
    assert texts[0] == tiny_lm.generate("the dog", seed=0, watermark=TextWatermark(KEY), **SAMPLING)


def test_green_list_share_and_context():
    wm = TextWatermark(KEY)
    masks = [wm.green_mask(ctx, 5000) for ctx in ([1, 2, 3], [2, 1, 3], [7, 8, 9], [1, 2, 4])]
    for m in masks:
        assert 0.22 < m.mean() < 0.28  # gamma = 0.25 of the vocabulary
    assert (masks[0] != masks[2]).any() and (masks[0] != masks[3]).any()  # the context seeds the list...
    assert (masks[0] == masks[1]).all()  # ...through its min-hash anchor and the previous token
    # is_green (detection) agrees with green_mask (sampling) token by token.
    assert all(wm.is_green([1, 2, 3], t, 5000) == bool(masks[0][t]) for t in range(0, 5000, 37))
    logits = torch.zeros(5000)
    assert torch.equal(wm.apply(logits, [1, 2, 3]) > 0, torch.from_numpy(masks[0]))
    with pytest.raises(ConfigError):
        TextWatermark("  ")


def test_statistic_matches_transformers_reference_detector():
    """The same green decisions scored by transformers' WatermarkDetector (self-hash, 4-token windows,
    repeated windows once) give our z-score and p-value."""
    from transformers import LlamaConfig
    from transformers.generation import WatermarkDetector, WatermarkingConfig

    vocab = 500
    wm = TextWatermark(KEY)
    cfg = LlamaConfig(vocab_size=vocab, bos_token_id=vocab - 1, hidden_size=8, intermediate_size=8,
                      num_hidden_layers=1, num_attention_heads=1)
    det = WatermarkDetector(cfg, "cpu", WatermarkingConfig(greenlist_ratio=0.25, seeding_scheme="selfhash",
                                                                context_width=4),
                            ignore_repeated_ngrams=True)
    assert det.processor.context_width == 4

    def greenlist(prefix: torch.Tensor) -> torch.Tensor:  # selfhash: the prefix ends with the target
        *ctx, target = prefix.tolist()
        return torch.tensor([target] if wm.is_green(ctx, target, vocab) else [], dtype=torch.long)

    det.processor._get_greenlist_ids = greenlist
    rng = np.random.default_rng(0)
    for n in (20, 60):
        ids = rng.integers(0, 40, n).tolist() + rng.integers(0, 40, 10).tolist()[:5] * 2  # with repeats
        ours = wm.detect(ids, vocab)
        ref = det(torch.tensor([ids]), z_threshold=4.0, return_dict=True)
        assert ref.num_tokens_scored[0] == ours.scored and ref.num_green_tokens[0] == ours.green
        assert ref.z_score[0] == pytest.approx(ours.z) and ref.p_value[0] == pytest.approx(ours.p_value)
    assert z_score(25, 100) == pytest.approx(0.0) and p_value(0.0) == pytest.approx(0.5)


def _picture(side: int = 28, scale: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = np.zeros((side, side), np.uint8)
    small[4:24, 7:21] = rng.integers(110, 250, (20, 14))
    return small.repeat(scale, 0).repeat(scale, 1)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def test_image_watermark_survives_jpeg_and_keys_differ():
    from genlab.safety.watermark_image import ImageWatermark, binomial_tail, min_scale

    wm = ImageWatermark(KEY)
    img = _picture()  # a 28-pixel sample enlarged 10x, as the studio delivers it
    marked = wm.embed(img)
    assert marked.shape == img.shape and marked.dtype == np.uint8
    psnr = 10 * np.log10(255**2 / np.mean((marked.astype(float) - img) ** 2))
    assert psnr > 35
    for quality in (90, 75):
        det = wm.detect(_jpeg(marked, quality))
        assert det.detected and det.bit_accuracy >= 0.9 and det.p_value < 1e-4, (quality, det)
    assert not wm.detect(_jpeg(img, 90)).detected  # unmarked
    assert not ImageWatermark(OTHER).detect(marked).detected  # another key's payload
    assert binomial_tail(24, 48) > 0.5 and binomial_tail(48, 48) == 2.0**-48
    assert min_scale(28) == 10 and min_scale(16) == 16
    with pytest.raises(ConfigError, match="256x256"):
        wm.embed(_picture(scale=8))  # 224 pixels: too small for the package


@pytest.fixture()
def keys_dir(tmp_path, monkeypatch):
    from genlab.safety.provenance import init_keys

    monkeypatch.setenv("GENLAB_KEYS", str(tmp_path / "keys"))
    init_keys()
    return tmp_path / "keys"


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_c2pa_sign_verify_and_tamper(keys_dir, tmp_path):
    from genlab.safety.provenance import Signer, init_keys, verify_asset

    assert (keys_dir / "signer-key.pem").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="already exist"):
        init_keys()
    signer = Signer.load()
    signed, sidecar = signer.sign("images/a.png", _png(_picture()), {"article_sha256": "ab" * 32})
    assert sidecar is None
    ok = verify_asset("a.png", signed)
    assert ok.state == "Trusted" and ok.intact and ok.record == {"article_sha256": "ab" * 32}
    # Another machine (no trust anchor for this CA): the signature is valid, the signer unknown.
    assert verify_asset("a.png", signed, trust=tmp_path / "none.pem").state in ("Valid", "Trusted")
    # One byte of the picture changed after signing: invalid, and the failure says the hash.
    i = signed.find(b"IDAT") + 20
    bad = signed[:i] + bytes([signed[i] ^ 1]) + signed[i + 1:]
    t = verify_asset("a.png", bad)
    assert t.present and t.state == "Invalid" and not t.intact and any("hash" in f.lower() for f in t.failures)
    assert not verify_asset("a.png", _png(_picture())).present  # never signed


def test_c2pa_sidecar_store_verifies_and_detects_tampering(keys_dir, tmp_path, detect):
    """Credentials kept beside the asset (NAME.c2pa) rather than inside it: the asset's bytes are left as
    they were, the store verifies against them, and `genlab detect` finds it next to the file."""
    from genlab.safety.provenance import Signer, verify_asset

    original = _png(_picture())
    data, sidecar = Signer.load().sign("a.png", original, {"article_sha256": "cd" * 32}, embed=False)
    assert data == original and sidecar
    ok = verify_asset("a.png", data, sidecar)
    assert ok.intact and not ok.embedded and ok.record == {"article_sha256": "cd" * 32}
    assert not verify_asset("a.png", data).present  # the store is not in the file itself
    other = _png(_picture(seed=1))
    assert not verify_asset("a.png", other, sidecar).intact  # the store is bound to the signed bytes

    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / "a.png.c2pa").write_bytes(sidecar)
    r = detect(tmp_path / "a.png", "--key", KEY, "--json")
    cred = json.loads(r.stdout)["items"][0]["credentials"]
    assert r.returncode == 0 and cred["intact"] and cred["embedded"] is False, r.stdout
    (tmp_path / "a.png").write_bytes(other)  # the picture replaced, the old store left beside it
    cred = json.loads(detect(tmp_path / "a.png", "--key", KEY, "--json").stdout)["items"][0]["credentials"]
    assert cred["present"] and not cred["intact"]


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def detect(monkeypatch, capsys):
    """`genlab detect ARGS` in this process (as `main()` runs it: exit code, stdout, stderr)."""
    from genlab.cli import main

    def run(*args) -> Ran:
        monkeypatch.setattr(sys, "argv", ["genlab", "detect", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        io = capsys.readouterr()
        return Ran(exc.value.code or 0, io.out, io.err)

    return run


def test_detect_cli_files_and_bad_inputs(tiny_lm, trained_run, tmp_path, detect):
    marked = tiny_lm.generate("the cat", seed=1, watermark=TextWatermark(KEY), **SAMPLING)
    (tmp_path / "marked.txt").write_text(marked)
    from genlab.safety.watermark_image import ImageWatermark

    Image.fromarray(ImageWatermark(KEY).embed(_picture())).save(tmp_path / "pic.jpg", quality=90)
    r = detect(tmp_path / "marked.txt", "--key", KEY, "--run", trained_run, "--json")
    assert r.returncode == 0, r.stderr
    item = json.loads(r.stdout)["items"][0]
    assert item["detected"] is True and item["z"] > 4 and item["p_value"] < 1e-4
    r = detect(tmp_path / "pic.jpg", "--key", KEY, "--json")
    item = json.loads(r.stdout)["items"][0]
    assert r.returncode == 0 and item["detected"] is True and item["bit_accuracy"] >= 0.9
    r = detect(tmp_path / "pic.jpg", "--key", OTHER, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["items"][0]["detected"] is False
    r = detect(tmp_path / "pic.jpg", "--key", KEY)  # the table
    assert r.returncode == 0 and "yes" in r.stdout and "bits" in r.stdout

    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50)
    (tmp_path / "folder").mkdir()
    for bad, says in (("empty.txt", "empty"), ("blob.bin", "unknown format"), ("broken.png", "not a readable image"),
                      ("folder", "not a studio bundle"), ("missing.txt", "does not exist")):
        r = detect(tmp_path / bad, "--key", KEY, "--run", trained_run)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], \
            (bad, r.stderr)
    # The real command line once: one line on stderr, exit 2, no traceback.
    r = subprocess.run([*GENLAB, "detect", str(tmp_path / "empty.txt"), "--key", KEY], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: '{tmp_path / 'empty.txt'}' is empty"]


def test_studio_bundle_marked_signed_and_tamper_detected(trained_run, gan_run, keys_dir, tmp_path, one_thread,
                                                         detect):
    from genlab.generate.speech import SpeechOptions
    from genlab.studio.pipeline import StudioRequest, load_studio

    studio = load_studio(trained_run, gan_run, device="cpu", semantic_labels=False)  # watermark on by default
    req = StudioRequest(prompt="A square garden", max_tokens=80, temperature=0.7, repetition_penalty=1.0, seed=2,
                        candidates=2, image_scale=2, speech=SpeechOptions(backend="espeak"))
    b = studio.make(req, tmp_path / "b")
    m = b.manifest
    assert m["watermarks"]["text"]["scheme"] == "kgw-selfhash" and m["watermarks"]["key"] == "local"
    assert m["watermarks"]["image"]["scheme"] == "invisible-watermark:dwtDctSvd"
    assert m["credentials"]["signed"] and "images/illustration.png" in m["credentials"]["embedded"]
    assert "narration.wav" in m["credentials"]["embedded"]
    assert m["parameters"]["illustration"]["scale"] == 16  # 16-pixel shapes: enlarged to 256 for the mark
    key = (keys_dir / "watermark.key").read_text().strip()
    assert key not in json.dumps(m) and key not in (b.folder / "index.html").read_text()

    r = detect(b.folder, "--key", key, "--run", trained_run, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    items = {i["name"]: i for i in rep["items"]}
    assert items["article.md"]["detected"] is True
    assert items["images/illustration.png"]["detected"] is True
    assert items["images/illustration.png"]["credentials"]["state"] == "Trusted"
    assert items["narration.wav"]["credentials"]["intact"] is True
    assert rep["bundle"]["tampered"] is False and rep["bundle"]["article_matches_signed_record"] is True

    # Edit the article: the manifest's hash and the signed record both disagree.
    shutil.copytree(b.folder, tmp_path / "t")
    art = tmp_path / "t" / "article.md"
    art.write_text(art.read_text().replace(" ", "  ", 1))
    rep = json.loads(detect(tmp_path / "t", "--key", key, "--run", trained_run, "--json").stdout)["bundle"]
    assert rep["tampered"] and rep["manifest_mismatch"] == ["article.md"] and rep["article_matches_signed_record"] is False
    r = detect(tmp_path / "t", "--key", key, "--run", trained_run)
    assert r.returncode == 0 and "tampered" in r.stdout


def test_unsigned_bundle_says_so(trained_run, tmp_path):
    from genlab.studio.pipeline import StudioRequest, load_studio

    studio = load_studio(trained_run, None, device="cpu", watermark=False)  # no signing keys in this test
    b = studio.make(StudioRequest(prompt="rain", max_tokens=5, narrate=False), tmp_path / "u")
    assert b.manifest["credentials"]["signed"] is False and b.manifest["watermarks"]["text"] is None


def test_server_watermark_field_through_openai_client(tiny_lm, trained_run, tmp_path):
    import openai

    from genlab.serve import ServerConfig, ServerThread, create_app

    cfg = ServerConfig(text_run=trained_run, image_run=None, data_dir=tmp_path / "srv", device="cpu",
                       semantic_labels=False, speech_backend="espeak", watermark_key=KEY)
    with ServerThread(create_app(cfg)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        args = dict(model=trained_run.name, prompt="the cat", max_tokens=100, temperature=0.7, seed=4)
        marked = client.completions.create(**args, extra_body={"ignore_eos": True}).choices[0].text
        plain = client.completions.create(**args, extra_body={"ignore_eos": True, "watermark": False}).choices[0].text
        chat = client.chat.completions.create(model=trained_run.name, max_tokens=100, temperature=0.7, seed=4,
                                              messages=[{"role": "user", "content": "the dog"}],
                                              extra_body={"ignore_eos": True, "watermark": True})
    assert _z(tiny_lm, marked, KEY) > 4 and _z(tiny_lm, plain, KEY) < 4
    assert _z(tiny_lm, chat.choices[0].message.content, KEY) > 4
    # A server without a key refuses "watermark": true, naming the field.
    cfg = ServerConfig(text_run=trained_run, image_run=None, data_dir=tmp_path / "srv2", device="cpu",
                       semantic_labels=False, speech_backend="espeak")
    with ServerThread(create_app(cfg)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError, match="watermark"):
            client.completions.create(model=trained_run.name, prompt="x", max_tokens=2,
                                      extra_body={"watermark": True})
