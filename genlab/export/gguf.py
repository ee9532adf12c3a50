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
from genlab.data import tokenizer as tokmod
from genlab.export.common import Exporter, ExportError, ExportReport, Parity, probe_tokens
from genlab.models.transformer import LMConfig, Transformer
from genlab.runtimes.pytorch import load_float_model

TYPES = ("f16", "q8_0")
# Relative to the largest |logit| of the probe. The reader check computes in fp32 from the file's
# (rounded) weights, so it measures the rounding of the weights; llama.cpp also rounds activations in
# its f16 / q8_0 dot products. Measured on the tiny test model: f16 ~0.06%, q8_0 ~1.5% for both;
# a missing rotary reordering gives ~75%.
READER_RELATIVE_TOLERANCE = {"f16": 0.005, "q8_0": 0.05}
LLAMA_CPP_RELATIVE_TOLERANCE = {"f16": 0.005, "q8_0": 0.05}


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


def _write(model: Transformer, tok_path: Path, path: Path, qtype: str, name: str) -> None:
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


def read_gguf_model(path: Path) -> Transformer:
    """Our Transformer with the weights of a GGUF file we wrote (dequantized, rotary order undone)."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))

    def field(key: str):
        return reader.fields[key].contents()

    tensors = {t.name: t for t in reader.tensors}
    cfg = LMConfig(
        vocab_size=int(field("llama.vocab_size")), context=int(field("llama.context_length")),
        n_layer=int(field("llama.block_count")), n_head=int(field("llama.attention.head_count")),
        n_kv_head=int(field("llama.attention.head_count_kv")), d_model=int(field("llama.embedding_length")),
        ffn_hidden=int(field("llama.feed_forward_length")), rope_theta=float(field("llama.rope.freq_base")),
        norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensors)
    model = Transformer(cfg).eval()
    names = _tensor_names(gguf, cfg)
    state = {}
    for ours in runs.weights_of(model):
        t = tensors[names[ours]]
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        w = torch.from_numpy(np.asarray(arr, dtype=np.float32).copy())
        w = w.reshape([int(d) for d in reversed(t.shape.tolist())]) if w.dim() > 1 or len(t.shape) > 1 else w
        if ours.endswith("attn.q_proj.weight"):
            w = from_interleaved(w, cfg.n_head)
        elif ours.endswith("attn.k_proj.weight"):
            w = from_interleaved(w, cfg.n_kv_head)
        state[ours] = w
    model.load_state_dict(state, strict=False)
    return model


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
    if cpp is not None:
        checks.append(Parity(f"llama.cpp {qtype} vs PyTorch, {ids.shape[1]} tokens",
                             float(np.abs(cpp - ref.numpy()).max()), LLAMA_CPP_RELATIVE_TOLERANCE[qtype] * scale,
                             scale))
    return checks


def export_gguf(run: str | Path, out: str | Path, qtype: str = "f16", overwrite: bool = False,
                log=print) -> ExportReport:
    if qtype not in TYPES:
        raise ExportError(f"unknown GGUF type '{qtype}'; choose one of: {', '.join(TYPES)}")
    run, out = Path(run), Path(out)
    if out.suffix != ".gguf":
        raise ExportError(f"--out for gguf must end in .gguf (got '{out}')")
    model, _ = load_float_model(run)
    with runs.staged_file(out, overwrite, ExportError) as tmp:
        _write(model, run / runs.TOKENIZER, tmp, qtype, name=run.name)
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
