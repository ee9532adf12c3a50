"""Chat templates: the Jinja templates instruct models ship (tokenizer_config.json, GGUF metadata)
turn a list of messages into the prompt text the model was tuned on."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

from genlab.errors import ConfigError


@cache
def _compiled(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):  # templates call it to refuse a conversation they cannot render
        raise TemplateError(message)

    # The conventions chat templates are written for: trimmed blocks, a sandbox (a template is
    # untrusted input), and raise_exception.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "") -> str:
    """The prompt for ``messages`` ([{"role": ..., "content": ...}]), ending where the assistant's
    reply begins when ``add_generation_prompt``."""
    from jinja2.exceptions import TemplateError

    try:
        return _compiled(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                          bos_token=bos_token, eos_token=eos_token)
    except TemplateError as e:
        raise ConfigError(f"the model's chat template cannot render this conversation: {e}") from None


# Models without a chat template get a plain transcript they can continue; generation stops where
# the model starts a new turn of its own.
TRANSCRIPT_STOP = ("\nUser:", "\nSystem:")


def transcript(messages: list[dict]) -> str:
    """The documented prompt for base models:

        {system text}            (each system/developer message, one paragraph each)

        User: {text}
        Assistant: {text}
        ...
        Assistant:
    """
    parts, turns = [], []
    for m in messages:
        text = str(m.get("content") or "").strip()
        if m.get("role") in ("system", "developer"):
            parts.append(text)
        else:
            turns.append(f"{'User' if m.get('role') == 'user' else 'Assistant'}: {text}")
    head = "\n\n".join(p for p in parts if p)
    return (head + "\n\n" if head else "") + "\n".join(turns + ["Assistant:"])


def chat_prompt(template: str | None, messages: list[dict]) -> tuple[str, tuple[str, ...]]:
    """The prompt for ``messages`` and the stop strings that end the reply: the model's own template
    (its end-of-turn token ends the reply), or the transcript for models that have none."""
    if template:
        return render_chat(template, messages), ()
    return transcript(messages), TRANSCRIPT_STOP


class Conversation:
    """A multi-turn chat with one model: the history is kept within the context, the oldest turns
    dropped first (``dropped`` counts them), the system prompt always kept."""

    def __init__(self, lm, system: str | None = None) -> None:
        self.lm = lm  # a genlab.generate.text.LanguageModel
        self.system = system
        self.turns: list[dict] = []
        self.dropped = 0

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def reset(self) -> None:
        self.turns, self.dropped = [], 0

    def _fit(self, reserve: int) -> None:
        """Drop the oldest exchanges until the prompt leaves ``reserve`` tokens for the reply."""
        budget = self.lm.config.context - reserve
        while len(self.turns) > 1 and len(self.lm.encode(self.lm.chat_prompt(self.messages())[0])) > budget:
            cut = 2 if len(self.turns) > 2 and self.turns[1]["role"] == "assistant" else 1
            self.turns = self.turns[cut:]
            self.dropped += cut

    def reply(self, text: str, **sampling) -> Iterator[str]:
        """Stream the assistant's answer to ``text``; the answer joins the history when it is done."""
        self.turns.append({"role": "user", "content": text})
        self._fit(min(int(sampling.get("max_tokens") or 256), self.lm.config.context // 2))
        pieces = []
        for piece in self.lm.stream_chat(self.messages(), **sampling):
            pieces.append(piece)
            yield piece
        self.turns.append({"role": "assistant", "content": "".join(pieces).strip()})
