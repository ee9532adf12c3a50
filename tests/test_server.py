"""`genlab serve` against the official openai client on a real uvicorn server (127.0.0.1, free
port): completions, chat (streamed and not), images, speech; dynamic batching under concurrent
load; API key, limits, JSON errors, no path traversal, disconnects freeing slots; studio jobs
with SSE progress, bundle download, history that survives a restart."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import wave
import zipfile

import httpx
import openai
import pytest

from genlab.serve import ServerConfig, ServerThread, create_app

from .test_studio_helpers import gan_run  # noqa: F401  (fixture)

KEY = "test-key"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("studio-data")


@pytest.fixture(scope="module")
def server(trained_run, gan_run, data_dir):  # noqa: F811
    cfg = ServerConfig(text_run=trained_run, image_run=gan_run, data_dir=data_dir, api_key=KEY, device="cpu",
                       max_batch=8, max_tokens_limit=300, max_body_bytes=20_000, semantic_labels=False,
                       speech_backend="espeak")
    with ServerThread(create_app(cfg)) as srv:
        yield srv


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def test_models_and_completions(client, trained_run):
    ids = [m.id for m in client.models.list()]
    assert trained_run.name in ids and "genlab-tts" in ids
    r = client.completions.create(model=trained_run.name, prompt="The cat", max_tokens=12, temperature=0.9,
                                  top_p=0.95, seed=5, n=2)
    assert len(r.choices) == 2 and all(c.finish_reason in ("length", "stop") for c in r.choices)
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 24
    again = client.completions.create(model=trained_run.name, prompt="The cat", max_tokens=12, temperature=0.9,
                                      top_p=0.95, seed=5, n=2)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # seeded
    stopped = client.completions.create(model=trained_run.name, prompt="The cat", max_tokens=50, temperature=0, stop=[" "])
    assert " " not in stopped.choices[0].text


def test_streamed_completion_ends_with_done_and_usage(server):
    body = {"prompt": "The dog", "max_tokens": 10, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=auth(), timeout=60) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] <= 10 and text


def test_chat_streamed_and_not(client, trained_run):
    msgs = [{"role": "system", "content": "You talk about cats."}, {"role": "user", "content": "Tell me about the mat."}]
    r = client.chat.completions.create(model=trained_run.name, messages=msgs, max_tokens=15, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens > 0
    assert "User:" not in r.choices[0].message.content
    stream = client.chat.completions.create(model=trained_run.name, messages=msgs, max_tokens=15, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == r.choices[0].message.content  # greedy: same text either way
    assert finish in ("length", "stop") and usage.completion_tokens == r.usage.completion_tokens


def test_images_b64_and_url(client, server):
    from PIL import Image

    r = client.images.generate(prompt="a cross", n=2, size="64x64", response_format="b64_json")
    imgs = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in r.data]
    assert len(imgs) == 2 and imgs[0].size == (64, 64) and r.data[0].revised_prompt == "cross"
    u = client.images.generate(prompt="a circle", n=1, response_format="url")
    got = httpx.get(u.data[0].url, headers=auth())
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (128, 128)
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="x", size="100x50")


def test_speech_wav(client):
    r = client.audio.speech.create(model="genlab-tts", voice="alloy", input="Hello from the server.",
                                   response_format="wav")
    with wave.open(io.BytesIO(r.read())) as w:
        assert w.getnframes() / w.getframerate() > 0.5
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="genlab-tts", voice="/etc/passwd", input="x", response_format="wav")


def test_errors_are_json_4xx(server):
    u = server.url
    r = httpx.get(u + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(u + "/health").status_code == 200  # no key needed
    r = httpx.post(u + "/v1/completions", content=b"{not json", headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(u + "/v1/completions", json={"prompt": "x", "max_tokens": 100_000}, headers=auth())
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(u + "/v1/completions", json={"prompt": "x", "temperature": -1}, headers=auth())
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx.post(u + "/v1/completions", json={"prompt": "x" * 30_000}, headers=auth())
    assert r.status_code == 413
    for path in ("/v1/assets/..%2F..%2Fhistory.sqlite3", "/v1/assets/../history.sqlite3",
                 "/v1/studio/jobs/" + "0" * 32 + "/files/..%2Fhistory.sqlite3", "/static/..%2F..%2Fserver.py"):
        r = httpx.get(u + path, headers=auth())
        assert r.status_code == 404, path
        assert "sqlite" not in r.text.lower() or "error" in r.json()


def test_chunked_body_is_counted_and_capped(server):
    """No Content-Length (a chunked upload): the guard counts the bytes as they come, refuses past
    the cap with a JSON 413, and hands a body under it on to the route unchanged."""
    def chunked(body: bytes, piece: int = 4096):
        for i in range(0, len(body), piece):
            yield body[i:i + piece]

    headers = {**auth(), "Content-Type": "application/json"}
    big = json.dumps({"prompt": "x" * 30_000}).encode()
    r = httpx.post(server.url + "/v1/completions", content=chunked(big), headers=headers)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    small = json.dumps({"prompt": "The cat", "max_tokens": 3, "temperature": 0}).encode()
    r = httpx.post(server.url + "/v1/completions", content=chunked(small, 5), headers=headers)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop"), r.text
    r = httpx.post(server.url + "/v1/completions", content=chunked(b"{not json", 3), headers=headers)
    assert r.status_code == 400 and r.json()["error"]["message"] == "the request body is not valid JSON"


def test_unknown_model_is_404_model_not_found(client, server, trained_run, gan_run):  # noqa: F811
    """A model this server does not have is not answered by another one (as OpenAI and vLLM do)."""
    msgs = [{"role": "user", "content": "Hi"}]
    calls = [lambda: client.completions.create(model="nope", prompt="The cat", max_tokens=3),
             lambda: client.chat.completions.create(model="nope", messages=msgs, max_tokens=3),
             lambda: client.chat.completions.create(model="nope", messages=msgs, max_tokens=3, stream=True),
             lambda: client.completions.create(model=gan_run.name, prompt="The cat", max_tokens=3),
             lambda: client.images.generate(model="nope", prompt="a cross"),
             lambda: client.audio.speech.create(model="nope", voice="alloy", input="Hi", response_format="wav")]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.status_code == 404 and e.value.code == "model_not_found" and e.value.param == "model"
        assert "nope" in e.value.message or gan_run.name in e.value.message
    # Every id /v1/models lists is accepted where it belongs, and an omitted model is the default one.
    ids = {m.id for m in client.models.list()}
    assert ids == {trained_run.name, gan_run.name, "genlab-tts"}
    assert client.completions.create(model=trained_run.name, prompt="The", max_tokens=2).model == trained_run.name
    assert client.chat.completions.create(model=trained_run.name, messages=msgs, max_tokens=2).choices
    assert client.images.generate(model=gan_run.name, prompt="a cross").data
    assert client.images.generate(prompt="a cross").data
    assert client.audio.speech.create(model="genlab-tts", voice="alloy", input="Hi", response_format="wav").read()
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "The", "max_tokens": 2}, headers=auth())
    assert r.status_code == 200 and r.json()["model"] == trained_run.name


def test_more_than_four_stop_sequences_is_a_clear_400(client, server, trained_run):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=trained_run.name, prompt="The cat", max_tokens=3, stop=list("abcde"))
    assert e.value.param == "stop" and "at most 4 stop sequences" in e.value.message, e.value.message
    r = httpx.post(server.url + "/v1/chat/completions", headers=auth(),
                   json={"messages": [{"role": "user", "content": "Hi"}], "stop": list("abcde")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    assert "at most 4 stop sequences" in r.json()["error"]["message"]
    four = client.completions.create(model=trained_run.name, prompt="The cat", max_tokens=3, stop=list("wxyz"))
    assert four.choices


def test_n_choices_each_with_its_own_seed(client, trained_run):
    """n > 1 answers n choices, index i sampled with seed + i: the same text a single request with
    that seed gets; streamed or not."""
    kw = dict(model=trained_run.name, max_tokens=8, temperature=1.0, seed=11)
    r = client.completions.create(prompt="The cat", n=3, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    singles = [client.completions.create(prompt="The cat", **{**kw, "seed": 11 + i}).choices[0].text
               for i in range(3)]
    assert [c.text for c in r.choices] == singles
    msgs = [{"role": "user", "content": "Tell me about the mat."}]
    chat = client.chat.completions.create(messages=msgs, n=2, **kw)
    assert [c.index for c in chat.choices] == [0, 1]
    one = [client.chat.completions.create(messages=msgs, **{**kw, "seed": 11 + i}).choices[0].message.content
           for i in range(2)]
    assert [c.message.content for c in chat.choices] == one
    pieces = ["", ""]
    for chunk in client.chat.completions.create(messages=msgs, n=2, stream=True, **kw):
        for c in chunk.choices:
            pieces[c.index] += c.delta.content or ""
    assert pieces == one
    streamed = ["", "", ""]
    for chunk in client.completions.create(prompt="The cat", n=3, stream=True, **kw):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == singles


def test_concurrent_requests_share_forward_passes(server, client, trained_run):
    before = httpx.get(server.url + "/health").json()["batching"]
    results: list[str] = []

    def one(i: int) -> None:
        s = client.completions.create(model=trained_run.name, prompt=f"The cat {i}", max_tokens=40, temperature=1.0, seed=i,
                                      stream=True, extra_body={"ignore_eos": True})
        results.append("".join(c.choices[0].text for c in s if c.choices))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 6
    after = httpx.get(server.url + "/health").json()["batching"]
    grouped = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    assert any(size > 1 and steps > 0 for size, steps in grouped.items()), after


def test_client_disconnect_frees_its_slot(server):
    body = {"prompt": "The", "max_tokens": 300, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=auth(), timeout=60) as r:
        next(r.iter_lines())
    # The scheduler drops the sequence at its next step: /health shows nothing active for long.
    sched = server.server.config.app.state.service.scheduler
    for _ in range(100):
        if sched.active == 0:
            break
        time.sleep(0.05)
    assert sched.active == 0


def sse_events(url: str) -> list[dict]:
    with httpx.stream("GET", url, headers=auth(), timeout=120) as r:
        return [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]


def test_studio_job_history_and_restart(server, data_dir, trained_run, gan_run):  # noqa: F811
    u = server.url
    r = httpx.post(u + "/v1/studio/jobs", json={"prompt": "A square of grass", "max_tokens": 20, "voice": "espeak",
                                                "mix": False}, headers=auth())
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    events = sse_events(f"{u}/v1/studio/jobs/{job_id}/events")
    assert events[-1]["event"] == "done", events[-1]
    done = [e["stage"] for e in events if e["event"] == "stage" and e["status"] in ("done", "skipped")]
    assert done == ["text", "illustration", "narration", "music", "bundle"]
    job = httpx.get(f"{u}/v1/studio/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "done" and job["manifest"]["parameters"]["illustration"]["label"]["label"] == "square"
    assert job["manifest"]["request"]["mix"] is False  # the job's fields reach the studio request
    z = httpx.get(f"{u}/v1/studio/jobs/{job_id}/bundle", headers=auth())
    assert "index.html" in zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert httpx.get(f"{u}/v1/studio/jobs/{job_id}/files/narration.wav", headers=auth()).content[:4] == b"RIFF"
    bad = httpx.post(u + "/v1/studio/jobs", json={"prompt": ""}, headers=auth())
    assert bad.status_code == 400

    # A second server on the same data folder (a restart) sees the same history.
    cfg = ServerConfig(text_run=trained_run, image_run=None, data_dir=data_dir, device="cpu", semantic_labels=False)
    with ServerThread(create_app(cfg)) as again:
        listed = httpx.get(again.url + "/v1/studio/jobs").json()["data"]
        assert job_id in [j["id"] for j in listed]
        assert sse_events(f"{again.url}/v1/studio/jobs/{job_id}/events")[-1]["event"] == "done"
        assert httpx.delete(f"{again.url}/v1/studio/jobs/{job_id}").json()["deleted"] is True
        assert httpx.get(f"{again.url}/v1/studio/jobs/{job_id}").status_code == 404


def test_killed_server_marks_its_job_failed(trained_run, tmp_path):
    """SIGKILL `genlab serve` while a job runs: the database stays sound and the job shows failed."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from genlab.studio.history import INTERRUPTED, History

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", "--text-run", str(trained_run), "--port",
                             str(port), "--data-dir", str(data), "--device", "cpu", "--max-tokens-limit", "5000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        # A long job (thousands of tokens): it is surely running when the kill lands.
        job_id = httpx.post(url + "/v1/studio/jobs", json={"prompt": "The cat", "max_tokens": 5000,
                                                           "narrate": False}).json()["id"]
        for _ in range(300):
            if httpx.get(f"{url}/v1/studio/jobs/{job_id}").json()["status"] == "running":
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    history = History(data)  # what a restarted server does first
    job = history.get(job_id)
    assert job["status"] == "failed" and job["error"] == INTERRUPTED
    import sqlite3

    with sqlite3.connect(data / "history.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
