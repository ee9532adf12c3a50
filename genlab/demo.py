"""`genlab demo`: the main job on embedded data, end to end in a few minutes on a laptop CPU.

Trains the `small` LM on the fortunes corpus, evaluates it, and generates from it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from genlab.config import DataConfig, train_config
from genlab.evaluate.perplexity import evaluate_lm
from genlab.generate.text import load_lm
from genlab.train.lm import LMTrainSpec, train_lm

PROMPTS = ("The secret of life is", "Q: Why did the programmer", "A fool")


def run_demo(out: Path, minutes: float = 3.0) -> None:
    con = Console()
    con.print(Panel.fit(f"genlab demo: a ~11M-parameter Llama-style LM trained on fortunes for {minutes:g} minutes"))
    tcfg = train_config("small", minutes=minutes, eval_every=100, checkpoint_every=100, eval_batches=10)
    train_lm(LMTrainSpec(run=out, data=DataConfig(corpus=["fortunes"], tokenizer="bpe", vocab_size=4096),
                         preset="small", train=tcfg, overwrite=True))
    res = evaluate_lm(out, max_tokens=50_000)
    con.print(f"held-out fortunes: perplexity {res['perplexity']:.1f}, {res['bits_per_byte']:.3f} bits/byte")
    lm = load_lm(out)
    for i, prompt in enumerate(PROMPTS):
        text = lm.generate(prompt, max_tokens=60, temperature=0.8, top_k=50, seed=i)
        con.print(Panel(prompt + text, title=f"sample {i + 1}", title_align="left"))
    con.print(f"the run lives in [bold]{out}[/]: generate more with "
              f"`genlab generate text {out} --prompt \"...\"`, continue it with "
              f"`genlab train lm --out {out} --resume --minutes {2 * minutes:g}`")
