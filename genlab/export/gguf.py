"""GGUF export (llama.cpp's format): a llama-architecture file with our byte-level BPE tokenizer.

Written with the ``gguf`` package's writer and quantizer. Two details decide whether llama.cpp
computes what PyTorch computes:

- Rotary layout. Our q/k projections (like Hugging Face's) rotate the two halves of each head,
  pairing dimension i with i + head_dim/2. llama.cpp's llama architecture rotates adjacent pairs
  (2i, 2i + 1). Reordering each head's output rows from [first half, second half] to interleaved
  pairs makes llama.cpp's rotation act on exactly the values ours does; attention scores, and so
  everything after them, are unchanged (v and o need nothing).
- Tied embeddings. With no ``output.weight`` tensor llama.cpp reuses ``token_embd``, so a tied
  model stores its matrix once.

Types: ``f16`` keeps matrices in half precision; ``q8_0`` stores blocks of 32 int8 values with one
fp16 scale (matrices whose rows are not a multiple of 32 stay f16). Norm gains are always f32.

The parity check reads the written file back (GGUFReader, dequantized, rotary order undone) into
our Transformer and compares logits with the source model; when ``llama_cpp`` (llama-cpp-python)
is installed it also runs llama.cpp itself on the file and compares its logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import genlab
from genlab import runs
from genlab.config import write_json
from genlab.data import tokenizer as tokmod
from genlab.export.common import Exporter, ExportError, ExportReport, Parity, probe_tokens
from genlab.models.transformer import LMConfig, Transformer
from genlab.runtimes.pytorch import load_float_model

TYPES = ("f16", "q8_0")
# Relative to the largest |logit| of the probe. The reader check computes in fp32 from the file's
# (rounded) weights against the source model, so it measures the rounding of the weights. llama.cpp
# is compared with that same read-back model, so its check measures what llama.cpp itself adds: in
# q8_0 products it rounds the activations to 8 bits too, block by block, and over SmolLM2's 30
# layers that came to 7.8% of the largest logit against the source (2.61 of 33.5; the weights alone:
# 2.7%). Measured on the tiny test model: f16 ~0.06%, q8_0 ~1.5% for both; a missing rotary
# reordering gives ~75%.
READER_RELATIVE_TOLERANCE = {"f16": 0.005, "q8_0": 0.05}
LLAMA_CPP_RELATIVE_TOLERANCE = {"f16": 0.005, "q8_0": 0.10}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ExportError("GGUF export needs the gguf package; pip install 'genlab[export]'") from None
    return gguf


def to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head from rotate-half order (i, i + d/2) into adjacent pairs (2i, 2i + 1)."""
    rows, cols = w.shape
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def from_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, cols).transpose(1, 2).reshape(rows, cols)


def _tensor_names(gguf, cfg: LMConfig) -> dict[str, str]:
    """Our weight names -> GGUF's llama tensor names (taken from the gguf package's tables)."""
    T, name = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES
    out = {"embed.weight": name[T.TOKEN_EMBD] + ".weight", "norm.weight": name[T.OUTPUT_NORM] + ".weight",
           "lm_head.weight": name[T.OUTPUT] + ".weight"}
    per_layer = {"input_norm": T.ATTN_NORM, "attn.q_proj": T.ATTN_Q, "attn.k_proj": T.ATTN_K,
                 "attn.v_proj": T.ATTN_V, "attn.o_proj": T.ATTN_OUT, "post_attn_norm": T.FFN_NORM,
                 "mlp.gate_proj": T.FFN_GATE, "mlp.up_proj": T.FFN_UP, "mlp.down_proj": T.FFN_DOWN}
    for i in range(cfg.n_layer):
        for ours, t in per_layer.items():
            out[f"layers.{i}.{ours}.weight"] = name[t].format(bid=i) + ".weight"
    return out


def _vocab(tok_path: Path, vocab_size: int, gguf) -> tuple[list[str], list[int], list[str], int]:
    """Tokens by id, their types, the merges, and the id of <|endoftext|>."""
    spec = json.loads(tok_path.read_text())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError("GGUF export supports byte-level BPE tokenizers only (this run uses a "
                          f"{model.get('type', 'unknown')} tokenizer); train with --tokenizer bpe")
    by_id = {i: t for t, i in model["vocab"].items()}
    special = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    by_id.update({a["id"]: a["content"] for a in spec.get("added_tokens", [])})
    if len(by_id) > vocab_size:
        raise ExportError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):  # a model vocabulary padded past the tokenizer gets unused slots
        t = by_id.get(i)
        tokens.append(t if t is not None else f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED if t is None else
                     gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    eot = model["vocab"].get(tokmod.EOT, next((a["id"] for a in spec.get("added_tokens", [])
                                                if a["content"] == tokmod.EOT), None))
    if eot is None:
        raise ExportError(f"the tokenizer has no {tokmod.EOT} token")
    return tokens, [int(t) for t in types], merges, eot


def _write(model: Transformer, tok_path: Path, path: Path, qtype: str, name: str,
           chat_template: str | None = None) -> None:
    gguf = _gguf()
    cfg = model.cfg
    tokens, types, merges, eot = _vocab(tok_path, cfg.vocab_size, gguf)
    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_string("genlab.version", genlab.__version__)
    w.add_context_length(cfg.context)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.ffn_hidden)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_kv_head)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    w.add_tokenizer_pre("gpt-2")  # our pre-tokenizer is GPT-2's regex split, without a prefix space
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(False)  # our models are trained without a leading BOS
    w.add_add_eos_token(False)
    if chat_template:  # an instruct run keeps its template in the file, as llama.cpp expects
        w.add_chat_template(chat_template)

    names = _tensor_names(gguf, cfg)
    for ours, t in runs.weights_of(model).items():  # a tied LM head appears once, as embed.weight
        t = t.float()
        if ours.endswith("attn.q_proj.weight"):
            t = to_interleaved(t, cfg.n_head)
        elif ours.endswith("attn.k_proj.weight"):
            t = to_interleaved(t, cfg.n_kv_head)
        arr = t.numpy()
        if arr.ndim == 1:
            w.add_tensor(names[ours], arr.astype(np.float32))
        elif qtype == "q8_0" and arr.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
            w.add_tensor(names[ours], gguf.quants.quantize(arr, Q.Q8_0), raw_dtype=Q.Q8_0)
        else:
            w.add_tensor(names[ours], arr.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _reader(path: Path):
    """A GGUFReader, with one-line errors for a missing, foreign or truncated file."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"'{path}' does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ExportError(f"'{path}' is not a GGUF file (no GGUF magic at its start)")
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, IndexError, OSError, EOFError) as e:  # numpy memmap of a cut file, bad offsets
        raise ExportError(f"'{path}' is a damaged or truncated GGUF file ({str(e).splitlines()[0][:100]})") from None


def read_gguf(path: Path, context: int | None = None) -> tuple[Transformer, dict]:
    """Our Transformer with the weights of a llama-architecture GGUF file (any type the gguf package
    dequantizes: F32/F16/BF16/Q8_0/Q4_0/Q4_1/K-quants), rotary order undone, and the file's metadata."""
    gguf = _gguf()
    reader = _reader(path)

    def field(key: str, default=None):
        f = reader.fields.get(key)
        if f is None:
            if default is None:
                raise ExportError(f"{path}: the GGUF metadata has no {key}")
            return default
        return f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ExportError(f"{path}: architecture '{arch}' is not one genlab has (it imports llama-architecture GGUF "
                          f"files: Llama, SmolLM, TinyLlama, ...)")
    tensors = {t.name: t for t in reader.tensors}
    n_head, d_model = int(field("llama.attention.head_count")), int(field("llama.embedding_length"))
    rope_dim = int(field("llama.rope.dimension_count", d_model // n_head))
    if rope_dim != d_model // n_head:
        raise ExportError(f"{path}: partial rotary embeddings ({rope_dim} of {d_model // n_head} dims) are not supported")
    max_ctx = int(field("llama.context_length"))
    vocab = int(field("llama.vocab_size", len(reader.fields["tokenizer.ggml.tokens"].data)
                      if "tokenizer.ggml.tokens" in reader.fields else 0))
    cfg = LMConfig(
        vocab_size=vocab, context=min(context or max_ctx, max_ctx),
        n_layer=int(field("llama.block_count")), n_head=n_head,
        n_kv_head=int(field("llama.attention.head_count_kv", n_head)), d_model=d_model,
        ffn_hidden=int(field("llama.feed_forward_length")), rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        norm_eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in tensors)
    model = Transformer(cfg).eval()
    names = _tensor_names(gguf, cfg)
    state, types = {}, set()
    for ours in runs.weights_of(model):
        if names[ours] not in tensors:
            raise ExportError(f"{path}: tensor {names[ours]} is missing; not a complete llama model")
        t = tensors[names[ours]]
        types.add(t.tensor_type.name)
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ExportError(f"{path}: tensor type {t.tensor_type.name} cannot be dequantized by the gguf package") from None
        w = torch.from_numpy(np.asarray(arr, dtype=np.float32).copy())
        w = w.reshape([int(d) for d in reversed(t.shape.tolist())]) if w.dim() > 1 or len(t.shape) > 1 else w
        # llama.cpp stores q and k rows interleaved per head for its rotary kernel: undo it.
        if ours.endswith("attn.q_proj.weight"):
            w = from_interleaved(w, cfg.n_head)
        elif ours.endswith("attn.k_proj.weight"):
            w = from_interleaved(w, cfg.n_kv_head)
        state[ours] = w
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ExportError(f"{path}: a tensor's shape does not match the metadata ({str(e).splitlines()[-1].strip()})") from None
    meta = {"name": field("general.name", ""), "tensor_types": sorted(types), "context_length": max_ctx,
            "chat_template": field("tokenizer.chat_template", "") or None,
            "eos_token_id": field("tokenizer.ggml.eos_token_id", -1)}
    return model, meta


def read_gguf_model(path: Path) -> Transformer:
    """Our Transformer with the weights of a GGUF file (for checking what genlab's export wrote)."""
    return read_gguf(path)[0]


def gguf_tokenizer(path: Path):
    """The file's tokenizer as a ``tokenizers.Tokenizer``, rebuilt from its metadata by transformers'
    GGUF converter (it knows the pre-tokenizers llama.cpp names, e.g. "smollm")."""
    from genlab.quiet import quiet

    try:  # its first import loads torchao, which reports the CUDA kernels it cannot load on stderr
        with quiet("transformers", "torchao", root=True, fds=True):
            from transformers import AutoTokenizer
    except ImportError:
        raise ExportError("importing a GGUF file needs transformers (its GGUF tokenizer converter): "
                          "pip install transformers") from None
    path = Path(path)

    with quiet("transformers"):
        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except (ValueError, KeyError, OSError) as e:
            raise ExportError(f"{path}: cannot rebuild its tokenizer ({str(e).splitlines()[0][:120]})") from None
    return tok.backend_tokenizer


@torch.no_grad()
def import_gguf(src: str | Path, out: str | Path, context: int | None = None, overwrite: bool = False,
                log=print) -> ExportReport:
    """Make a genlab run from a llama-architecture GGUF file: dequantized fp32 weights, tokenizer.json
    rebuilt from the file, its end-of-turn token and chat template kept in config.json. Parity is
    measured against llama.cpp when installed, else transformers' own GGUF loader."""
    src, out = Path(src), Path(out)
    model, meta = read_gguf(src, context)
    tok = gguf_tokenizer(src)
    eos_id = int(meta["eos_token_id"])
    eos = tok.id_to_token(eos_id) if eos_id >= 0 else None
    log(f"{src.name}: {meta['name'] or 'llama'}, {model.num_params():,} parameters, "
        f"{model.cfg.n_layer} layers, tensors {', '.join(meta['tensor_types'])}, context {model.cfg.context}"
        f"{' of ' + str(meta['context_length']) if model.cfg.context < meta['context_length'] else ''}")
    with runs.staged_dir(out, overwrite, ExportError) as tmp:
        write_json(tmp / runs.CONFIG, {
            "family": "lm", "genlab_version": genlab.__version__, "preset": None, "model": model.cfg.to_dict(),
            "imported_from": {"path": str(src), "format": "gguf", "name": meta["name"],
                              "tensor_types": meta["tensor_types"]},
            "eos_token": eos, "chat_template": meta["chat_template"], "data": None,
        })
        (tmp / runs.TOKENIZER).write_text(tok.to_str())
        runs.save_weights(tmp, model, {"family": "lm", "imported_from": str(src)})
        checks, unchecked = _check_gguf_import(model, src)
        for c in checks:
            log(c.line())
            c.check()
        for reason in unchecked:
            log(f"parity: {reason}")
    return ExportReport("gguf-import", out, sorted(out.iterdir()), checks, unchecked=unchecked)


def _check_gguf_import(model: Transformer, src: Path) -> tuple[list[Parity], list[str]]:
    """The imported model against an implementation that read the file on its own."""
    ids = probe_tokens(model.cfg.vocab_size, min(16, model.cfg.context))
    ref = model(ids)[0]
    scale = ref.abs().max().item()
    cpp = llama_cpp_logits(src, ids[0].tolist(), min(model.cfg.context, 512))
    if cpp is not None:
        return [Parity(f"genlab vs llama.cpp, {ids.shape[1]} tokens", float(np.abs(cpp - ref.numpy()).max()),
                       LLAMA_CPP_RELATIVE_TOLERANCE["q8_0"] * scale, scale)], []
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError:
        return [], ["not measured: neither llama-cpp-python nor transformers is installed"]
    from genlab.quiet import quiet

    # transformers reads the file with its own code (config, tensor names, q/k permutation).
    with quiet("transformers", fds=True):  # its progress bar
        config = {k: v for k, v in load_gguf_checkpoint(str(src))["config"].items() if not k.startswith(("model_type", "_"))}
        hf = LlamaForCausalLM(LlamaConfig(**config)).eval()
        tensors = load_gguf_checkpoint(str(src), return_tensors=True, model_to_load=hf)["tensors"]
        hf.load_state_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, strict=False)
        if config.get("tie_word_embeddings"):
            hf.tie_weights()
    got = hf(ids).logits[0]
    # Both dequantize the same stored values to fp32, so only summation order differs.
    return [Parity(f"genlab vs transformers' GGUF reader ({type(hf).__name__}), {ids.shape[1]} tokens",
                   (got - ref).abs().max().item(), 1e-3 * max(scale, 1.0), scale)], \
        ["llama.cpp's logits: llama-cpp-python is not installed (make gguf-check)"]


def llama_cpp_logits(path: Path, ids: list[int], n_ctx: int) -> np.ndarray | None:
    """llama.cpp's logits for every position of ``ids`` (None when llama-cpp-python is missing)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2, seed=0)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return logits


@torch.no_grad()
def gguf_parity(model: Transformer, path: Path, qtype: str) -> list[Parity]:
    ids = probe_tokens(model.cfg.vocab_size, min(32, model.cfg.context))
    ref = model(ids)[0]
    scale = ref.abs().max().item()
    back = read_gguf_model(path)(ids)[0]
    checks = [Parity(f"GGUF {qtype} read back into PyTorch vs source model, {ids.shape[1]} tokens",
                     (back - ref).abs().max().item(), READER_RELATIVE_TOLERANCE[qtype] * scale, scale)]
    cpp = llama_cpp_logits(path, ids[0].tolist(), model.cfg.context)
    if cpp is not None:  # against the file's own weights: what llama.cpp's arithmetic adds
        checks.append(Parity(f"llama.cpp {qtype} vs the file read back into PyTorch, {ids.shape[1]} tokens",
                             float(np.abs(cpp - back.numpy()).max()), LLAMA_CPP_RELATIVE_TOLERANCE[qtype] * scale,
                             scale))
    return checks


def export_gguf(run: str | Path, out: str | Path, qtype: str = "f16", overwrite: bool = False,
                log=print) -> ExportReport:
    if qtype not in TYPES:
        raise ExportError(f"unknown GGUF type '{qtype}'; choose one of: {', '.join(TYPES)}")
    run, out = Path(run), Path(out)
    if out.suffix != ".gguf":
        raise ExportError(f"--out for gguf must end in .gguf (got '{out}')")
    model, cfg = load_float_model(run)
    with runs.staged_file(out, overwrite, ExportError) as tmp:
        _write(model, run / runs.TOKENIZER, tmp, qtype, name=run.name, chat_template=cfg.get("chat_template"))
        checks = gguf_parity(model, tmp, qtype)
        for c in checks:
            log(c.line())
        unchecked = []
        if len(checks) == 1:
            log("parity: llama.cpp not run (pip install llama-cpp-python to check the file with llama.cpp)")
            unchecked.append("llama.cpp's own logits: llama-cpp-python is not installed (make gguf-check)")
        for c in checks:
            c.check()
    return ExportReport("gguf", out, [out], checks, unchecked=unchecked)


EXPORTER = Exporter(
    name="gguf", summary="one .gguf file for llama.cpp (LM; --type f16 or q8_0)", families=("lm",),
    options=("gguf_type",), default_name=lambda run, opts: f"{run.name}-{opts.gguf_type}.gguf",
    export=lambda run, out, opts, overwrite, log: export_gguf(run, out, opts.gguf_type, overwrite, log))
