"""genlab finetune on chat JSONL: conversations rendered with the base's chat template, a mask on the
assistant's tokens (its text and end-of-turn token), the loss on those tokens only, bad lines as
``file:line:`` errors."""

import json
import random
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import genlab
from genlab import runs
from genlab.config import DataConfig, train_config
from genlab.data import conversations as conv
from genlab.data import tokenizer as tokmod
from genlab.errors import ConfigError, DataError
from genlab.runtimes.pytorch import load_float_model
from genlab.train import finetune as ft
from genlab.train.chat import IGNORE, Windows
from genlab.train.lm import ChatTask

from .conftest import GENLAB, ROOT

# A ChatML-like template whose end-of-turn token is the tiny tokenizer's one special token.
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
WORDS = "zebra quartz jolly vexing fjord nymph waltz crisp".split()  # replies the base never saw


def conversations(n=40, seed=3):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        msgs = [{"role": "system", "content": "Answer in odd words."}] if i % 2 else []
        for _ in range(1 + i % 2):
            msgs.append({"role": "user", "content": "the cat sat on a mat " + str(rng.randint(0, 9))})
            msgs.append({"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(5)) + "."})
        out.append({"messages": msgs})
    return out


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def chat_base(request, one_thread, tmp_path_factory):
    """conftest's tiny trained run with a chat template in its config.json."""
    run = tmp_path_factory.mktemp("chatbase") / "base"
    shutil.copytree(request.getfixturevalue("trained_run"), run)
    cfg = json.loads((run / runs.CONFIG).read_text())
    (run / runs.CONFIG).write_text(json.dumps({**cfg, "chat_template": TEMPLATE}))
    return run


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("chats") / "chats.jsonl", conversations())


def spec(run, base, data, steps=30, resume=False, method="lora"):
    tcfg = train_config(None, steps=steps, eval_every=steps, checkpoint_every=10, batch_size=8,
                        lr=1e-2 if method == "lora" else 1e-3, warmup_steps=2, log_every=1)
    return ft.FinetuneSpec(run=run, base=base, data=DataConfig(corpus=[str(data)]), method=method,
                           train=tcfg, resume=resume, quiet=True)


def masked_pieces(tok, c):
    """The decoded runs of consecutive masked tokens of one conversation."""
    pieces, cur = [], []
    for i, m in zip(c.ids.tolist(), c.mask.tolist(), strict=True):
        if m:
            cur.append(i)
        elif cur:
            pieces, cur = pieces + [cur], []
    return [tok.decode(p, skip_special_tokens=False) for p in pieces + ([cur] if cur else [])]


def test_the_mask_covers_exactly_the_replies_and_their_end_of_turn(chat_base, chats):
    data = conv.prepare_chat(DataConfig(corpus=[str(chats)]), chat_base, log=lambda m: None)
    rows = conversations()
    val_at = [9, 19, 29, 39]
    assert data.meta["conversations"] == 40 and data.meta["val_conversations"] == 4
    expected = [[m["content"] + tokmod.EOT for m in r["messages"] if m["role"] == "assistant"] for r in rows]
    got = [masked_pieces(data.tok, c) for c in data.train]
    assert got == [e for i, e in enumerate(expected) if i not in val_at]
    assert [masked_pieces(data.tok, c) for c in data.val] == [expected[i] for i in val_at]
    # bits per byte divide by the replies' own bytes (end-of-turn tokens not counted)
    n_bytes = sum(len(m["content"].encode()) for i in val_at for m in rows[i]["messages"] if m["role"] == "assistant")
    assert data.meta["bytes_per_token"] == pytest.approx(n_bytes / data.meta["val_assistant_tokens"])
    assert data.prompt == (f"<|system|>\nAnswer in odd words.<|endoftext|>\n<|user|>\n"
                           f"{rows[9]['messages'][1]['content']}<|endoftext|>\n<|assistant|>\n")

    # a template that writes no end-of-turn token: the reply is what it writes after the generation prompt
    cfg = json.loads((chat_base / runs.CONFIG).read_text())
    text, spans = conv.assistant_spans(rows[1]["messages"], "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                                       "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
                                       cfg.get("eos_token") or tokmod.EOT, "x.jsonl:2")
    assert [text[a:b] for a, b in spans] == [" " + m["content"] + "\n" for m in rows[1]["messages"]
                                             if m["role"] == "assistant"]


def test_the_loss_is_the_mean_over_assistant_tokens(chat_base, chats):
    data = conv.prepare_chat(DataConfig(corpus=[str(chats)]), chat_base, log=lambda m: None)
    model, _ = load_float_model(chat_base)
    task = ChatTask(model, data, 4, 2)
    # every assistant token of the training conversations is a target exactly once, with a long
    # conversation cut into windows too (context 16)
    for context in (model.cfg.context, 16):
        w = Windows(data.train, context)
        assert int((w.targets != IGNORE).sum()) == data.meta["train_assistant_tokens"]
    x, y = task.train_batch(np.random.default_rng(0))
    with torch.no_grad():
        loss, _ = task.loss(model, (x, y))
        logp = F.log_softmax(model(x).float(), -1)
    keep = y != IGNORE
    assert 0 < keep.sum() < y.numel()
    hand = -logp[keep].gather(1, y[keep][:, None]).mean()
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, chat_base, chats):
    run = tmp_path_factory.mktemp("chatft") / "lora"
    return run, ft.finetune(spec(run, chat_base, chats))


def test_lora_on_chat_data_lowers_the_assistant_loss_and_resumes(chat_run, chat_base, chats):
    run, result = chat_run
    data = conv.prepare_chat(DataConfig(corpus=[str(chats)]), chat_base, log=lambda m: None)
    base_model, _ = load_float_model(chat_base)
    with torch.no_grad():
        before = ChatTask(base_model, data, 8, 20).evaluate(base_model)
    assert result.val["loss"] < before["loss"] - 1.0, (before, result.val)
    assert result.val["bits_per_byte"] < before["bits_per_byte"]
    cfg = json.loads((run / runs.CONFIG).read_text())
    assert cfg["chat_template"] == TEMPLATE and cfg["data"]["fingerprint"] == data.fingerprint
    assert cfg["finetune"]["method"] == "lora"
    assert (run / "samples" / "step_000030.txt").read_text().startswith(data.prompt)
    lm = genlab.load(run, device="cpu")
    assert isinstance(lm.chat([{"role": "user", "content": "the cat"}], max_tokens=8, temperature=0), str)
    # genlab eval scores what training scored: the replies of every held-out conversation
    from genlab.evaluate.perplexity import evaluate_lm

    scored = evaluate_lm(run, device="cpu")
    with torch.no_grad():
        expected = ChatTask(lm.model, data, 8, len(data.val) + 1).evaluate(lm.model)
    assert scored["data"].startswith("assistant turns") and scored["loss"] == pytest.approx(expected["loss"])

    resumed = ft.finetune(spec(run, None, chats, steps=32, resume=True))
    assert [s for s, _ in resumed.losses] == [31, 32]
    shutil.copyfile(chats, chats.parent / "copy.jsonl")  # the same file elsewhere is other data too
    cfg["data"]["config"]["corpus"] = [str(chats.parent / "copy.jsonl")]
    (run / runs.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="changed since the run started"):
        ft.finetune(spec(run, None, chats, steps=34, resume=True))


def test_full_fine_tuning_on_chat_data_keeps_the_template(tmp_path, chat_base, chats):
    out = tmp_path / "full"
    result = ft.finetune(spec(out, chat_base, chats, steps=3, method="full"))
    assert set(result.val) == {"loss", "perplexity", "bits_per_byte"}
    cfg = json.loads((out / runs.CONFIG).read_text())
    assert cfg["init_from"] == str(chat_base) and cfg["chat_template"] == TEMPLATE
    assert (out / runs.WEIGHTS).exists()
    resumed = ft.finetune(spec(out, None, chats, steps=4, method="full", resume=True))
    assert [s for s, _ in resumed.losses] == [4]


BAD = [
    ("not json", "not JSON"),
    ('{"text": "hi"}', "expected {\"messages\""),
    ('{"messages": [{"role": "user"}]}', "message 1 needs a string 'role' and a string 'content'"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}', "unknown role 'robot'"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "no assistant message"),
]


def test_bad_lines_name_the_file_and_line(tmp_path, chat_base, chats):
    good = chats.read_text().splitlines()
    for line, says in BAD:
        bad = tmp_path / "bad.jsonl"
        bad.write_text("\n".join(good[:2] + [""] + [line] + good[2:]) + "\n")  # line 4 (a blank line 3)
        with pytest.raises(DataError, match=f"^{re.escape(str(bad))}:4: ") as e:
            ft.finetune(spec(tmp_path / "out", chat_base, bad))
        assert says in str(e.value)
    with pytest.raises(ConfigError, match="mixes chat JSONL"):
        ft.finetune(ft.FinetuneSpec(run=tmp_path / "out", base=chat_base, method="lora",
                                    data=DataConfig(corpus=[str(chats), str(tmp_path)]), train=train_config(None, steps=1)))
    trained = json.loads((chat_base / runs.CONFIG).read_text())
    plain = tmp_path / "plain"
    shutil.copytree(chat_base, plain)
    (plain / runs.CONFIG).write_text(json.dumps({k: v for k, v in trained.items() if k != "chat_template"}))
    with pytest.raises(ConfigError, match="has none"):
        ft.finetune(spec(tmp_path / "out", plain, chats))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "plain"]


def test_cli_bad_line_is_one_error_line_with_exit_2(tmp_path, chat_base, chats):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(chats.read_text() + '{"messages": []}\n')
    r = subprocess.run([*GENLAB, "finetune", str(chat_base), "--data", str(bad), "--out", str(tmp_path / "out"),
                        "--steps", "2", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:41: expected"), r.stderr
    assert not (tmp_path / "out").exists()
