"""How big a model is and what it costs: parameters, memory, FLOPs, speed bounds, fits-on-device.

    from genlab.sizing import resolve, count, analyse, SizeOptions
    arch = resolve("llama-3-8b")          # or a run folder, an HF config.json, a preset
    count(arch).total                     # 8,030,261,248
    analyse(arch, SizeOptions(context=8192))["memory"]["kv_cache"]

See docs/sizing.md for the formulas and their sources.
"""

from genlab.sizing.arch import Architecture, from_hf_config, from_lm_config
from genlab.sizing.common import SizeOptions
from genlab.sizing.counts import ParamCount, count
from genlab.sizing.families import FAMILIES, Family, register_family, resolve
from genlab.sizing.image import ImageArch
from genlab.sizing.report import analyse

__all__ = ["FAMILIES", "Architecture", "Family", "ImageArch",
           "ParamCount", "SizeOptions", "analyse", "count", "from_hf_config", "from_lm_config",
           "register_family", "resolve"]
