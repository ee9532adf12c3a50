"""The CLI as users meet it: a real `python -m genlab` process, exit codes and one-line errors."""

import json
import subprocess

import pytest

from .conftest import GENLAB, ROOT


def genlab_cli(*args, cwd=ROOT):
    return subprocess.run(GENLAB + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_clear_error(res, *words):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in res.stderr
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr
    message = " ".join(lines[errors[0]:])  # rich may wrap the one line on a narrow terminal
    for w in words:
        assert w in message, (w, message)


def test_help_lists_the_commands():
    res = genlab_cli("--help")
    assert res.returncode == 0
    for cmd in ("train", "generate", "eval", "data", "bench", "demo"):
        assert cmd in res.stdout


def test_train_generate_eval_round_trip(tmp_path, corpus_dir):
    run = tmp_path / "run"
    res = genlab_cli("train", "lm", "--data", corpus_dir, "--tokenizer", "char", "--out", run, "--steps", 8,
                     "--context", 32, "--batch-size", 4, "--eval-every", 4)
    assert res.returncode == 0, res.stderr
    assert "parameters" in res.stderr and "done" in res.stderr
    gen = genlab_cli("generate", "text", run, "--prompt", "The cat", "--max-tokens", 20, "--seed", 1)
    assert gen.returncode == 0 and gen.stdout.startswith("The cat")
    again = genlab_cli("generate", "text", run, "--prompt", "The cat", "--max-tokens", 20, "--seed", 1, "--no-stream")
    assert again.stdout == gen.stdout
    ev = genlab_cli("eval", run, "--json")
    assert ev.returncode == 0 and json.loads(ev.stdout)["perplexity"] > 1
    # an existing run is never silently replaced
    assert_clear_error(genlab_cli("train", "lm", "--data", corpus_dir, "--out", run, "--steps", 1), "already exists")


def test_data_prepare(corpus_dir):
    res = genlab_cli("data", "prepare", "--data", corpus_dir, "--tokenizer", "char")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["train_tokens"] > 0


@pytest.mark.parametrize("content, words", [
    (b"", ["empty"]),
    (b"\x00\x01binary\x00", ["binary"]),
    (b"caf\xe9", ["not UTF-8"]),
])
def test_bad_corpus_files(tmp_path, content, words):
    f = tmp_path / "c.txt"
    f.write_bytes(content)
    res = genlab_cli("train", "lm", "--data", f, "--out", tmp_path / "r", "--steps", 1)
    assert_clear_error(res, *words)
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_missing_corrupted_and_wrong_family_runs(tmp_path):
    assert_clear_error(genlab_cli("generate", "text", tmp_path / "nope"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_clear_error(genlab_cli("generate", "text", tmp_path / "empty"), "not a genlab run")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert_clear_error(genlab_cli("eval", bad), "corrupted")
    gan = tmp_path / "gan"
    gan.mkdir()
    (gan / "config.json").write_text(json.dumps({"family": "gan"}))
    assert_clear_error(genlab_cli("generate", "text", gan), "gan model, not a lm model")
    assert_clear_error(genlab_cli("train", "lm", "--out", tmp_path / "nope", "--resume", "--steps", 3),
                       "does not exist")


def test_corrupted_weights(tmp_path, trained_run):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    (run / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    assert_clear_error(genlab_cli("generate", "text", run), "corrupted")


@pytest.mark.parametrize("args, words", [
    (["--steps", "0"], ["--steps", "positive"]),
    (["--minutes", "-1"], ["--minutes", "positive"]),
    ([], ["budget"]),
    (["--steps", "1", "--preset", "huge"], ["unknown preset"]),
    (["--steps", "1", "--n-head", "3"], ["divisible"]),
    (["--steps", "1", "--tokenizer", "wordpiece"], ["unknown tokenizer"]),
    (["--steps", "1", "--data", "/no/such/file.txt"], ["not a file"]),
    (["--steps", "1", "--grad-clip", "-1"], ["--grad-clip", "negative"]),
])
def test_bad_training_options(tmp_path, corpus_dir, args, words):
    if "--data" not in args:
        args = args + ["--data", str(corpus_dir)]
    res = genlab_cli("train", "lm", "--out", tmp_path / "r", *args)
    assert_clear_error(res, *words)
    assert not (tmp_path / "r").exists()


def test_bad_generation_option(trained_run):
    assert_clear_error(genlab_cli("generate", "text", trained_run, "--top-p", "1.5"), "--top-p")


def test_prompt_bytes_that_are_not_utf8_are_generated_from(trained_run):
    """A shell can pass `--prompt $'\\xff\\xfe'`: not a traceback, but the replacement character."""
    r = subprocess.run([*GENLAB, "generate", "text", str(trained_run), "--prompt", b"\xff\xfe", "--max-tokens", "5",
                        "--seed", "0"], cwd=ROOT, capture_output=True, timeout=300)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
    assert r.stdout.decode().startswith("\ufffd\ufffd")


def test_export_is_built_from_the_registry(trained_run, tmp_path):
    from genlab.export.registry import TARGETS, exporters

    listing = genlab_cli("export", "--list")
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.strip().splitlines()] == list(TARGETS) == list(exporters())
    # an option the chosen format does not read is refused, naming the formats that take it
    assert_clear_error(genlab_cli("export", trained_run, "--format", "gguf", "--int8"),
                       "--int8 applies to --format onnx, executorch, tflite, not gguf")
    assert_clear_error(genlab_cli("export", trained_run, "--format", "hf", "--compress", "int8"),
                       "--compress applies to --format coreml, not hf")
    assert not list(tmp_path.iterdir())
