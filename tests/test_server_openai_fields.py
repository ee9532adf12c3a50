"""The OpenAI text API's fields beyond the basics, through the official openai client on a real
server (127.0.0.1, free port) with the session's tiny model: logprobs in chat's and the legacy
completions format (streamed and not), response_format json_schema / json_object constrained by a
grammar, logit_bias, n choices with seeds, four stop strings, include_usage's last chunk, what
/v1/models lists, and a 400 naming the field for every value this server does not support.
Unit tests of the grammar glue (genlab.generate.constrained) and the sampler run without a server."""

from __future__ import annotations

import functools
import json
import math

import httpx
import openai
import pytest
import torch
from tokenizers import Tokenizer

from genlab.generate.constrained import Grammar, GrammarError, Vocabulary
from genlab.generate.text import SamplingOptions, TokenSampler, load_lm
from genlab.serve import ServerConfig, ServerThread, create_app

SCHEMA = {  # a finite language: every output ends within a bounded number of tokens
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "ok", "color", "tags"],
    "additionalProperties": False,
}
MSGS = [{"role": "user", "content": "Tell me about the cat."}]
EOS_OFF = {"ignore_eos": True}  # a fixed number of tokens, whatever the tiny model's weights
EOT = b"<|endoftext|>"  # listed in logprobs when ignore_eos keeps it; the text leaves it out


def check_schema(value: object, schema: dict = SCHEMA) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # a dev dependency (through schemathesis)
    jsonschema_rs.validate(schema, value)


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    cfg = ServerConfig(text_run=trained_run, image_run=None, data_dir=tmp_path_factory.mktemp("fields-data"),
                       device="cpu", max_tokens_limit=300, semantic_labels=False, speech_backend="espeak")
    with ServerThread(create_app(cfg)) as srv:
        yield srv


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture()
def chat(client, trained_run):
    return functools.partial(client.chat.completions.create, model=trained_run.name)


@pytest.fixture()
def complete(client, trained_run):
    return functools.partial(client.completions.create, model=trained_run.name)


@pytest.fixture(scope="module")
def tok(trained_run) -> Tokenizer:
    return Tokenizer.from_file(str(trained_run / "tokenizer.json"))


# ---- /v1/models ----

def test_models_lists_what_is_loaded(client, trained_run, tmp_path, monkeypatch):
    from genlab.generate.speech import can_speak
    from genlab.serve import state

    speech = {"genlab-tts"} if can_speak("espeak") else set()
    assert {m.id for m in client.models.list()} == {trained_run.name} | speech  # no image run here
    monkeypatch.setattr(state, "can_speak", lambda backend="auto": False)
    svc = state.Service(ServerConfig(text_run=None, image_run=None, data_dir=tmp_path, device="cpu"))
    try:
        assert svc.served() == {"text": None, "image": None, "speech": None, "music": None}
    finally:
        svc.close()


# ---- logprobs ----

def assert_chat_entries(entries, k: int, greedy: bool) -> None:
    assert entries
    for e in entries:
        assert math.isfinite(e.logprob) and e.logprob <= 0
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == k and tops == sorted(tops, reverse=True)
        assert all(math.isfinite(t) and t <= 0 for t in tops)
        if greedy:  # the chosen token is the most likely one
            assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)


def test_chat_logprobs_streamed_and_not(chat):
    r = chat(messages=MSGS, max_tokens=12, temperature=0, logprobs=True, top_logprobs=5, extra_body=EOS_OFF)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert_chat_entries(entries, 5, greedy=True)
    joined = b"".join(bytes(e.bytes) for e in entries).replace(EOT, b"")
    assert joined.decode("utf-8", "replace") == r.choices[0].message.content

    stream = chat(messages=MSGS, max_tokens=12, temperature=0, logprobs=True, top_logprobs=5, stream=True,
                  extra_body=EOS_OFF)
    streamed, text = [], ""
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs and c.logprobs.content:
                streamed += c.logprobs.content
    assert text == r.choices[0].message.content
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]

    plain = chat(messages=MSGS, max_tokens=4, temperature=0, logprobs=True)
    assert_chat_entries(plain.choices[0].logprobs.content, 0, greedy=False)  # top_logprobs defaults to 0
    assert chat(messages=MSGS, max_tokens=4).choices[0].logprobs is None


def test_completion_logprobs_legacy_format(complete, server):
    r = complete(prompt="The cat", max_tokens=10, temperature=0.8, seed=3, logprobs=3, extra_body=EOS_OFF)
    c = r.choices[0]
    lp = c.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) == r.usage.completion_tokens == 10
    raw = [token_bytes(t) for t in lp.tokens]
    assert b"".join(raw).replace(EOT, b"").decode("utf-8", "replace") == c.text
    assert lp.text_offset == [len(b"".join(raw[:i]).decode("utf-8", "ignore")) for i in range(len(raw))]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert math.isfinite(logprob) and logprob <= 0
        assert top[token] == pytest.approx(logprob) and 1 <= len(top) <= 4  # the 3 best and the sampled one

    body = {"prompt": "The cat", "max_tokens": 10, "temperature": 0.8, "seed": 3, "logprobs": 3, "stream": True,
            **EOS_OFF}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as s:
        chunks = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
    tokens = [t for ch in chunks if ch["choices"][0]["logprobs"] for t in ch["choices"][0]["logprobs"]["tokens"]]
    offsets = [o for ch in chunks if ch["choices"][0]["logprobs"] for o in ch["choices"][0]["logprobs"]["text_offset"]]
    assert tokens == lp.tokens and offsets == lp.text_offset  # seeded: the same tokens either way


def token_bytes(token: str) -> bytes:
    """A legacy-format token: its text, or "bytes:\\xNN..." for part of a UTF-8 character."""
    if token.startswith("bytes:"):
        return bytes(int(h, 16) for h in token[len("bytes:"):].split("\\x")[1:])
    return token.encode("utf-8")


# ---- response_format ----

def test_json_schema_responses_parse_and_validate(chat, complete):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    r = chat(messages=MSGS, max_tokens=200, temperature=1.0, seed=4, n=3,
                                       response_format=fmt)
    for c in r.choices:
        assert c.finish_reason == "stop"  # the grammar was complete, so end-of-text was forced
        check_schema(json.loads(c.message.content))
    stream = chat(messages=MSGS, max_tokens=200, temperature=0, response_format=fmt,
                                            stream=True)
    text = "".join(c.delta.content or "" for chunk in stream for c in chunk.choices)
    check_schema(json.loads(text))
    # The completions endpoint takes it too (as vLLM's does).
    done = complete(prompt="The dog", max_tokens=200, temperature=0.7, seed=1,
                                     extra_body={"response_format": fmt})
    check_schema(json.loads(done.choices[0].text))


def test_json_object_with_logit_bias(chat, tok):
    # An untrained-for-JSON model may write one endless string: a bias towards closing it and the
    # object makes every answer end, and the grammar makes every answer a JSON object.
    quote, close = tok.encode('"').ids[0], tok.encode("}").ids[0]
    r = chat(messages=MSGS, max_tokens=60, temperature=0,
                                       logit_bias={str(quote): 100, str(close): 100},
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    text = chat(messages=MSGS, max_tokens=5, temperature=0,
                                          response_format={"type": "text"}).choices[0].message.content
    plain = chat(messages=MSGS, max_tokens=5, temperature=0).choices[0].message.content
    assert text == plain


# ---- n, seeds, stop, usage ----

def test_n_choices_are_reproducible_and_choice_i_uses_seed_plus_i(complete):
    kw = {"prompt": "The bird", "max_tokens": 12, "temperature": 1.0, "seed": 11}
    first = [c.text for c in complete(n=3, **kw).choices]
    assert [c.text for c in complete(n=3, **kw).choices] == first
    alone = complete(prompt="The bird", max_tokens=12, temperature=1.0, seed=13)
    assert alone.choices[0].text == first[2]


def test_four_stop_strings_and_a_fifth_refused(complete):
    free = complete(prompt="The cat", max_tokens=40, temperature=0, extra_body=EOS_OFF).choices[0].text
    stops = ["zzz", "qqq", "xxx", free[5:8]]  # the last one is in the free text, after its start
    r = complete(prompt="The cat", max_tokens=40, temperature=0, stop=stops, extra_body=EOS_OFF)
    assert r.choices[0].finish_reason == "stop" and free.startswith(r.choices[0].text)
    assert not any(s in r.choices[0].text for s in stops)
    with pytest.raises(openai.BadRequestError) as e:
        complete(prompt="The cat", max_tokens=4, stop=stops + ["yyy"])
    assert e.value.param == "stop"


def test_include_usage_last_chunk(chat, complete):
    stream = complete(prompt="The cat", max_tokens=8, temperature=0, n=2, stream=True,
                      stream_options={"include_usage": True}, extra_body=EOS_OFF)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks[:-1]) and all(c.choices for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == 16  # two choices of 8 tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + 16
    without = list(chat(messages=MSGS, max_tokens=4, temperature=0, stream=True))
    assert all(c.usage is None for c in without)


def test_penalties_and_metadata_fields_are_accepted(chat):
    r = chat(messages=MSGS, max_tokens=6, temperature=0, presence_penalty=1.5,
                                       frequency_penalty=1.0, user="u1", metadata={"k": "v"}, store=False,
                                       parallel_tool_calls=False, tool_choice="none", modalities=["text"])
    assert r.choices[0].finish_reason in ("length", "stop")
    # A message passed back as the client got it (empty tool_calls, refusal None) is accepted.
    back = r.choices[0].message.model_dump()
    again = chat(messages=[*MSGS, back, {"role": "user", "content": "More."}],
                                           max_tokens=2)
    assert again.choices[0].message.role == "assistant"


# ---- what is refused ----

BAD_CHAT = [
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}}},
     "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"logit_bias": {"the": 1}}, "logit_bias"),
    ({"logit_bias": {"1": 101}}, "logit_bias.1"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"some_new_field": 1}, "some_new_field"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]}, "messages.0.tool_calls"),
]

BAD_COMPLETION = [
    ({"logprobs": 6}, "logprobs"),
    ({"echo": True}, "echo"),
    ({"suffix": "end"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_CHAT)
def test_unsupported_chat_values_are_400_naming_the_field(server, extra, param):
    body = {"messages": MSGS, "max_tokens": 2, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert param.split(".")[0] in err["message"]


@pytest.mark.parametrize(("extra", "param"), BAD_COMPLETION)
def test_unsupported_completion_values_are_400_naming_the_field(server, extra, param):
    body = {"prompt": "The", "max_tokens": 2, **extra}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and param in r.json()["error"]["message"]


def test_the_client_sees_400_for_tools(chat):
    with pytest.raises(openai.BadRequestError) as e:
        chat(messages=MSGS, max_tokens=2, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert e.value.param == "tools" and "tool calling" in e.value.message


# ---- without a server ----

def test_grammar_masks_and_forces_end_of_text(tok):
    vocab = Vocabulary(tok, tok.get_vocab_size(), tok.token_to_id("<|endoftext|>"))
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"],
              "additionalProperties": False}
    c = Grammar.json_schema(vocab, schema).constraint()
    first = c.allowed()
    assert first.shape == (tok.get_vocab_size(),) and not first[vocab.eot]
    assert all(tok.decode([t]).startswith("{") for t in first.nonzero().flatten().tolist())
    for t in tok.encode('{"a":"y"}').ids:
        assert c.allowed()[t]
        c.advance(t)
    assert c.finished and c.allowed().nonzero().flatten().tolist() == [vocab.eot]
    with pytest.raises(GrammarError, match="schema"):
        Grammar.json_schema(vocab, {"type": "nonsense"})

    class LlamaCppLikeTokenizer:  # no tokenizer.json behind it
        pass

    with pytest.raises(GrammarError, match="tokenizers"):
        Vocabulary(LlamaCppLikeTokenizer(), 300, 0)


def test_sampler_on_random_logits_writes_schema_valid_json(tok):
    vocab_size, eot = tok.get_vocab_size(), tok.token_to_id("<|endoftext|>")
    grammar = Grammar.json_schema(Vocabulary(tok, vocab_size, eot), SCHEMA)
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        sampler = TokenSampler(SamplingOptions(temperature=1.0, grammar=grammar, logprobs=2), gen, vocab_size)
        ids: list[int] = []
        while (t := sampler.sample(torch.randn(vocab_size, generator=gen) * 3, None)) != eot:
            sampler.keep()
            ids.append(t)
            assert len(ids) < 400
        check_schema(json.loads(tok.decode(ids)))
        assert [e.token for e in sampler.kept] == ids and all(len(e.top) == 2 for e in sampler.kept)


def test_sampler_penalties_and_bias():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([1.0, 1.0, 0.0])
    s = TokenSampler(SamplingOptions(temperature=0, frequency_penalty=0.5), gen, 3)
    assert [s.sample(logits, None) for _ in range(3)] == [0, 1, 0]  # each pick is penalised once it is used
    s = TokenSampler(SamplingOptions(temperature=0, presence_penalty=2.0), gen, 3)
    assert [s.sample(logits, None) for _ in range(3)] == [0, 1, 2]
    s = TokenSampler(SamplingOptions(temperature=0, logit_bias={2: 5.0}, logprobs=1), gen, 3)
    assert s.sample(logits, None) == 2
    assert s.last is not None and s.last.logprob == pytest.approx(float(torch.log_softmax(logits, -1)[2]))


def test_generate_with_json_schema_in_python(trained_run):
    lm = load_lm(trained_run, device="cpu")
    out = lm.generate("The cat", json_schema=SCHEMA, max_tokens=200, temperature=0.9, seed=2)
    check_schema(json.loads(out))
    assert lm.info.finish_reason == "stop"
