"""`genlab bench finetune|transfer|chat` on the tiny test models: every run is a real `genlab`
process, its peak RSS is its own, and the tables hold what was measured."""

import pytest

from genlab.bench_finetune import bench_chat, bench_finetune, bench_transfer, run_measured
from genlab.evaluate.perplexity import heldout_bits_per_byte, validation_prefix

from .chat_helpers import chat_run, tiny_gguf  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_measured_reports_the_childs_own_peak(tmp_path):
    code, small, _ = run_measured(["-c", "pass"], tmp_path / "a.log")
    code2, big, _ = run_measured(["-c", "x = b'1' * (300 * 2**20)"], tmp_path / "b.log")
    code3, _, _ = run_measured(["-c", "import sys; sys.exit(3)"], tmp_path / "c.log")
    assert code == code2 == 0 and code3 == 3
    assert small < 100 * 2**20  # a bare interpreter, not this test process's pages
    assert big - small > 280 * 2**20


def test_bench_finetune_measures_each_method(trained_run, corpus_dir, tmp_path):
    out = tmp_path / "B.md"
    rows = bench_finetune(trained_run, str(corpus_dir), ["lora", "qlora"], steps=2, batch=2, context=32, write=out)
    assert [r["method"] for r in rows] == ["lora", "qlora"]
    for r in rows:
        assert r["peak_rss"] > r["runtime_rss"] > 0 and r["predicted"] > 0 and r["tok_s"] > 0
    text = out.read_text()
    assert "Fine-tuning memory and speed" in text and "| qlora |" in text


def test_bench_transfer_scores_every_model_on_the_same_text(trained_run, corpus_dir, tmp_path):
    tokens, nbytes = validation_prefix(trained_run, str(corpus_dir), 2000)
    assert nbytes >= 2000 and len(tokens) > 10
    base_bpb = heldout_bits_per_byte(trained_run, str(corpus_dir), 2000, 32)
    rows = bench_transfer(trained_run, [str(corpus_dir)], minutes=0.05, methods=["lora"], batch=2, context=32,
                          eval_bytes=2000, scratch_preset="tiny", write=None)
    assert [r["model"] for r in rows] == [f"{trained_run.name} as it is", "lora", "tiny from scratch"]
    assert rows[0]["bpb"] == pytest.approx(base_bpb)
    assert all(r["bpb"] > 0 for r in rows) and rows[1]["tokens"] > 0 and rows[2]["tokens"] > 0


def test_bench_chat_puts_answers_side_by_side(chat_run, tmp_path):  # noqa: F811
    out = tmp_path / "B.md"
    table = bench_chat([chat_run, chat_run], prompts=("the cat",), max_tokens=5, write=out)
    assert table[0][0] == "the cat" and table[0][1] == table[0][2]  # greedy: the same run answers the same
    assert "Chat answers side by side" in out.read_text()
