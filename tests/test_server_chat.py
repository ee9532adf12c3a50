"""The chat view's conversations on a real server (127.0.0.1, free port): the /v1/conversations
endpoints (create, append, list, get, update, delete; 404s, 400s, the API key), conversations that
survive a restart in a database made before the tables existed; and the page's chat view in
headless Chromium with a tiny model that has a chat template: a streamed reply, a second turn that
sends the whole conversation, and the conversation reopened from the list after a reload."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from genlab.serve import ServerConfig, ServerThread, create_app

from .chat_helpers import chat_run, tiny_gguf  # noqa: F401  (fixtures)
from .test_server_page import CHROMIUM, served_page

KEY = "chat-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MISSING = "0" * 32


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    cfg = ServerConfig(text_run=trained_run, image_run=None, data_dir=tmp_path_factory.mktemp("chat-data"),
                       api_key=KEY, device="cpu", max_tokens_limit=300, semantic_labels=False,
                       speech_backend="espeak")
    with ServerThread(create_app(cfg)) as srv:
        yield srv


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_conversation_endpoints_keep_turns_in_order(http):
    r = http.post("/v1/conversations", json={"system": "Be brief.",
                                             "settings": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 40,
                                                          "seed": 7}})
    assert r.status_code == 200, r.text
    conv = r.json()
    assert len(conv["id"]) == 32 and conv["object"] == "conversation" and conv["title"] == ""
    assert conv["system"] == "Be brief." and conv["messages"] == []
    assert conv["settings"] == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 40, "seed": 7}
    cid = conv["id"]

    first = "  Where   does the old dog\nrun when rain falls softly over the quiet town every single morning?"
    turns = [("user", first), ("assistant", "Into the green hills."), ("user", "And the bird?"), ("assistant", "")]
    for i, (role, content) in enumerate(turns):
        r = http.post(f"/v1/conversations/{cid}/messages", json={"role": role, "content": content})
        assert r.status_code == 200, r.text
        assert r.json() | {"created": 0} == {"conversation_id": cid, "ordinal": i, "role": role, "content": content,
                                              "created": 0}
    got = http.get(f"/v1/conversations/{cid}").json()
    assert [(m["ordinal"], m["role"], m["content"]) for m in got["messages"]] == \
        [(i, role, content) for i, (role, content) in enumerate(turns)]
    # The title is the first user message on one line, shortened; later turns leave it alone.
    assert got["title"].startswith("Where does the old dog run when rain") and "\n" not in got["title"]
    assert len(got["title"]) <= 60 and got["title"].endswith("over the\u2026")
    assert got["updated"] >= got["created"]

    other = http.post("/v1/conversations", json={}).json()  # defaults for everything
    assert other["system"] == "" and other["settings"] == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256,
                                                           "seed": None}
    listed = http.get("/v1/conversations").json()["data"]
    assert [c["id"] for c in listed[:2]] == [other["id"], cid]  # the most recently used first
    assert {c["id"]: c["message_count"] for c in listed}[cid] == 4 and "messages" not in listed[0]
    time.sleep(0.01)
    http.post(f"/v1/conversations/{cid}/messages", json={"role": "user", "content": "More?"})
    assert http.get("/v1/conversations").json()["data"][0]["id"] == cid
    assert [c["id"] for c in http.get("/v1/conversations", params={"limit": 1}).json()["data"]] == [cid]

    r = http.patch(f"/v1/conversations/{cid}", json={"system": "Be very brief.", "settings": {"temperature": 0}})
    assert r.status_code == 200, r.text
    assert r.json()["system"] == "Be very brief." and r.json()["settings"]["temperature"] == 0
    assert len(r.json()["messages"]) == 5

    # Appends that race still get one ordinal each.
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: http.post(f"/v1/conversations/{other['id']}/messages",
                                                  json={"role": "user", "content": f"m{i}"}).status_code, range(16)))
    assert codes == [200] * 16
    ordinals = [m["ordinal"] for m in http.get(f"/v1/conversations/{other['id']}").json()["messages"]]
    assert ordinals == list(range(16))

    assert http.delete(f"/v1/conversations/{cid}").json() == {"id": cid, "deleted": True}
    assert error_of(http.get(f"/v1/conversations/{cid}"), 404)["type"] == "not_found_error"
    assert error_of(http.delete(f"/v1/conversations/{cid}"), 404)["message"] == f"no conversation '{cid}'"
    assert cid not in [c["id"] for c in http.get("/v1/conversations").json()["data"]]


def test_conversation_errors_are_json_4xx(http, server):
    cid = http.post("/v1/conversations", json={}).json()["id"]
    for bad in (MISSING, "not-an-id", "..%2F..%2Fhistory.sqlite3"):
        assert error_of(http.get(f"/v1/conversations/{bad}"), 404)["type"] == "not_found_error"
        error_of(http.post(f"/v1/conversations/{bad}/messages", json={"role": "user", "content": "x"}), 404)
        error_of(http.patch(f"/v1/conversations/{bad}", json={"system": "x"}), 404)
        error_of(http.delete(f"/v1/conversations/{bad}"), 404)

    msgs = f"/v1/conversations/{cid}/messages"
    assert error_of(http.post(msgs, json={"role": "system", "content": "x"}), 400)["param"] == "role"
    assert error_of(http.post(msgs, json={"role": "user"}), 400)["param"] == "content"
    assert error_of(http.post(msgs, json={"role": "user", "content": ["x"]}), 400)["param"] == "content"
    assert error_of(http.post(msgs, json={"role": "user", "content": "x" * 100_001}), 400)["param"] == "content"
    assert error_of(http.post(msgs, content=b"{not json", headers={"Content-Type": "application/json"}),
                    400)["message"] == "the request body is not valid JSON"
    assert error_of(http.post("/v1/conversations", json={"system": 3}), 400)["param"] == "system"
    assert error_of(http.post("/v1/conversations", json={"settings": {"temperature": 5}}),
                    400)["param"] == "settings.temperature"
    assert error_of(http.post("/v1/conversations", json={"settings": {"top_p": 0}}), 400)["param"] == "settings.top_p"
    assert error_of(http.post("/v1/conversations", json={"settings": {"seed": 2**63}}), 400)["param"] == "settings.seed"
    assert error_of(http.patch(f"/v1/conversations/{cid}", json={"settings": {"max_tokens": 0}}),
                    400)["param"] == "settings.max_tokens"
    over = error_of(http.post("/v1/conversations", json={"settings": {"max_tokens": 301}}), 400)
    assert over["param"] == "max_tokens" and "at most 300" in over["message"]
    error_of(http.get("/v1/conversations", params={"limit": 0}), 400)
    assert http.get(f"/v1/conversations/{cid}").json()["messages"] == []  # nothing bad was stored

    # The same key guard as every other endpoint.
    for method, path in (("GET", "/v1/conversations"), ("POST", "/v1/conversations"), ("GET", f"/v1/conversations/{cid}"),
                         ("POST", f"/v1/conversations/{cid}/messages"), ("PATCH", f"/v1/conversations/{cid}"),
                         ("DELETE", f"/v1/conversations/{cid}"), ("GET", "/v1/chat/info")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, server.url + path, headers=headers, json={"role": "user", "content": "x"})
            assert error_of(r, 401)["code"] == "invalid_api_key"
    assert http.get(f"/v1/conversations/{cid}").status_code == 200


def test_chat_info_says_whether_the_model_has_a_chat_template(http, trained_run):
    # The session's tiny run has none: the chat endpoint sends it a plain transcript, and the page says so.
    assert http.get("/v1/chat/info").json() == {"model": trained_run.name, "chat_template": False, "context": 64}
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "the cat"}],
                                                "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


OLD_JOBS_TABLE = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, created REAL NOT NULL, updated REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')), prompt TEXT NOT NULL,
    params TEXT NOT NULL, title TEXT, error TEXT, manifest TEXT, bundle_dir TEXT, zip_path TEXT);
"""


def test_conversations_survive_a_restart_in_a_database_from_before_them(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "history.sqlite3") as db:  # a history written before conversations existed
        db.executescript(OLD_JOBS_TABLE)
        db.execute("INSERT INTO jobs (id, created, updated, status, prompt, params, error) "
                   "VALUES (?, 1, 1, 'failed', 'old prompt', ?, 'boom')", ("a" * 32, json.dumps({"prompt": "old prompt"})))
    db.close()
    cfg = ServerConfig(text_run=None, image_run=None, data_dir=data, device="cpu", speech_backend="espeak")
    with ServerThread(create_app(cfg)) as srv:
        assert [j["prompt"] for j in httpx.get(srv.url + "/v1/studio/jobs").json()["data"]] == ["old prompt"]
        cid = httpx.post(srv.url + "/v1/conversations", json={"system": "s"}).json()["id"]
        for role, content in (("user", "hello"), ("assistant", "hi")):
            httpx.post(f"{srv.url}/v1/conversations/{cid}/messages", json={"role": role, "content": content})
        assert httpx.get(srv.url + "/v1/chat/info").json() == {"model": None, "chat_template": False, "context": None}
    with ServerThread(create_app(cfg)) as srv:
        listed = httpx.get(srv.url + "/v1/conversations").json()["data"]
        assert [(c["id"], c["title"], c["message_count"]) for c in listed] == [(cid, "hello", 2)]
        conv = httpx.get(f"{srv.url}/v1/conversations/{cid}").json()
        assert conv["system"] == "s" and [m["content"] for m in conv["messages"]] == ["hello", "hi"]
        assert len(httpx.get(srv.url + "/v1/studio/jobs").json()["data"]) == 1


def wait_for_replies(page, n: int) -> None:
    """Until the n-th reply has finished streaming and the page is ready for the next turn."""
    page.wait_for_function(
        f"document.querySelectorAll('#transcript li.assistant:not(.streaming)').length === {n}"
        " && !document.getElementById('chat-send').disabled", timeout=60_000)


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed")
def test_chat_view_streams_replies_and_reopens_the_conversation(chat_run, tmp_path):  # noqa: F811
    cfg = ServerConfig(text_run=chat_run, image_run=None, data_dir=tmp_path / "data", api_key="k", device="cpu",
                       semantic_labels=False, speech_backend="espeak")
    with served_page(cfg, 1200, 900) as (srv, page, errors):
        sent: list[dict] = []
        page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
        page.goto(srv.url + "/")
        page.fill("#apikey", "k")
        page.click("#tab-chat")
        assert page.locator("#chat-view").is_visible() and not page.locator("#studio-view").is_visible()
        page.fill("#chat-system", "Be brief.")
        # Greedy decoding makes this tiny model write only newlines; a seed keeps sampling reproducible.
        page.fill("#chat-temperature", "0.7")
        page.fill("#chat-max-tokens", "12")
        page.fill("#chat-seed", "0")
        page.fill("#chat-input", "the cat")
        page.click("#chat-send")
        wait_for_replies(page, 1)
        first = page.locator("#transcript li.assistant").nth(0)
        assert first.inner_text().strip()
        assert int(first.get_attribute("data-chunks")) > 1  # it came in pieces, shown as they came
        assert page.locator("#chat-note").is_hidden()  # the model has a template: nothing to warn about

        page.fill("#chat-input", "a dog ran")
        page.press("#chat-input", "Enter")
        wait_for_replies(page, 2)
        assert not page.locator("#chat-error").is_visible()

        stored = httpx.get(srv.url + "/v1/conversations", headers={"Authorization": "Bearer k"}).json()["data"]
        assert len(stored) == 1 and stored[0]["title"] == "the cat" and stored[0]["system"] == "Be brief."
        assert stored[0]["settings"] == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 12, "seed": 0}
        conv = httpx.get(f"{srv.url}/v1/conversations/{stored[0]['id']}", headers={"Authorization": "Bearer k"}).json()
        turns = [(m["role"], m["content"]) for m in conv["messages"]]
        assert [r for r, _ in turns] == ["user", "assistant", "user", "assistant"]
        assert turns[0][1] == "the cat" and turns[2][1] == "a dog ran" and turns[1][1].strip() and turns[3][1].strip()
        # Each turn streamed the whole conversation so far, the system prompt first.
        assert [b["stream"] for b in sent] == [True, True]
        assert sent[0]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat"}]
        assert sent[1]["messages"] == ([{"role": "system", "content": "Be brief."}]
                                       + [{"role": r, "content": c} for r, c in turns[:3]])
        assert (sent[1]["temperature"], sent[1]["max_tokens"], sent[1]["seed"]) == (0.7, 12, 0)

        page.reload()  # the key comes back from localStorage, the view from the URL's #chat
        page.wait_for_selector("#conversations li", timeout=10_000)
        assert page.locator("#transcript li").count() == 0
        page.fill("#chat-system", "")
        page.click("#conversations li")
        page.wait_for_function("document.querySelectorAll('#transcript li').length === 4", timeout=10_000)
        shown = [(li.get_attribute("class"), li.inner_text()) for li in page.locator("#transcript li").all()]
        assert [(r, c.strip()) for r, c in shown] == [(r, c.strip()) for r, c in turns]
        assert page.input_value("#chat-system") == "Be brief." and page.input_value("#chat-temperature") == "0.7"
        assert page.input_value("#chat-seed") == "0"
        assert "open" in page.locator("#conversations li").first.get_attribute("class")
        page.screenshot(path=str(tmp_path / "chat-page.png"), full_page=True)
        assert (tmp_path / "chat-page.png").stat().st_size > 10_000

        page.click("#chat-new")
        assert page.locator("#transcript li").count() == 0
        assert not errors, errors
