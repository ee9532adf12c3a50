"""genlab: train, size, shrink, ship and serve generative models.

Python API beside the CLI::

    import genlab
    lm = genlab.load("runs/demo")
    print(lm.generate("Once upon a time", max_tokens=50, seed=0))
    for piece in lm.stream("def main(", max_tokens=40):
        print(piece, end="")
"""

__version__ = "0.1.0"


def load(run, device: str = "auto", fast: bool = True):
    """Load a run directory (or an exported model) for generation. ``fast=False``: the reference
    inference path of a PyTorch run (no fused projections, no int8/int4 kernels)."""
    from genlab.generate.text import load_lm

    return load_lm(run, device=device, fast=fast)


__all__ = ["__version__", "load"]
