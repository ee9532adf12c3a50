import numpy as np
import pytest

from genlab.config import DataConfig
from genlab.data import corpus, tokenizer
from genlab.data.prepare import eval_windows, prepare, sample_batch
from genlab.errors import DataError

from .conftest import make_text


def test_bpe_round_trip_and_special_token():
    text = make_text(200) + "Ünïcödé ✓ 日本語\ttabs\n"
    tok = tokenizer.train_bpe([text], 400)
    assert tok.get_vocab_size() <= 400
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 1.5  # merges actually compress
    assert tokenizer.eot_id(tok) is not None
    assert tokenizer.kind_of(tok) == "bpe"


def test_char_round_trip_and_unknown_characters():
    tok = tokenizer.train_char(["hello wörld\n"])
    assert tok.decode(tok.encode("hello wörld\n").ids) == "hello wörld\n"
    assert tok.encode("z").ids == [tok.token_to_id(tokenizer.UNK)]
    assert tokenizer.kind_of(tok) == "char"


def test_resolve_files_folders_globs(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta\n")
    (tmp_path / "sub" / "img.png").write_bytes(b"\x89PNG\x00")
    srcs = corpus.resolve([str(tmp_path)])
    assert [s.path.name for s in srcs] == ["a.txt", "b.md"]  # folder: text suffixes only
    assert [s.path.name for s in corpus.resolve([str(tmp_path / "**" / "*.md")])] == ["b.md"]
    assert len(corpus.resolve([str(tmp_path / "a.txt"), str(tmp_path)])) == 2  # de-duplicated


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"abc\x00\x01\x02def", "binary"),
    (b"caf\xe9 latin-1", "not UTF-8"),
])
def test_bad_corpus_files_are_clear_errors(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        corpus.documents(corpus.resolve([str(f)]))


def test_missing_corpus_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match="not a file, folder"):
        corpus.resolve([str(tmp_path / "nope.txt")])
    with pytest.raises(DataError, match="matches no files"):
        corpus.resolve([str(tmp_path / "*.txt")])


def test_stdlib_corpus_is_found():
    files = corpus.stdlib_files()
    assert any(p.name == "os.py" for p in files)
    assert not any("site-packages" in p.parts for p in files)


def test_prepare_caches_by_fingerprint(corpus_dir, monkeypatch):
    cfg = DataConfig(corpus=[str(corpus_dir)], tokenizer="bpe", vocab_size=300)
    first = prepare(cfg, log=lambda m: None)
    calls = []
    monkeypatch.setattr(tokenizer, "train", lambda *a, **k: calls.append(1))
    second = prepare(cfg, log=lambda m: None)
    assert second.root == first.root and not calls  # served from the cache, nothing retrained
    monkeypatch.undo()
    train, val = first.tokens("train"), first.tokens("val")
    assert train.dtype == np.uint16 and isinstance(train, np.memmap)
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.25
    # a different setting is a different cache entry
    other = prepare(DataConfig(corpus=[str(corpus_dir)], tokenizer="char"), log=lambda m: None)
    assert other.root != first.root and other.meta["tokenizer"] == "char"


def test_changed_file_content_invalidates_cache(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(make_text(50, seed=1))
    a = prepare(DataConfig(corpus=[str(f)], tokenizer="char"), log=lambda m: None)
    f.write_text(make_text(50, seed=2))
    b = prepare(DataConfig(corpus=[str(f)], tokenizer="char"), log=lambda m: None)
    assert a.fingerprint != b.fingerprint


def test_split_keeps_documents_whole(corpus_dir):
    p = prepare(DataConfig(corpus=[str(corpus_dir)], tokenizer="char"), log=lambda m: None)
    tok = p.tokenizer()
    val_text = tok.decode(list(p.tokens("val")), skip_special_tokens=False)
    docs = val_text.split(tokenizer.EOT)
    known = {(corpus_dir / f"doc{i:02d}.txt").read_text() for i in range(12)}
    assert [d for d in docs if d] and all(d in known for d in docs if d)


def test_batches_are_shifted_windows(corpus_dir):
    p = prepare(DataConfig(corpus=[str(corpus_dir)], tokenizer="char"), log=lambda m: None)
    x, y = sample_batch(p.tokens("train"), 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 16)
    assert (x[:, 1:] == y[:, :-1]).all()
    x2, _ = sample_batch(p.tokens("train"), 4, 16, np.random.default_rng(0))
    assert (x == x2).all()
    vx, vy = eval_windows(p.tokens("val"), 16, 5)
    assert vx.shape == (5, 16)
