"""genlab finetune: LoRA adapters through peft (trained by the shared trainer, stored alone, opened
unmerged by the pytorch runtime, merged into an ordinary run), QLoRA over a frozen quantized base,
and full fine-tuning."""

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import genlab
from genlab import runs
from genlab.config import DataConfig, train_config
from genlab.data import prepare as prep
from genlab.data import tokenizer as tokmod
from genlab.errors import ConfigError, RunError
from genlab.models.quantized import QuantLinear, QuantSpec, dequantize
from genlab.runtimes.pytorch import load_float_model
from genlab.runtimes.registry import open_lm
from genlab.train import finetune as ft
from genlab.train.lm import LMTask
from genlab.train.trainer import Interrupted

from .conftest import GENLAB, ROOT, ctrl_c_during_batch

WORDS = "zebra quartz jolly vexing fjord nymph waltz crisp".split()  # text the base never saw


@pytest.fixture(scope="module")
def new_text(tmp_path_factory):
    d = tmp_path_factory.mktemp("newtext")
    rng = random.Random(5)
    for i in range(12):
        lines = (" ".join(rng.choice(WORDS) for _ in range(6)).capitalize() + "." for _ in range(40))
        (d / f"n{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return d


def lora_spec(run, base, new_text, steps=20, resume=False, **lora):
    tcfg = train_config(None, steps=steps, eval_every=10, checkpoint_every=10, batch_size=8, lr=1e-2,
                        warmup_steps=2, log_every=1)
    return ft.FinetuneSpec(run=run, base=base, data=DataConfig(corpus=[str(new_text)]), method="lora",
                           lora=ft.LoraSettings(**lora), train=tcfg, resume=resume, quiet=True)


@pytest.fixture(scope="module")
def base(request, one_thread):
    """The shared tiny LM (conftest's trained_run), made on one thread when this module is the first to ask."""
    return request.getfixturevalue("trained_run")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base, new_text):
    run = tmp_path_factory.mktemp("ft") / "lora"
    before = (base / runs.WEIGHTS).read_bytes()
    result = ft.finetune(lora_spec(run, base, new_text))
    assert (base / runs.WEIGHTS).read_bytes() == before  # the base is never written
    return run, result


def _val_loss(model, run, new_text):
    data = prep.prepare(DataConfig(corpus=[str(new_text)]), tok=tokmod.load(run / runs.TOKENIZER), log=lambda m: None)
    return LMTask(model, data, 8, 20).evaluate(model)["loss"]


def test_lora_trains_only_the_adapters_and_the_run_loads(lora_run, base, new_text):
    run, result = lora_run
    base_model, _ = load_float_model(base)
    base_loss = _val_loss(base_model, base, new_text)
    assert result.val["loss"] < base_loss - 0.5, (base_loss, result.val)

    # the run holds the adapters alone: no full weights
    assert not (run / runs.WEIGHTS).exists()
    adapters = load_file(str(run / ft.ADAPTER))
    n_layer = json.loads((base / runs.CONFIG).read_text())["model"]["n_layer"]
    assert len(adapters) == 2 * 7 * n_layer
    assert all(".lora_A." in k or ".lora_B." in k for k in adapters)
    assert (run / ft.ADAPTER).stat().st_size < (base / runs.WEIGHTS).stat().st_size / 3
    # the optimizer state covers the adapter parameters only
    state = runs.load_train_state(run)
    assert len(state["optimizer"]["state"]) == len(adapters)

    cfg = json.loads((run / runs.CONFIG).read_text())
    sec = cfg["finetune"]
    assert sec["method"] == "lora" and sec["rank"] == 8 and sec["alpha"] == 16 and sec["dropout"] == 0.05
    assert sec["targets"] == list(ft.LORA_TARGETS)
    assert sec["base"] == str(base.resolve()) and sec["base_sha256"] == ft.weights_sha256(base)

    # opened unmerged: the base's weights are untouched in the model, the adapters are peft's layers
    opened = open_lm(run, device="cpu")
    assert any(".lora_A." in n for n, _ in opened.runner.named_parameters())
    assert _val_loss(opened.runner, run, new_text) == pytest.approx(result.val["loss"], abs=1e-5)
    lm = genlab.load(run, device="cpu")
    text = lm.generate("Zebra", max_tokens=20, seed=0)
    assert isinstance(text, str) and text


def test_a_manifest_names_the_adapters_and_their_base(lora_run, base):
    """The studio's record of a LoRA run (it has no model.safetensors): its adapters' hash and the base's."""
    from genlab.studio.backends import run_record

    run, _ = lora_run
    record = run_record(run, "text")
    assert record["adapter_sha256"] == runs.file_sha256(run / ft.ADAPTER) and record["method"] == "lora"
    assert Path(record["base"]).resolve() == base.resolve()
    assert record["base_weights_sha256"] == runs.file_sha256(base / runs.WEIGHTS)
    assert "weights_sha256" not in record


def test_merge_matches_the_unmerged_run(lora_run, tmp_path):
    run, _ = lora_run
    merged = ft.merge(run, tmp_path / "merged")
    cfg = json.loads((merged / runs.CONFIG).read_text())
    assert "finetune" not in cfg and cfg["family"] == "lm"
    assert {p.name for p in merged.iterdir()} == {runs.CONFIG, runs.WEIGHTS, runs.TOKENIZER}

    unmerged, plain = open_lm(run, device="cpu"), open_lm(merged, device="cpu")
    assert not any(".lora_" in n for n, _ in plain.runner.named_parameters())
    idx = torch.randint(0, plain.runner.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = unmerged.runner(idx), plain.runner(idx)
    assert (a - b).abs().max().item() < 1e-5
    # exporters read a LoRA run merged too
    model, _ = load_float_model(run)
    with torch.no_grad():
        assert (model(idx) - b).abs().max().item() < 1e-5
    with pytest.raises(RunError, match="already exists"):
        ft.merge(run, merged)


@pytest.mark.parametrize("quant", [QuantSpec("int4", 16), QuantSpec("int8")], ids=["int4", "int8"])
def test_qlora_trains_adapters_over_a_frozen_quantized_base(tmp_path, base, new_text, quant):
    spec = lora_spec(tmp_path / "q", base, new_text)
    spec.method, spec.quant = "qlora", quant
    result = ft.finetune(spec)
    base_model, _ = load_float_model(base)
    assert result.val["loss"] < _val_loss(base_model, base, new_text) - 0.5
    sec = json.loads((tmp_path / "q" / runs.CONFIG).read_text())["finetune"]
    assert sec["method"] == "qlora" and sec["quantization"]["method"] == quant.method
    assert not (tmp_path / "q" / runs.WEIGHTS).exists()

    # opened unmerged: peft's LoRA layers around genlab's quantized layers, the base held as integers
    opened = open_lm(tmp_path / "q", device="cpu")
    q_proj = opened.runner.layers[0].attn.q_proj
    assert isinstance(q_proj.get_base_layer(), QuantLinear)
    assert q_proj.get_base_layer().qweight.dtype in (torch.int8, torch.uint8)
    assert _val_loss(opened.runner, tmp_path / "q", new_text) == pytest.approx(result.val["loss"], abs=1e-5)
    # merged into the dequantized base: the same function as a plain float run
    merged = open_lm(ft.merge(tmp_path / "q", tmp_path / "m"), device="cpu")
    assert not any(isinstance(m, QuantLinear) for m in merged.runner.modules())
    idx = torch.randint(0, merged.runner.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (opened.runner(idx) - merged.runner(idx)).abs().max().item() < 1e-4


def test_quantized_linear_backward_matches_the_float_layer():
    """QLoRA's frozen layers recompute the float weight in the backward pass instead of saving it;
    the input gradient must equal that of the dequantized float layer."""
    w = torch.randn(24, 32, generator=torch.Generator().manual_seed(0))
    for spec in (QuantSpec("int8"), QuantSpec("int4", 16)):
        layer = QuantLinear(24, 32, spec)
        layer.set_from(w, spec)
        x = torch.randn(3, 5, 32, requires_grad=True)
        layer(x).square().sum().backward()
        x2 = x.detach().clone().requires_grad_(True)
        torch.nn.functional.linear(x2, dequantize(layer.qweight, layer.scale, layer.bits)).square().sum().backward()
        assert torch.allclose(x.grad, x2.grad, atol=1e-5)


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, base, new_text, monkeypatch):
    straight = ft.finetune(lora_spec(tmp_path / "a", base, new_text))
    ctrl_c_during_batch(monkeypatch, ft.LoraTask, 10)  # a Ctrl-C during step 10 of the same 20-step run
    with pytest.raises(Interrupted, match="stopped at step 10"):
        ft.finetune(lora_spec(tmp_path / "b", base, new_text))
    monkeypatch.undo()
    resumed = ft.finetune(lora_spec(tmp_path / "b", None, new_text, resume=True))
    assert [s for s, _ in resumed.losses] == list(range(11, 21))
    assert resumed.losses == straight.losses[10:]  # bit-for-bit
    assert resumed.val == straight.val
    a, b = load_file(str(tmp_path / "a" / ft.ADAPTER)), load_file(str(tmp_path / "b" / ft.ADAPTER))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_base_is_refused(tmp_path, base, new_text):
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    ft.finetune(lora_spec(tmp_path / "r", copy, new_text, steps=2, targets=["q_proj", "v_proj"], rank=2))
    assert load_file(str(tmp_path / "r" / ft.ADAPTER)).keys() >= {"layers.0.attn.q_proj.lora_A.weight"}
    weights = load_file(str(copy / runs.WEIGHTS))
    weights["norm.weight"] = weights["norm.weight"] + 1
    save_file(weights, str(copy / runs.WEIGHTS))
    for action in (lambda: genlab.load(tmp_path / "r", device="cpu"),
                   lambda: ft.merge(tmp_path / "r", tmp_path / "m"),
                   lambda: ft.finetune(lora_spec(tmp_path / "r", None, new_text, steps=4, resume=True))):
        with pytest.raises(RunError, match="changed since"):
            action()
    assert not (tmp_path / "m").exists()


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, base, new_text):
    out = tmp_path / "out"
    bad = [dict(rank=0), dict(targets=["nope_proj"]), dict(dropout=1.0), dict(targets=[])]
    for lora in bad:
        with pytest.raises(ConfigError):
            ft.finetune(lora_spec(out, base, new_text, **lora))
    with pytest.raises(ConfigError, match="unknown --method"):
        ft.finetune(ft.FinetuneSpec(run=out, base=base, method="dora", train=train_config(None, steps=1)))
    gan = tmp_path / "gan"
    gan.mkdir()
    (gan / runs.CONFIG).write_text(json.dumps({"family": "gan"}))
    with pytest.raises(RunError, match="language-model run"):
        ft.finetune(lora_spec(out, gan, new_text))
    with pytest.raises(RunError, match="not a LoRA run"):
        ft.merge(base, tmp_path / "m")
    assert not out.exists() and not (tmp_path / "m").exists()


def test_full_fine_tuning_is_train_lm_init_from(tmp_path, base, new_text):
    tcfg = train_config(None, steps=3, eval_every=3, checkpoint_every=3, batch_size=8, lr=1e-3)
    ft.finetune(ft.FinetuneSpec(run=tmp_path / "full", base=base, data=DataConfig(corpus=[str(new_text)]),
                                method="full", train=tcfg, quiet=True))
    cfg = json.loads((tmp_path / "full" / runs.CONFIG).read_text())
    assert cfg["init_from"] == str(base) and "finetune" not in cfg
    assert (tmp_path / "full" / runs.WEIGHTS).exists()


def _cli(*args):
    return subprocess.run(GENLAB + [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_finetune_merge_and_errors(tmp_path, base, new_text):
    run, merged = tmp_path / "lora", tmp_path / "merged"
    done = _cli("finetune", base, "--data", new_text, "--out", run, "--steps", 4, "--batch-size", 4,
                "--lora-rank", 4, "--lora-targets", "q_proj,v_proj,down_proj", "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    sec = json.loads((run / runs.CONFIG).read_text())["finetune"]
    assert sec["rank"] == 4 and sec["targets"] == ["q_proj", "v_proj", "down_proj"]
    done = _cli("finetune", "--merge", run, "--out", merged)
    assert done.returncode == 0, done.stderr
    assert (merged / runs.WEIGHTS).exists()

    for args, says in [(("--method", "dora"), "unknown --method"), (("--lora-rank", 0), "--lora-rank"),
                       (("--method", "qlora", "--quant", "int2"), "--quant"),
                       (("--group-size", 16), "applies to --method qlora")]:
        bad = _cli("finetune", base, "--data", new_text, "--out", tmp_path / "bad", "--steps", 2, *args)
        assert bad.returncode == 2, bad.stderr
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], bad.stderr
        assert not (tmp_path / "bad").exists()


def test_a_shorter_training_window_keeps_the_models_context(tmp_path, base, new_text, monkeypatch):
    """--context of finetune: the base is fine-tuned on shorter windows; the run keeps the base's context."""
    spec = lora_spec(tmp_path / "w", base, new_text, steps=3)
    spec.train.window = 16
    seen = []
    real = ft.LoraTask.loss
    spec_ctx = json.loads((base / runs.CONFIG).read_text())["model"]["context"]

    def loss(self, model, batch):
        seen.append(batch[0].shape[1])
        return real(self, model, batch)

    monkeypatch.setattr(ft.LoraTask, "loss", loss)
    ft.finetune(spec)
    monkeypatch.undo()
    assert set(seen) == {16}
    cfg = json.loads((tmp_path / "w" / runs.CONFIG).read_text())
    assert cfg["train"]["window"] == 16 and cfg["model"]["context"] == spec_ctx
    for method in ("lora", "full"):
        too_long = lora_spec(tmp_path / "x", base, new_text, steps=1)
        too_long.train.window, too_long.method = spec_ctx + 1, method
        with pytest.raises(ConfigError, match="model's context"):
            ft.finetune(too_long)
        assert not (tmp_path / "x").exists()
