import pytest
import torch

import genlab
from genlab.errors import ConfigError
from genlab.generate.text import Detokenizer, SamplingOptions, clean_text, next_token


def test_same_seed_same_output(trained_run):
    lm = genlab.load(trained_run)
    a = lm.generate("The cat", max_tokens=40, temperature=1.0, top_k=20, seed=7)
    b = lm.generate("The cat", max_tokens=40, temperature=1.0, top_k=20, seed=7)
    c = lm.generate("The cat", max_tokens=40, temperature=1.0, top_k=20, seed=8)
    assert a == b
    assert a != c


def test_kv_cache_and_recomputation_generate_the_same_text(trained_run):
    lm = genlab.load(trained_run)
    for seed in (3, 4, 5):
        kw = dict(max_tokens=150, temperature=0.9, seed=seed, ignore_eot=True)  # 150 > context 64: shifts twice
        assert lm.generate("A small bird", use_cache=True, **kw) == lm.generate("A small bird", use_cache=False, **kw)


def test_stream_pieces_join_to_the_full_text(trained_run):
    lm = genlab.load(trained_run)
    pieces = list(lm.stream("The dog", max_tokens=30, seed=1, temperature=0.8))
    assert len(pieces) > 1
    assert "".join(pieces) == lm.generate("The dog", max_tokens=30, seed=1, temperature=0.8)


def test_stop_strings_end_the_text_before_them(trained_run):
    lm = genlab.load(trained_run)
    full = lm.generate("The", max_tokens=60, seed=0, temperature=0.0, ignore_eot=True)
    stop = full[10:13]
    out = lm.generate("The", max_tokens=60, seed=0, temperature=0.0, stop=[stop], ignore_eot=True)
    assert out == full[: full.index(stop)]
    assert lm.info.finish_reason == "stop"
    # streamed with the same stop string: nothing past it ever leaves the generator
    assert "".join(lm.stream("The", max_tokens=60, seed=0, temperature=0.0, stop=[stop], ignore_eot=True)) == out


def test_long_prompt_is_cut_from_the_left(trained_run):
    lm = genlab.load(trained_run)
    prompt = "the cat sat on a mat " * 40
    out = lm.generate(prompt, max_tokens=5, seed=0)
    assert lm.info.truncated == lm.info.prompt_tokens - (lm.config.context - 1) > 0
    assert isinstance(out, str)


def test_greedy_top_k_top_p_and_repetition_penalty():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    assert next_token(logits, SamplingOptions(temperature=0), None, gen) == 1
    picks = {next_token(logits, SamplingOptions(top_k=2), None, gen) for _ in range(200)}
    assert picks == {1, 2}
    # top_p=0.5: token 1 alone holds ~66% of the mass, so it is the only candidate
    assert {next_token(logits, SamplingOptions(top_p=0.5), None, gen) for _ in range(50)} == {1}
    # a strong penalty on the seen best token makes greedy choose the runner-up
    assert next_token(logits, SamplingOptions(temperature=0, repetition_penalty=2.0), torch.tensor([1]), gen) == 2


def test_detokenizer_holds_back_partial_stop_strings_and_characters():
    pieces = ["hel", "lo wor", "ld!"]
    detok = Detokenizer(lambda ids: "".join(pieces[i] for i in ids), ("world",))
    assert detok.add(0) == "hel"
    assert detok.add(1) == "lo "  # "wor" might become "world": held back
    assert detok.add(2) == "" and detok.stopped  # the stop string appeared: nothing from it on is sent
    assert detok.finish() == ""
    no_stops = Detokenizer(lambda ids: "".join(pieces[i] for i in ids), ("xyz",))
    assert no_stops.add(0) == "hel" and no_stops.add(1) == "lo wor" and not no_stops.stopped
    # a partial UTF-8 character decodes to U+FFFD: held back until the next token completes it
    utf8 = [b"ab\xc3", b"\xa9"]
    part = Detokenizer(lambda ids: b"".join(utf8[i] for i in ids).decode(errors="replace"))
    assert part.add(0) == "ab" and part.add(1) == "\u00e9" and part.finish() == ""
    ended = Detokenizer(lambda ids: "".join(pieces[i] for i in ids), ("zz",))
    assert ended.add(0) == "hel" and ended.finish() == ""  # nothing held back: nothing left to send


def test_prompt_bytes_that_are_not_utf8_become_replacement_characters(trained_run):
    """A shell passes $'\\xff\\xfe' to Python as lone surrogates; tokenizers refuse those (a TypeError)."""
    assert clean_text("a\udcff\udcfeb") == "a\ufffd\ufffdb"
    assert clean_text("x\ud800") == "x" + "\ufffd" * 3  # a lone surrogate from elsewhere (e.g. JSON)
    lm = genlab.load(trained_run)
    assert isinstance(lm.generate("\udcff\udcfe", max_tokens=5, seed=0), str)
    assert lm.info.prompt_tokens >= 1


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=0), dict(max_tokens=-1)])
def test_bad_sampling_options(trained_run, bad):
    lm = genlab.load(trained_run)
    with pytest.raises(ConfigError):
        lm.generate("x", **bad)


def test_eval_reports_perplexity_and_bits_per_byte(trained_run, corpus_dir):
    from genlab.evaluate.perplexity import evaluate_lm

    own = evaluate_lm(trained_run)
    held = evaluate_lm(trained_run, [str(corpus_dir / "doc00.txt")])
    for r in (own, held):
        assert r["tokens"] > 100 and 1 < r["perplexity"] < 300
        assert 0 < r["bits_per_byte"] < 8
    noise = corpus_dir.parent / "noise.txt"
    noise.write_text("".join(chr(0x4E00 + (i * 7919) % 2000) for i in range(400)))
    assert evaluate_lm(trained_run, [str(noise)])["bits_per_byte"] > held["bits_per_byte"]
