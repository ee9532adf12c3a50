"""What the exporters share: all-or-nothing output folders and files. Also the helper that makes
random runs for the export tests."""

import json
import shutil
import sys

import pytest
import torch

from genlab import runs
from genlab.errors import RunError
from genlab.export.common import ExportError, Parity
from genlab.models.transformer import LMConfig, Transformer
from genlab.runs import staged_dir, staged_file


def random_run(path, trained_run, seed=0, **model):
    """A run with random weights big enough to give logits of a few units, and random norm gains (so a
    swapped or dropped tensor shows), using trained_run's tokenizer and settings."""
    cfg = json.loads((trained_run / runs.CONFIG).read_text())
    cfg["model"].update(model)
    mcfg = LMConfig.from_dict(cfg["model"])
    cfg["model"] = mcfg.to_dict()
    torch.manual_seed(seed)
    m = Transformer(mcfg)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if p.dim() == 1 else 0.15 * torch.randn_like(p))
    path.mkdir(parents=True)
    (path / runs.CONFIG).write_text(json.dumps(cfg))
    shutil.copyfile(trained_run / runs.TOKENIZER, path / runs.TOKENIZER)
    runs.save_weights(path, m)
    return path


def test_staged_dir_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("export failed midway")
    assert list(tmp_path.iterdir()) == []
    with staged_dir(out) as tmp:
        (tmp / "a").write_text("1")
        assert not out.exists()  # nothing visible until the end
    assert (out / "a").read_text() == "1"
    with pytest.raises(RunError, match="already exists"), staged_dir(out):
        pass
    with staged_dir(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no leftovers beside it


def test_staged_file_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "m.bin"
    with pytest.raises(KeyboardInterrupt), staged_file(out) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with staged_file(out) as tmp:
        tmp.write_bytes(b"whole")
    assert out.read_bytes() == b"whole" and [p.name for p in tmp_path.iterdir()] == ["m.bin"]
    with pytest.raises(RunError, match="already exists"), staged_file(out):
        pass


def test_parity_check_fails_beyond_its_tolerance():
    assert Parity("x", 1e-5, 1e-4).check().ok
    with pytest.raises(ExportError, match=r"parity check failed \(x\): max \|logit diff\| 0.5 \(tolerance 0.1"):
        Parity("x", 0.5, 0.1).check()
    # images: a small maximum is not enough, the mean has its own bound
    assert Parity("y", 0.1, 0.3, unit="pixel", mean_abs_diff=0.01, mean_tolerance=0.03).ok
    with pytest.raises(ExportError, match=r"max \|pixel diff\| 0.1 .*mean 0.05 \(tolerance 0.03\)"):
        Parity("y", 0.1, 0.3, unit="pixel", mean_abs_diff=0.05, mean_tolerance=0.03).check()


def test_artifacts_genlab_cannot_run_here_get_one_line_saying_why(tmp_path):
    import importlib.util
    import json

    from genlab.generate.text import load_lm

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    if importlib.util.find_spec("llama_cpp") is None:
        with pytest.raises(RunError, match="GGUF file needs llama-cpp-python"):
            load_lm(gguf)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(RunError, match="has no tokenizer.json"):
        load_lm(hf)
    folder = tmp_path / "cm"
    folder.mkdir()
    (folder / "genlab-export.json").write_text(json.dumps({"format": "coreml", "family": "lm"}))
    if sys.platform != "darwin":
        with pytest.raises(RunError, match="Core ML runs only on macOS"):
            load_lm(folder)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(RunError, match="is not a genlab run or any model genlab can open .*; it opens a genlab run directory"):
        load_lm(other)
    with pytest.raises(RunError, match="does not exist"):
        load_lm(tmp_path / "missing")
