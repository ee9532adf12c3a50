"""Hugging Face interop: a genlab LM as a ``LlamaForCausalLM`` folder, and a local Llama-family
checkpoint as a genlab run.

Our model mirrors Llama (RMSNorm, rotary embeddings in the rotate-half layout, GQA, SwiGLU, optional
tied embeddings), so the conversion is a renaming of tensors plus a config.json; nothing is
permuted. The export's parity check loads the folder with ``transformers`` (when installed) and
compares logits with ours; without transformers it reads the folder back through the importer.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import genlab
from genlab import runs
from genlab.config import write_json
from genlab.data import tokenizer as tokmod
from genlab.errors import ConfigError, RunError
from genlab.export.common import Exporter, ExportError, ExportReport, Parity, probe_tokens
from genlab.models.transformer import LMConfig, Transformer
from genlab.runtimes.pytorch import load_float_model

TOLERANCE = 1e-4  # fp32 both sides: only summation order differs
IMPORT_TOLERANCE = 1e-3  # imported weights may be bf16/fp16, upcast identically on both sides

# genlab name pattern -> Hugging Face name pattern ({i}: layer index)
_NAMES = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("layers.{i}.input_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attn.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("layers.{i}.attn.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("layers.{i}.attn.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("layers.{i}.attn.o_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("layers.{i}.post_attn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("layers.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("layers.{i}.mlp.down_proj.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


_TO_HF = [(_pattern(g), h) for g, h in _NAMES]
_FROM_HF = [(_pattern(h), g) for g, h in _NAMES]


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pat, template in table:
        m = pat.match(name)
        if m:
            return template.format(i=m.group(1)) if m.groups() else template
    return None


def hf_config(cfg: LMConfig, bos_id: int | None, eos_id: int | None) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        "genlab_version": genlab.__version__,
    }


def write_tokenizer_files(tok_path: Path, out: Path, context: int) -> None:
    """tokenizer.json plus the two small files AutoTokenizer reads to know its class and specials."""
    tok = tokmod.load(tok_path)
    shutil.copyfile(tok_path, out / "tokenizer.json")
    eot = tokmod.EOT if tok.token_to_id(tokmod.EOT) is not None else None
    specials = {"bos_token": eot, "eos_token": eot,
                "unk_token": tokmod.UNK if tok.token_to_id(tokmod.UNK) is not None else eot}
    specials = {k: v for k, v in specials.items() if v is not None}
    write_json(out / "special_tokens_map.json", specials)
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": context,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,  # genlab models are trained without a leading BOS
        "add_eos_token": False,
    })


@torch.no_grad()
def export_hf(run: str | Path, out: str | Path, overwrite: bool = False, log=print) -> ExportReport:
    """Write ``out``/ with model.safetensors, config.json and tokenizer files; check parity."""
    run, out = Path(run), Path(out)
    model, _ = load_float_model(run)
    cfg = model.cfg
    tok = tokmod.load(run / runs.TOKENIZER)
    eot = tok.token_to_id(tokmod.EOT)
    tensors = {}
    for name, t in runs.weights_of(model).items():  # a tied LM head is stored once, as the embedding
        hf_name = _rename(name, _TO_HF)
        if hf_name is None:
            raise RunError(f"unexpected tensor '{name}' in {run}; cannot map it to Llama")
        tensors[hf_name] = t.float().contiguous()
    with runs.staged_dir(out, overwrite, ExportError) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", hf_config(cfg, eot, eot))
        write_json(tmp / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot})
        write_tokenizer_files(run / runs.TOKENIZER, tmp, cfg.context)
        parity = _check_export(model, tmp)
        log(parity.line())
        parity.check()
    return ExportReport("hf", out, sorted(out.iterdir()), [parity])


EXPORTER = Exporter(
    name="hf", summary="Hugging Face folder (Llama config, safetensors, tokenizer) for transformers", families=("lm",),
    options=(), default_name=lambda run, opts: f"{run.name}-hf",
    export=lambda run, out, opts, overwrite, log: export_hf(run, out, overwrite, log))


def _check_export(model: Transformer, folder: Path) -> Parity:
    ids = probe_tokens(model.cfg.vocab_size, min(32, model.cfg.context))
    ref = model(ids)
    try:
        import transformers  # noqa: F401
    except ImportError:
        back, _ = read_hf_model(folder)
        got, what = back(ids), "re-imported folder vs PyTorch (transformers not installed)"
    else:
        from genlab.runtimes.hf import TransformersRunner

        runner = TransformersRunner(folder, device="cpu")
        got, what = runner(ids), f"transformers {type(runner.hf).__name__} vs genlab, {ids.shape[1]} tokens"
    diff = (got.float() - ref.float()).abs().max().item()
    return Parity(what, diff, TOLERANCE, ref.abs().max().item())


# ---- import -----------------------------------------------------------------------------------

def _config_from_hf(hf: dict, src: Path, context: int | None) -> LMConfig:
    where = f"{src}/config.json"
    kind = hf.get("model_type")
    if kind is None:
        raise ConfigError(f"{where} has no model_type; is '{src}' a Hugging Face model folder?")
    if kind != "llama":
        raise ConfigError(f"{where}: model_type '{kind}' is not supported; genlab imports Llama-family "
                          f"checkpoints (model_type 'llama')")
    rope = hf.get("rope_parameters") or {}  # transformers 5 writes rope settings here, 4.x in rope_*
    scaling = hf.get("rope_scaling") or rope
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type not in (None, "default"):
        raise ConfigError(f"{where}: rope scaling '{rope_type}' is not supported (genlab uses plain RoPE)")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ConfigError(f"{where}: {flag} is not supported (genlab's layers have no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act '{hf['hidden_act']}' is not supported (genlab uses SiLU)")
    n_head = hf["num_attention_heads"]
    d_model = hf["hidden_size"]
    if hf.get("head_dim") not in (None, d_model // n_head):
        raise ConfigError(f"{where}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads; "
                          f"not supported")
    max_pos = hf.get("max_position_embeddings", 2048)
    cfg = LMConfig(
        vocab_size=hf["vocab_size"], context=min(context or max_pos, max_pos), n_layer=hf["num_hidden_layers"],
        n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head, d_model=d_model,
        ffn_hidden=hf["intermediate_size"], rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    cfg.validate()
    return cfg


def _weight_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise RunError(f"{index} is not a valid safetensors index (no weight_map)") from None
        files = [src / f for f in dict.fromkeys(weight_map.values())]
    elif (src / "model.safetensors").exists():
        files = [src / "model.safetensors"]
    elif any(src.glob("*.bin")) or any(src.glob("*.pt")):
        raise RunError(f"{src} holds pickled PyTorch weights, which genlab never loads; "
                       f"save the model with safetensors (save_pretrained(..., safe_serialization=True))")
    else:
        raise RunError(f"{src} has no model.safetensors or model.safetensors.index.json")
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise RunError(f"{src}: weight shard(s) missing: {', '.join(missing[:3])}")
    return files


def read_hf_model(src: Path, context: int | None = None) -> tuple[Transformer, list[str]]:
    """Our Transformer from a Llama folder's config.json and safetensors (any float dtype, upcast to
    fp32), and the dtypes the checkpoint was stored in."""
    src = Path(src)
    if not (src / "config.json").exists():
        raise RunError(f"'{src}' is not a Hugging Face model folder: it has no config.json")
    try:
        hf = json.loads((src / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{src}/config.json is not valid JSON ({e.msg})") from None
    cfg = _config_from_hf(hf, src, context)
    state: dict[str, torch.Tensor] = {}
    dtypes: set[str] = set()
    for path in _weight_files(src):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if name.endswith("rotary_emb.inv_freq"):  # recomputed from rope_theta
                        continue
                    ours = _rename(name, _FROM_HF)
                    if ours is None:
                        raise ConfigError(f"{path.name}: tensor '{name}' has no place in a Llama model "
                                          f"(unsupported architecture feature)")
                    t = f.get_tensor(name)
                    dtypes.add(str(t.dtype).replace("torch.", ""))
                    state[ours] = t.float()
        except SafetensorError as e:
            raise RunError(f"{path} is not a readable safetensors file ({e})") from None
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    model = Transformer(cfg)
    expected = set(runs.weights_of(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ConfigError(f"{src}: weights do not match config.json (missing {missing[:3]}, unexpected {extra[:3]})")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ConfigError(f"{src}: a weight's shape does not match config.json ({str(e).splitlines()[-1].strip()})") from None
    return model.eval(), sorted(dtypes)


@torch.no_grad()
def import_hf(src: str | Path, out: str | Path, context: int | None = None, overwrite: bool = False,
              log=print) -> Parity | None:
    """Make a genlab run from a local Llama-family folder (config.json, safetensors, tokenizer.json)."""
    src, out = Path(src), Path(out)
    model, dtypes = read_hf_model(src, context)
    tok_path = src / "tokenizer.json"
    if not tok_path.exists():
        raise RunError(f"{src} has no tokenizer.json (a fast tokenizer); save one with "
                       f"AutoTokenizer.from_pretrained(...).save_pretrained('{src}')")
    tok = tokmod.load(tok_path)
    hf = json.loads((src / "config.json").read_text())
    eos_id = hf.get("eos_token_id")
    eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
    eos = tok.id_to_token(eos_id) if isinstance(eos_id, int) else None
    with runs.staged_dir(out, overwrite, ExportError) as tmp:
        write_json(tmp / runs.CONFIG, {
            "family": "lm",
            "genlab_version": genlab.__version__,
            "preset": None,
            "model": model.cfg.to_dict(),
            "imported_from": {"path": str(src), "format": "hf", "model_type": hf.get("model_type"),
                              "dtypes": dtypes},
            "eos_token": eos,
            "data": None,
        })
        shutil.copyfile(tok_path, tmp / runs.TOKENIZER)
        runs.save_weights(tmp, model, {"family": "lm", "imported_from": str(src)})
        parity = _check_import(model, src)
        if parity is not None:
            log(parity.line())
            parity.check()
        else:
            log("parity: skipped (transformers is not installed)")
    return parity


def _check_import(model: Transformer, src: Path) -> Parity | None:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    ids = probe_tokens(model.cfg.vocab_size, min(32, model.cfg.context))
    ref = hf(ids).logits
    diff = (model(ids) - ref).abs().max().item()
    return Parity(f"genlab vs transformers {type(hf).__name__}, {ids.shape[1]} tokens", diff,
                  IMPORT_TOLERANCE, ref.abs().max().item())
