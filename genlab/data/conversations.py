"""Chat fine-tuning data: JSONL conversations rendered with the base run's chat template, tokenized,
with a per-token mask on the assistant's replies (the only tokens that carry the loss).

Each non-blank line of a ``.jsonl`` file is one conversation:

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

A data set is either chat JSONL files or text corpora, never a mix. Every 10th conversation (at least
one) is held out for validation. Nothing is cached: rendering and tokenizing take seconds for
thousands of conversations, and are redone (and checked against the run's fingerprint) on --resume.

Finding the assistant's tokens, for any template (no generation tags needed): for assistant message i,
``P`` renders ``messages[:i]`` with the generation prompt (it ends where the reply begins, e.g. after
``<|im_start|>assistant\\n``) and ``F`` renders ``messages[:i + 1]`` without it. ``F[len(P):]`` is what
the model has to write for that reply; it is cut after the end-of-turn token when the template writes
one (ChatML's newline after ``<|im_end|>`` is the template's, never generated). The whole conversation
is then tokenized once, exactly as the model reads it, and a token is an assistant token when its
character offsets overlap such a span (a token straddling a boundary carries reply text, so it counts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from genlab import runs
from genlab.config import DataConfig
from genlab.data import corpus
from genlab.data import tokenizer as tokmod
from genlab.errors import ConfigError, DataError

FORMAT = "chat-v1"
ROLES = ("system", "user", "assistant")
SUFFIX = ".jsonl"


def is_chat(specs: list[str]) -> bool:
    """True for chat JSONL data (every spec ends in .jsonl), False for text corpora; a mix is refused."""
    chat = [s for s in specs if str(s).lower().endswith(SUFFIX)]
    if chat and len(chat) != len(specs):
        text = next(s for s in specs if not str(s).lower().endswith(SUFFIX))
        raise ConfigError(f"--data mixes chat JSONL ({chat[0]}) with text ({text}); a data set is either "
                          f"text corpora or {SUFFIX} conversations, not both")
    return bool(chat)


@dataclass
class Conversation:
    ids: np.ndarray  # int64 token ids of the rendered conversation, then the separator (<|endoftext|>)
    mask: np.ndarray  # bool, True on the assistant's tokens
    n_bytes: int  # UTF-8 bytes of the assistant's text (end-of-turn tokens not counted)


@dataclass
class ChatData:
    """Tokenized conversations; duck-types ``prepare.Prepared`` where training reads it."""

    train: list[Conversation]
    val: list[Conversation]
    meta: dict
    tok: Tokenizer
    tokenizer_path: Path
    prompt: str  # the first validation conversation up to its first reply: for training samples
    eot: int | None  # the end-of-turn token's id (None when it is not one token)

    def tokenizer(self) -> Tokenizer:
        return self.tok

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]


def _messages(obj, where: str) -> list[dict]:
    """The conversation's messages (role and content only), or one error line saying what is wrong."""
    msgs = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}} '
                        f"with at least one message")
    out = []
    for k, m in enumerate(msgs, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {k} needs a string 'role' and a string 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {k} has the unknown role '{m['role'][:40]}'; "
                            f"use {', '.join(ROLES)}")
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{where}: message {k} holds an unpaired surrogate escape (not Unicode text)") from None
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: the conversation has no assistant message (nothing to learn from)")
    return out


def read_jsonl(path: Path) -> list[tuple[str, list[dict]]]:
    """``(where, messages)`` for each conversation of one file; ``where`` is ``file:line``."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    out = []
    # split on "\n" only: str.splitlines() would also split at U+2028, which JSON strings may hold
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e.msg}, column {e.colno})") from None
        out.append((where, _messages(obj, where)))
    if not out:
        raise DataError(f"{path} holds no conversations")
    return out


def assistant_spans(messages: list[dict], template: str, eos: str, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans ``[a, b)`` of the assistant's replies."""
    from genlab.generate.chat import render_chat

    def render(msgs: list[dict], prompt: bool) -> str:
        # eos_token is given (templates like Llama 2's write it after a reply); bos_token is not, as in genlab chat
        try:
            return render_chat(template, msgs, add_generation_prompt=prompt, eos_token=eos)
        except ConfigError as e:
            raise DataError(f"{where}: {e}") from None

    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(messages[:i], True), render(messages[: i + 1], False)
        if not (upto.startswith(before) and full.startswith(upto)) or len(upto) == len(before):
            raise DataError(f"{where}: the chat template does not render this conversation turn by turn (the text "
                            f"up to message {i + 1} is not a prefix of the whole), so its reply's tokens cannot be found")
        a, reply, text = len(before), upto[len(before):], m["content"].strip()
        at = reply.find(text)  # the end-of-turn token is the first one after the reply's text
        cut = reply.find(eos, at + len(text) if at >= 0 else 0)
        spans.append((a, a + cut + len(eos) if cut >= 0 else len(upto)))
    return full, spans


def fingerprint(sources: list[corpus.Source], template: str, eos: str, tok: Tokenizer) -> str:
    h = hashlib.sha256(f"{FORMAT}|{corpus.fingerprint(sources)}|".encode())
    for part in (template, eos, tok.to_str()):
        h.update(hashlib.sha256(part.encode()).digest())
    return h.hexdigest()


def prepare_chat(cfg: DataConfig, source: Path, log=print, expect: str | None = None) -> ChatData:
    """Render, tokenize and mask the conversations of ``cfg.corpus`` (JSONL files) with the chat template,
    end-of-turn token (config.json) and tokenizer of run ``source``: the base, or on resume the run itself.
    ``expect``: the fingerprint the run recorded; other data is refused."""
    source = Path(source)
    run_cfg = runs.read_config(source)
    template = run_cfg.get("chat_template")
    if not template:
        raise ConfigError(f"chat JSONL data is rendered with the base's chat template, and '{source}' has none "
                          f"(no chat_template in its {runs.CONFIG}); fine-tune an instruct model, or give text")
    eos = run_cfg.get("eos_token") or tokmod.EOT
    tok = tokmod.load(source / runs.TOKENIZER)
    sources = corpus.resolve(cfg.corpus)
    for s in sources:
        if s.path.suffix.lower() != SUFFIX:
            raise ConfigError(f"--data mixes chat JSONL with text ({s.path}); give {SUFFIX} files only")
    fp = fingerprint(sources, template, eos, tok)
    if expect is not None and fp != expect:
        raise DataError(f"the chat data ({', '.join(cfg.corpus)}), the template or the tokenizer changed since "
                        f"the run started; resuming needs the same conversations")

    items = [item for s in sources for item in read_jsonl(s.path)]
    if len(items) < 2:
        raise DataError(f"only {len(items)} conversation in {', '.join(cfg.corpus)}; give at least 2 "
                        f"(every 10th, at least one, is held out for validation)")
    rendered = [assistant_spans(msgs, template, eos, where) for where, msgs in items]
    sep = tok.token_to_id(tokmod.EOT)  # between conversations, as between documents of a text corpus
    convs = []
    for (text, spans), enc in zip(rendered, tok.encode_batch([t for t, _ in rendered]), strict=True):
        starts, ends = np.array([o[0] for o in enc.offsets]), np.array([o[1] for o in enc.offsets])
        mask = np.zeros(len(enc.ids), dtype=bool)
        for a, b in spans:
            mask |= (starts < b) & (ends > a)
        n_bytes = sum(len(text[a:b].removesuffix(eos).encode()) for a, b in spans)
        if sep is not None:
            ids, mask = [*enc.ids, sep], np.append(mask, False)
        else:
            ids = enc.ids
        convs.append(Conversation(np.asarray(ids, np.int64), mask, n_bytes))

    val_at = [i for i in range(len(convs)) if i % 10 == 9] or [len(convs) - 1]
    held = set(val_at)
    val = [convs[i] for i in val_at]
    train = [c for i, c in enumerate(convs) if i not in held]
    val_assistant = sum(int(c.mask.sum()) for c in val)
    meta = {
        "fingerprint": fp, "format": FORMAT, "corpus": cfg.corpus, "files": len(sources),
        "conversations": len(convs), "val_conversations": len(val),
        "tokenizer": tokmod.kind_of(tok), "vocab_size": tok.get_vocab_size(),
        "train_tokens": sum(len(c.ids) for c in train), "val_tokens": sum(len(c.ids) for c in val),
        "train_assistant_tokens": sum(int(c.mask.sum()) for c in train), "val_assistant_tokens": val_assistant,
        # bytes of the assistant's text per assistant token (validation), for bits per byte
        "bytes_per_token": sum(c.n_bytes for c in val) / max(val_assistant, 1),
    }
    first = items[val_at[0]][1]
    reply_at = next(i for i, m in enumerate(first) if m["role"] == "assistant")
    from genlab.generate.chat import render_chat

    prompt = render_chat(template, first[:reply_at], add_generation_prompt=True, eos_token=eos)
    log(f"chat data: {len(convs):,} conversations ({len(val)} held out) from {len(sources)} file(s); "
        f"{meta['train_assistant_tokens']:,} of {meta['train_tokens']:,} training tokens are the assistant's")
    return ChatData(train, val, meta, tok, source / runs.TOKENIZER, prompt, tok.token_to_id(eos))
