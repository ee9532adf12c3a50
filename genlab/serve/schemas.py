"""Request bodies: pydantic models, so FastAPI validates them and the OpenAPI schema describes them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Seeds are int64, as OpenAI's are (torch generators take nothing wider).
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs (OpenAI's limit)
MAX_COMPLETION_LOGPROBS = 5  # the legacy completions API's logprobs
# Sampling at a temperature this close to 0 overflows the scaled logits (inf, then NaN
# probabilities); its limit is greedy decoding, which is what such a request gets.
MIN_TEMPERATURE = 1e-3


def sampling_temperature(t: float) -> float:
    return 0.0 if t < MIN_TEMPERATURE else t


class _Body(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send options a small server may not use.
    model_config = ConfigDict(extra="ignore")


class _Strict(BaseModel):
    # The OpenAI text API: a field this server does not know is a 400 that names it, never ignored
    # (a request for tools or audio must not get a plain-text answer as if it had been honoured).
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted: genlab never pads chunks


class JsonSchemaSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    # "schema" would shadow a BaseModel attribute; the JSON field is still "schema".
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # accepted: the grammar is always enforced (strict or not)


class ResponseFormat(_Strict):
    """text, json_object (any JSON object) or json_schema (a value valid against the schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only with it")
        return self


class SamplingBody(_Strict):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=1)] | None = None
    # Below 0.01, dividing logits by the penalty (and then by a small temperature) overflows float32.
    repetition_penalty: Annotated[float, Field(ge=0.01, le=10)] = 1.0
    n: Annotated[int, Field(ge=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    seed: Seed | None = None
    ignore_eos: bool = False  # as in vLLM: keep going past end-of-text (benchmarks, fixed lengths)
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None  # token id -> bias
    response_format: ResponseFormat | None = None  # also on completions, as in vLLM
    # genlab's own: None = the server's setting (marked when started with --watermark KEY); false = not
    # marked; true = marked (a 400 on a server without a key). genlab detect finds the mark.
    watermark: bool | None = None
    # Metadata the official client may send; it changes nothing here.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _at_most_four(cls, v: object) -> object:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise PydanticCustomError("too_many_stop", "at most {limit} stop sequences are allowed; got {n}",
                                      {"limit": MAX_STOP, "n": len(v)})
        return v

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionBody(SamplingBody):
    prompt: Annotated[str, Field(max_length=100_000)] | Annotated[list[str], Field(min_length=1, max_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    # Accepted only where they change nothing (the route says why otherwise).
    echo: bool = False
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_text_prompt(cls, v: object) -> object:
        if isinstance(v, list) and v and all(isinstance(x, int) for x in v):
            raise PydanticCustomError("token_prompt", "token-id prompts are not supported; send the prompt as text", {})
        if isinstance(v, list) and len(v) > 1:
            raise PydanticCustomError("many_prompts", "one prompt per request (got {n}); send each as its own request",
                                      {"n": len(v)})
        return v


class TextPart(_Strict):
    type: Literal["text"]  # the served models read text only: an image or audio part is a 400
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None  # accepted; chat templates here have no place for it
    # An assistant message passed back as the client got it may carry these, empty.
    refusal: str | None = None
    tool_calls: list[Any] | None = None
    function_call: Any | None = None
    audio: Any | None = None
    annotations: list[Any] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, v: object) -> object:
        if isinstance(v, list):
            for part in v:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise PydanticCustomError("content_part", "only text content parts are supported here "
                                              "(got '{kind}')", {"kind": str(kind)})
        return v


class ChatBody(SamplingBody):
    messages: Annotated[list[Message], Field(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    # Accepted only where they change nothing (the route says why otherwise).
    tools: list[Any] | None = None
    tool_choice: Any | None = None
    parallel_tool_calls: bool | None = None  # harmless: with no tools there are no calls
    functions: list[Any] | None = None
    function_call: Any | None = None
    modalities: list[str] | None = None


class ImageBody(_Body):
    prompt: Annotated[str, Field(min_length=1, max_length=4000)]
    model: str | None = None
    n: Annotated[int, Field(ge=1)] = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: Seed | None = None


class SpeechBody(_Body):
    input: Annotated[str, Field(min_length=1, max_length=4096)]
    model: str | None = None
    voice: str = "joe"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    response_format: str = "wav"


class MusicBody(_Body):
    """``POST /v1/audio/music``: a short four-part piece from the server's music run."""

    model: str | None = None
    bars: Annotated[int, Field(ge=1, le=32)] = 8
    key: Annotated[str, Field(max_length=40)] | None = None  # "D major", "F# minor"; None: the model's choice
    seed: Seed = 0
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    format: Literal["mid", "wav"] = "wav"


class JobBody(_Body):
    prompt: Annotated[str, Field(min_length=1, max_length=2000)]
    max_tokens: Annotated[int, Field(ge=1)] = 200
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.8
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    seed: Seed = 0
    candidates: Annotated[int, Field(ge=1, le=16)] = 4
    narrate: bool = True
    voice: str = "joe"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    music: bool = True  # with the server's music run: a piece in the bundle
    music_bars: Annotated[int, Field(ge=1, le=32)] = 8
    music_key: Annotated[str, Field(max_length=40)] | None = None
    mix: bool = True  # with narration and music: soundtrack.wav, the music ducked under the narration


class ChatSettings(_Body):
    """A conversation's sampling settings, as the chat view sends them with each turn."""

    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_tokens: Annotated[int, Field(ge=1)] = 256
    seed: Seed | None = None  # None: a new random reply each time


SystemPrompt = Annotated[str, Field(max_length=20_000)]


class ConversationBody(_Body):
    system: SystemPrompt = ""
    settings: ChatSettings = Field(default_factory=ChatSettings)


class ConversationPatch(_Body):
    system: SystemPrompt | None = None
    settings: ChatSettings | None = None


class ConversationMessage(_Body):
    # The system prompt is the conversation's own field, so a stored turn is the user's or the model's.
    role: Literal["user", "assistant"]
    content: Annotated[str, Field(max_length=100_000)]  # an empty reply is a real outcome, kept as such
