"""`genlab bench serve`: `genlab serve` and llama.cpp's server (when installed), each in its own process,
under the same streaming load (speed is reported, never asserted)."""

import json
import subprocess

from genlab.bench_serve import HEADERS, bench_serve, llama_server_missing, table_rows

from .conftest import GENLAB


def test_both_servers_give_results_for_one_and_two_clients(trained_run):
    rows, what = bench_serve(trained_run, [2], requests=2, max_tokens=6, threads=1, log=lambda m: None)
    genlab = [r for r in rows if r.server == "genlab"]
    assert [r.clients for r in genlab] == [1, 2]  # one client is always measured: the speed-up's base
    one, two = genlab
    assert (one.requests, two.requests) == (2, 4)
    assert (one.tokens, two.tokens) == (12, 24)  # ignore_eos: exactly max_tokens per request
    assert one.speedup == 1.0 and two.speedup > 0
    for r in genlab:
        assert r.tokens_per_s > 0 and r.per_client_tok_s > 0
        assert r.p95_latency_s >= r.p50_latency_s > 0 and r.p95_ttft_s >= r.p50_ttft_s > 0
        assert r.p50_ttft_s < r.p95_latency_s
    assert "genlab serve: tiny (fp32), max batch 2, 1 threads" in what
    llama = [r for r in rows if r.server.startswith("llama.cpp")]
    if llama_server_missing():
        assert len(llama) == 1 and llama[0].note.startswith("skipped: pip install 'llama-cpp-python[server]'")
    else:
        assert [(r.clients, r.requests, r.note) for r in llama] == [(1, 2, ""), (2, 4, "")]
        assert llama[0].server == "llama.cpp (q8_0, genlab GGUF)" and "model-q8_0.gguf" in what
        for r in llama:  # min_tokens: at least 6 tokens each, counted as streamed chunks (never more than asked)
            assert 0 < r.tokens <= 6 * r.requests and r.tokens_per_s > 0 and r.p95_ttft_s >= r.p50_ttft_s > 0
    table = table_rows(rows)
    assert all(len(r) == len(HEADERS) for r in table) and table[0][:4] == ["genlab", "1", "2", "12"]


def test_cli_writes_a_section_and_refuses_bad_input(trained_run, tmp_path):
    md = tmp_path / "B.md"
    r = subprocess.run([*GENLAB, "bench", "serve", str(trained_run), "--clients", "1", "--requests", "1",
                        "--max-tokens", "4", "--no-llama", "--write", str(md)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = md.read_text()
    assert "### Serving tiny under load (`bench serve`)" in text
    assert f"`genlab bench serve {trained_run} --clients 1 --requests 1 --max-tokens 4 --no-llama" in text
    assert "| genlab | 1 | 1 | 4 |" in text and "| llama.cpp | skipped: not asked for |" in text
    gan = tmp_path / "gan"
    gan.mkdir()
    (gan / "config.json").write_text(json.dumps({"family": "gan", "model": {}}))
    for args, message in [([str(trained_run), "--clients", "1,x"], "--clients must be"),
                          ([str(trained_run), "--clients", "0,4"], "--clients must be"),
                          ([str(gan)], "holds a gan model, not a lm model")]:
        r = subprocess.run([*GENLAB, "bench", "serve", *args, "--no-write"], capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_llama_cpp_serves_the_file_a_run_was_imported_from(trained_run, tmp_path):
    import pytest

    pytest.importorskip("gguf")
    from genlab import runs
    from genlab.bench_serve import _gguf_for
    from genlab.export.gguf import export_gguf

    original = tmp_path / "original.gguf"
    export_gguf(trained_run, original, "f16", log=lambda m: None)
    cfg = {**runs.read_config(trained_run), "imported_from": {"path": str(original), "format": "gguf"}}
    assert _gguf_for(trained_run, cfg, tmp_path, log=lambda m: None) == (original, "llama.cpp (F16, original file)")
    cfg["imported_from"]["path"] = str(tmp_path / "gone.gguf")  # moved away: genlab's own q8_0 export instead
    path, name = _gguf_for(trained_run, cfg, tmp_path, log=lambda m: None)
    assert path == tmp_path / "model-q8_0.gguf" and path.is_file() and name == "llama.cpp (q8_0, genlab GGUF)"
