"""The studio's text back ends end to end: an OpenAI-compatible server (genlab's own, on a real
uvicorn server on 127.0.0.1) through the `openai` client, via `genlab studio make --text-run URL`;
and a Hugging Face folder (a tiny random Llama, saved locally) that streams token by token.

Also the untrained runs other server tests share (fixtures `lm_run`, `image_run`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from genlab import runs

from .conftest import make_text

# ---- untrained runs: the server and back-end plumbing needs real models, not good ones ---------------

def write_lm_run(run: Path) -> Path:
    """A genlab LM run with random weights and a character tokenizer (no training: milliseconds)."""
    import torch

    from genlab.data.tokenizer import train_char
    from genlab.models.transformer import LMConfig, Transformer

    tok = train_char([make_text(40)])
    torch.manual_seed(0)
    model = Transformer(LMConfig(vocab_size=tok.get_vocab_size(), context=64, n_layer=1, n_head=2, n_kv_head=1,
                                 d_model=32))
    run.mkdir(parents=True)
    (run / runs.CONFIG).write_text(json.dumps({"family": "lm", "model": model.cfg.to_dict()}))
    tok.save(str(run / runs.TOKENIZER))
    runs.save_weights(run, model)
    return run


def write_gan_run(run: Path) -> Path:
    """A class-conditional GAN run (circle, square, triangle, cross) with random weights."""
    import torch

    from genlab.models.gan import GAN, GANConfig

    torch.manual_seed(0)
    model = GAN(GANConfig(image_size=16, channels=1, num_classes=4, latent_dim=8, embed_dim=8, g_width=8, d_width=8))
    run.mkdir(parents=True)
    (run / runs.CONFIG).write_text(json.dumps({"family": "gan", "model": model.cfg.to_dict(),
                                               "data": {"class_names": ["circle", "square", "triangle", "cross"]}}))
    runs.save_weights(run, model)
    return run


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory) -> Path:
    return write_lm_run(tmp_path_factory.mktemp("untrained") / "lm")


@pytest.fixture(scope="session")
def image_run(tmp_path_factory) -> Path:
    return write_gan_run(tmp_path_factory.mktemp("untrained") / "gan")


# ---- an OpenAI-compatible server: genlab's own, through the openai client ------------------------------

def test_studio_make_through_an_openai_compatible_server(lm_run, image_run, tmp_path, monkeypatch, capsys):
    """`genlab studio make --text-run http://127.0.0.1:PORT/v1`: the article comes from the server."""
    import hashlib

    from genlab.cli import main
    from genlab.serve import ServerConfig, ServerThread, create_app

    cfg = ServerConfig(text_run=lm_run, data_dir=tmp_path / "data", device="cpu", semantic_labels=False)
    with ServerThread(create_app(cfg)) as srv:
        sched = srv.server.config.app.state.service.scheduler

        def make(out: str, seed: int) -> dict:
            monkeypatch.setattr(sys, "argv", [
                "genlab", "studio", "make", "A square of grass", "--out", str(tmp_path / out), "--text-run",
                srv.url + "/v1", "--image-run", str(image_run), "--keywords", "--no-narrate", "--max-tokens", "30",
                "--candidates", "1", "--scale", "1", "--seed", str(seed), "--device", "cpu"])
            with pytest.raises(SystemExit) as exc:
                main()
            assert exc.value.code == 0, capsys.readouterr().err
            return json.loads((tmp_path / out / "manifest.json").read_text())

        a, b, c = make("a", 3), make("b", 3), make("c", 4)
        decoded = sched.stats.tokens
    text = next(m for m in a["models"] if m["role"] == "text")
    assert text == {"role": "text", "kind": "openai-compatible", "url": srv.url + "/v1", "model": lm_run.name}
    article = (tmp_path / "a" / "article.md").read_bytes().decode()  # exact: a tiny model may write "\r"
    # Non-empty: the model wrote a body, or at least a title line of its own (else the title is the prompt).
    assert a["title"] and article.startswith(f"# {a['title']}\n\n")
    assert article.partition("\n\n")[2].strip() or a["title"] != "A square of grass"
    # Same seed: the same article, byte for byte; another seed: another one.
    assert a["assets"]["article.md"] == b["assets"]["article.md"]
    assert hashlib.sha256(article.encode()).hexdigest() == a["assets"]["article.md"]["sha256"]
    assert c["assets"]["article.md"] != a["assets"]["article.md"]
    assert decoded > 0  # the server's scheduler did the decoding


# ---- a Hugging Face folder: token by token -------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_folder(lm_run, tmp_path_factory) -> Path:
    """A tiny random Llama with the LM run's tokenizer, saved as transformers saves models (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(lm_run / runs.TOKENIZER), eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, bos_token_id=None, pad_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_hf_backend_streams_token_by_token(hf_folder):
    import torch
    from transformers import AutoTokenizer

    from genlab.generate.text import SamplingOptions
    from genlab.runtimes.hf import TransformersRunner
    from genlab.studio.backends import GenlabTextBackend, text_backend

    backend = text_backend(hf_folder, device="cpu")
    assert isinstance(backend, GenlabTextBackend) and not backend.chat
    assert isinstance(backend.lm.model, TransformersRunner)  # the one transformers runner
    hf, tokenizer = backend.lm.model.hf, AutoTokenizer.from_pretrained(hf_folder)
    forwards = []
    hf.register_forward_hook(lambda *_: forwards.append(1))

    # Live: the first piece comes out after the first forward pass, not after all of them.
    pieces = backend.stream("The cat", SamplingOptions(max_tokens=16, temperature=0, ignore_eot=True))
    first = next(pieces)
    assert first and len(forwards) == 1
    greedy = first + "".join(pieces)
    assert len(forwards) == 16
    # The cached loop decodes what transformers' own greedy generate() does.
    ids = tokenizer("The cat", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None,
                                     pad_token_id=tokenizer.eos_token_id)
    assert greedy == tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)

    # Sampling: one piece per token, seeded (same seed, same text; another seed, another text).
    opts = SamplingOptions(max_tokens=20, temperature=1.0, top_p=0.9, repetition_penalty=1.2, seed=7,
                           ignore_eot=True)
    sampled = list(backend.stream("The cat", opts))
    assert len(sampled) > 10 and "".join(sampled) == "".join(backend.stream("The cat", opts))
    other = "".join(backend.stream("The cat", SamplingOptions(**{**vars(opts), "seed": 8})))
    assert other != "".join(sampled)

    # A stop string ends the text just before it, and no piece of it is ever yielded.
    stop = greedy[5:7]
    stopped = list(backend.stream("The cat", SamplingOptions(max_tokens=16, temperature=0, ignore_eot=True,
                                                             stop=(stop,))))
    assert "".join(stopped) == greedy[:greedy.index(stop)] and not any(stop in p for p in stopped)
