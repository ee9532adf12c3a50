"""Constrained decoding: JSON Schema (and JSON-object) grammars through llguidance.

genlab writes no grammar engine. llguidance (the Rust library behind Guidance, also used by vLLM and
llama.cpp) compiles a JSON Schema into a grammar and, for one sequence, says which tokens of the
model's vocabulary may come next. The vocabulary is the run's Hugging Face ``tokenizers`` tokenizer
(tokenizer.json), so a grammar knows every token's exact bytes, and end-of-text is allowed exactly
when the grammar is complete (and forced once nothing else can follow).

Three objects, from the model down to one sequence:

    Vocabulary   llguidance's view of one model's tokenizer (built once per model)
    Grammar      a compiled, validated grammar for that vocabulary (one per request: n choices share it)
    Constraint   one sequence's parser state: ``allowed()`` is the token mask, ``advance(tok)`` moves on

The sampler in genlab.generate.text masks the logits with ``allowed()`` before it picks a token.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from genlab.errors import ConfigError


class GrammarError(ConfigError):
    """A schema that cannot be compiled, or a model whose tokenizer llguidance cannot read."""


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise GrammarError("constrained decoding needs llguidance (pip install llguidance, or "
                           "pip install -e '.[studio]')") from None
    return llguidance


class Vocabulary:
    """A model's tokens as llguidance sees them: built from its tokenizer.json text."""

    def __init__(self, tokenizer: Any, vocab_size: int, eot: int | None) -> None:
        if not hasattr(tokenizer, "to_str"):
            raise GrammarError("constrained decoding needs a Hugging Face tokenizers tokenizer (tokenizer.json); "
                               "this model's runtime brings its own tokenizer")
        if eot is None:
            raise GrammarError("constrained decoding needs an end-of-text token, and this tokenizer has none")
        llg = _llguidance()
        self.vocab_size = vocab_size
        self.eot = eot
        try:
            self.llg = llg.LLTokenizer(tokenizer.to_str(), n_vocab=vocab_size, eos_token=eot)
        except (ValueError, TypeError, RuntimeError) as e:
            raise GrammarError(f"the grammar library cannot read this tokenizer: {e}") from None

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes of one token (a byte-level BPE token can be part of a UTF-8 character)."""
        return self.llg.decode_bytes([token])


class Grammar:
    """A grammar compiled for one vocabulary and validated; ``constraint()`` starts a sequence on it."""

    def __init__(self, vocab: Vocabulary, grammar: str) -> None:
        llg = _llguidance()
        try:
            is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, vocab.llg)
        except (ValueError, TypeError, RuntimeError) as e:  # the library's own reasons, in one message
            is_error, messages = True, [str(e)]
        if is_error:
            raise GrammarError(f"the schema cannot be used for constrained decoding: {messages[0]}")
        self.vocab = vocab
        self._start = llg.LLMatcher(vocab.llg, grammar, log_level=0)  # never raises for grammar errors
        if self._start.is_error():
            raise GrammarError(f"the schema cannot be used for constrained decoding: {self._start.get_error()}")

    @classmethod
    def json_schema(cls, vocab: Vocabulary, schema: dict | bool) -> Grammar:
        """Output that is one JSON value valid against ``schema``, written compactly (no free
        whitespace: a small model given room for spaces may never stop)."""
        if not isinstance(schema, dict | bool):
            raise GrammarError(f"a JSON schema is an object or a boolean, not {type(schema).__name__}")
        try:
            grammar = _llguidance().LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults={"whitespace_flexible": False})
        except (ValueError, TypeError) as e:
            raise GrammarError(f"the schema cannot be used for constrained decoding: {e}") from None
        return cls(vocab, grammar)

    @classmethod
    def json_object(cls, vocab: Vocabulary) -> Grammar:
        """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
        return cls.json_schema(vocab, {"type": "object"})

    def constraint(self) -> Constraint:
        return Constraint(self._start.deep_copy(), self.vocab)


class Constraint:
    """One sequence's position in a grammar."""

    def __init__(self, matcher: Any, vocab: Vocabulary) -> None:
        self.matcher, self.vocab = matcher, vocab

    def allowed(self) -> torch.Tensor:
        """(vocab_size,) bool: the tokens that keep the output inside the grammar; end-of-text is
        among them when the output is complete, and the only one when nothing can follow."""
        if self.matcher.is_error():
            raise GrammarError(f"constrained decoding failed: {self.matcher.get_error()}")
        # One byte per token (0 = not allowed), so no bit unpacking is needed.
        return torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8) > 0

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(f"constrained decoding failed: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """True once the grammar is complete and allows nothing but end-of-text."""
        return self.matcher.is_stopped()
