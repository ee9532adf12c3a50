"""The dynamic-batching scheduler: batched decoding gives what one-at-a-time decoding gives, and
concurrent requests really share forward passes."""

from __future__ import annotations

import threading

import pytest

from genlab.generate.text import SamplingOptions, load_lm
from genlab.studio.batching import BatchScheduler

from .sched_helpers import greedy, stream_all

PROMPTS = ["The cat", "Old dog ran far away into", "A", "Every morning the small bird sang because rain"]


@pytest.fixture(scope="module")
def lm(trained_run):
    return load_lm(trained_run, device="cpu")


def test_batched_greedy_decoding_matches_single_stream(lm):
    sched = BatchScheduler(lm, max_batch=4)
    try:
        # 150 tokens with a 64-token context: every row also crosses the window shift.
        results = stream_all(sched, PROMPTS, lambda i: greedy(150))
        for i, prompt in enumerate(PROMPTS):
            assert results[i] == lm.generate(prompt, max_tokens=150, temperature=0, ignore_eot=True), prompt
        assert sched.stats.max_batch_seen > 1  # the four requests shared forward passes
        assert sched.active == 0
    finally:
        sched.close()


def test_seeded_sampling_stop_strings_and_cancel(lm):
    sched = BatchScheduler(lm, max_batch=2)
    try:
        opts = dict(max_tokens=40, temperature=1.0, top_p=0.9, seed=7)
        a = "".join(sched.stream("The cat", SamplingOptions(**opts)))
        b = "".join(sched.stream("The cat", SamplingOptions(**opts)))
        assert a == b and a  # same seed, same text
        stopped = "".join(sched.stream("The cat", SamplingOptions(max_tokens=60, temperature=0, stop=(" ",),
                                                                  ignore_eot=True)))
        assert " " not in stopped
        # Abandon a long stream after one piece: its slot must be freed.
        it = sched.stream("The", SamplingOptions(max_tokens=10_000, temperature=1.0, ignore_eot=True))
        next(it)
        it.close()
        for _ in range(200):
            if sched.active == 0:
                break
            threading.Event().wait(0.05)
        assert sched.active == 0
    finally:
        sched.close()


def test_a_runner_that_cannot_batch_is_served_one_sequence_per_pass(lm, trained_run, tmp_path):
    """Exported runtimes (here ONNX, batching=False) go through the same scheduler: each sequence keeps
    its own cache, and the text is what one stream gives, window shift included."""
    pytest.importorskip("onnxruntime")
    from genlab.export.onnx import export_onnx

    path = tmp_path / "lm.onnx"
    export_onnx(trained_run, path, log=lambda m: None)
    onnx_lm = load_lm(path)
    assert onnx_lm.model.batching is False
    sched = BatchScheduler(onnx_lm, max_batch=4)
    try:
        results: dict[int, str] = {}

        def work(i: int) -> None:
            results[i] = "".join(sched.stream(PROMPTS[i], SamplingOptions(max_tokens=80, temperature=0,
                                                                          ignore_eot=True)))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for i in range(2):
            assert results[i] == onnx_lm.generate(PROMPTS[i], max_tokens=80, temperature=0, ignore_eot=True)
        assert sched.active == 0
    finally:
        sched.close()


def test_chat_templates_render_the_conversation():
    from genlab.generate.chat import render_chat

    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    text = render_chat(chatml, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
