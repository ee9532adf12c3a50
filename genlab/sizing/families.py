"""The model families `genlab size` knows, one :class:`Family` record each, and :func:`resolve`, which
turns what the user typed into an architecture object through them.

A family declares everything sizing needs from it in its record: how to read its runs' config.json,
its presets, its analysis, and its report sections and comparison rows. genlab.sizing.report and
:func:`resolve` look families up here instead of testing types, so the family modules below (arch,
counts, memory, compute and lm for the Transformer; image for the GAN and VAE; upscale for
super-resolution) never import each
other or the report.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from genlab.errors import ConfigError, GenlabError
from genlab.sizing import arch, catalog, image, lm, upscale
from genlab.sizing.arch import Architecture
from genlab.sizing.common import CompareRow, Section, SizeOptions
from genlab.sizing.hardware import Device
from genlab.sizing.image import ImageArch
from genlab.sizing.upscale import UpscaleArch


@dataclass(frozen=True)
class Family:
    name: str  # what a genlab run's config.json says under "family"
    # The `family` its architecture objects and their reports carry: the LM's is "lm" for genlab's own
    # models and the HF model_type for the others, so reports of all of them find the LM's record.
    model_types: tuple[str, ...]
    read_run: Callable[[dict, str, str], Any]  # (config.json, name, source) -> architecture
    presets: Callable[[], tuple[str, ...]]  # a function: the LM's names live in genlab.config (imports torch)
    from_preset: Callable[[str], Any]  # preset name -> architecture
    analyse: Callable[[Any, SizeOptions, list[Device] | None, Device | None], dict]
    sections: Callable[[dict], list[Section]]  # analysis -> the tables of a single-model report
    compare_rows: Callable[[str], list[CompareRow]]  # hardware key -> rows of `genlab size A B`


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Let `genlab size` size a family's runs and presets (a family of the same name is replaced)."""
    FAMILIES[family.name] = family


register_family(Family("lm", ("lm", *arch.SUPPORTED_HF), arch.read_run, arch.preset_names, arch.from_preset,
                       lm.analyse, lm.sections, lm.compare_rows))
for _name in image.IMAGE_FAMILIES:
    register_family(Family(_name, (_name,), image.run_reader(_name), partial(image.preset_names, _name),
                           image.from_preset, image.analyse_image, image.sections, image.compare_rows))
register_family(Family(upscale.FAMILY, (upscale.FAMILY,), upscale.read_run, upscale.preset_names, upscale.from_preset,
                       upscale.analyse, upscale.sections, upscale.compare_rows))


def family_of(model_type: str) -> Family:
    """The family of an architecture object or report, by the ``family`` it carries."""
    for f in FAMILIES.values():
        if model_type in f.model_types:
            return f
    raise GenlabError(f"no sizing family describes {model_type!r} models (families: {', '.join(FAMILIES)})")


# ---- resolving what the user typed ---------------------------------------------------------------

def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e.__class__.__name__}; give a valid config.json") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; give a model config.json")
    return data


def from_path(path: Path) -> Architecture | ImageArch | UpscaleArch:
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"'{path}' holds no config.json; give a genlab run, an HF model folder or a config.json")
    cfg = _load_json(file)
    name = path.name if path.is_dir() else (path.parent.name or path.stem)
    if "family" in cfg:
        family = FAMILIES.get(cfg["family"])
        if family is None:
            raise GenlabError(f"{file}: sizing of {cfg['family']!r} runs is not supported yet "
                              f"(families: {', '.join(FAMILIES)})")
        return family.read_run(cfg, name, str(file))
    if "model_type" in cfg:
        return arch.from_hf_config(cfg, name, str(file))
    raise ConfigError(f"{file} has neither 'family' (a genlab run) nor 'model_type' (an HF config)")


def resolve(spec: str) -> Architecture | ImageArch | UpscaleArch:
    """A path, a catalogue name or a preset of a family (in registry order), in that order:
    an :class:`~genlab.sizing.arch.Architecture` or a family's own description (the GAN's ImageArch)."""
    path = Path(spec).expanduser()
    if path.exists():
        return from_path(path)
    entry = catalog.lookup(spec)
    if entry is not None:
        return arch.from_catalog(entry)
    presets = []
    for family in FAMILIES.values():
        names = family.presets()
        if spec in names:
            return family.from_preset(spec)
        presets += names
    close = difflib.get_close_matches(catalog.normalise(spec), [m.name for m in catalog.MODELS] + presets, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise GenlabError(f"unknown model '{spec}'{hint}: not a file or folder, a catalogue name "
                      f"(see `genlab size --list`) or a preset ({', '.join(presets)})")
