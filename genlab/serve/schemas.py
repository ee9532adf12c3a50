"""Request bodies: pydantic models, so FastAPI validates them and the OpenAPI schema describes them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

# Seeds are int64, as OpenAI's are (torch generators take nothing wider).
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
MAX_STOP = 4  # OpenAI's limit on stop sequences
# Sampling at a temperature this close to 0 overflows the scaled logits (inf, then NaN
# probabilities); its limit is greedy decoding, which is what such a request gets.
MIN_TEMPERATURE = 1e-3


def sampling_temperature(t: float) -> float:
    return 0.0 if t < MIN_TEMPERATURE else t


class _Body(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send options a small server may not use.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingBody(_Body):
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


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]


class ChatBody(SamplingBody):
    messages: Annotated[list[Message], Field(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None


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
