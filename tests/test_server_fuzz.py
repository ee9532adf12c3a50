"""Property-based fuzzing of `genlab serve` from its own OpenAPI schema (schemathesis + hypothesis),
against a real uvicorn server on 127.0.0.1: for every operation, valid and invalid requests, no
answer is a 5xx, and every 4xx is an OpenAI-style JSON error. Plus regression tests for the 5xx
bugs the fuzzing found."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from genlab.serve import ServerConfig, ServerThread, create_app

from .test_studio_backends import image_run, lm_run  # noqa: F401  (fixtures)

KEY = "fuzz-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
# Every operation the schema has; a new endpoint must be added here (and so gets fuzzed).
OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/v1/models"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/images/generations"),
    ("GET", "/v1/assets/{name}"),
    ("POST", "/v1/audio/speech"),
    ("POST", "/v1/audio/music"),
    ("POST", "/v1/studio/jobs"),
    ("GET", "/v1/studio/jobs"),
    ("GET", "/v1/studio/jobs/{job_id}"),
    ("GET", "/v1/studio/jobs/{job_id}/events"),
    ("GET", "/v1/studio/jobs/{job_id}/bundle"),
    ("GET", "/v1/studio/jobs/{job_id}/files/{asset}"),
    ("GET", "/v1/chat/info"),
    ("POST", "/v1/conversations"),
    ("GET", "/v1/conversations"),
    ("GET", "/v1/conversations/{conv_id}"),
    ("PATCH", "/v1/conversations/{conv_id}"),
    ("POST", "/v1/conversations/{conv_id}/messages"),
    ("DELETE", "/v1/conversations/{conv_id}"),
    ("DELETE", "/v1/studio/jobs/{job_id}"),  # last: it may delete the finished job the others read
]
EXAMPLES = 25  # per operation and generation mode: the whole file runs in about a minute on 2 cores


@pytest.fixture(scope="module")
def server(lm_run, image_run, tmp_path_factory):  # noqa: F811
    cfg = ServerConfig(text_run=lm_run, image_run=image_run, data_dir=tmp_path_factory.mktemp("fuzz-data"),
                       api_key=KEY, device="cpu", max_batch=4, max_tokens_limit=6, max_body_bytes=20_000,
                       semantic_labels=False, speech_backend="espeak")
    with ServerThread(create_app(cfg)) as srv:
        yield srv


@pytest.fixture(scope="module")
def schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json", headers=HEADERS)


@pytest.fixture(scope="module")
def done_job(server) -> str:
    """A finished job, so the job endpoints are also fuzzed with an id that exists."""
    r = httpx.post(server.url + "/v1/studio/jobs", json={"prompt": "A square", "max_tokens": 4, "narrate": False,
                                                         "candidates": 1}, headers=HEADERS)
    job_id = r.json()["id"]
    with httpx.stream("GET", f"{server.url}/v1/studio/jobs/{job_id}/events", headers=HEADERS, timeout=120) as s:
        last = [ln for ln in s.iter_lines() if ln.startswith("data: ")][-1]
    assert json.loads(last[6:])["event"] == "done", last
    return job_id


def assert_client_or_success(resp: httpx.Response, what: str) -> None:
    assert resp.status_code < 500, f"{what} -> {resp.status_code}: {resp.text[:500]}"
    if 400 <= resp.status_code < 500:
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and err["message"], what
        assert err["type"].endswith("_error") and {"param", "code"} <= set(err), what
    if resp.headers.get("content-type", "").startswith("text/event-stream"):  # a stream's failure is a chunk
        assert 'data: {"error"' not in resp.text and '"event": "failed"' not in resp.text, f"{what}: {resp.text[-500:]}"


def test_schema_lists_every_operation(schema):
    ops = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert ops == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_errors(server, schema, done_job, method, path, mode):
    op = schema[path][method]
    if mode is GenerationMode.NEGATIVE and not (op.body or op.query):
        pytest.skip("only string path parameters: every value is valid")

    # A fixed seed (derandomize) keeps runs reproducible; no shrinking, which could take minutes.
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode), use_real=st.booleans())
    def fuzz(case, use_real):
        if "job_id" in (case.path_parameters or {}) and use_real:
            case.path_parameters["job_id"] = done_job  # half the time a job that exists: past the 404
        with httpx.Client(base_url=server.url, timeout=120) as c:
            kwargs = case.as_transport_kwargs(base_url=server.url)
            resp = c.request(kwargs["method"], kwargs["url"], headers={**(kwargs.get("headers") or {}), **HEADERS},
                             params=kwargs.get("params"), content=_content(kwargs))
        assert_client_or_success(resp, f"{method} {case.formatted_path} {kwargs.get('json', kwargs.get('data'))!r}")

    fuzz()


def _content(kwargs: dict) -> bytes | None:
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    return data.encode() if isinstance(data, str) else data


# ---- regressions: 5xx the fuzzing found ---------------------------------------------------------------

def test_extreme_sampling_values_are_4xx_or_greedy(server):
    """A repetition penalty of 5e-324 (or a temperature of 5e-324) overflowed the scaled logits to inf
    and the sampler failed on NaN probabilities: a 500. Seeds past int64 crashed torch's generator."""
    u, chat = server.url, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    r = httpx.post(u + "/v1/chat/completions", json={**chat, "repetition_penalty": 5e-324}, headers=HEADERS)
    assert r.status_code == 400 and r.json()["error"]["param"] == "repetition_penalty"
    greedy = httpx.post(u + "/v1/completions", json={"prompt": "The", "max_tokens": 5, "temperature": 0},
                        headers=HEADERS)
    tiny = httpx.post(u + "/v1/completions", json={"prompt": "The", "max_tokens": 5, "temperature": 5e-324,
                                                   "repetition_penalty": 0.01}, headers=HEADERS)
    assert tiny.status_code == 200, tiny.text
    plain = httpx.post(u + "/v1/completions", json={"prompt": "The", "max_tokens": 5, "temperature": 5e-324},
                       headers=HEADERS)
    assert plain.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]  # its limit: greedy
    for path, body in (("/v1/completions", {"prompt": "x", "max_tokens": 2}), ("/v1/chat/completions", chat),
                       ("/v1/images/generations", {"prompt": "x"}), ("/v1/studio/jobs", {"prompt": "x"})):
        r = httpx.post(u + path, json={**body, "seed": 2**64}, headers=HEADERS)
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed", (path, r.text)
    r = httpx.post(u + "/v1/completions", json={"prompt": "x", "max_tokens": 2, "seed": 2**63 - 1, "n": 8},
                   headers=HEADERS)
    assert r.status_code == 200, r.text  # the largest seed, plus a choice index each, still works
