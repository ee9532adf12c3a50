"""Chat templates: the Jinja templates instruct models ship (tokenizer_config.json, GGUF metadata)
turn a list of messages into the prompt text the model was tuned on."""

from __future__ import annotations

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
