"""`genlab detect` (watermarks and C2PA credentials of a text, a picture or a bundle) and
`genlab keys init` (the local CA, signing certificate and watermark key)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import out
from genlab.errors import ConfigError

keys_app = typer.Typer(no_args_is_help=True, help="Local keys: the watermark key and C2PA signing credentials.")

KeyOpt = Annotated[str, typer.Option("--key", envvar="GENLAB_WATERMARK_KEY",
                                     help="Watermark key (also GENLAB_WATERMARK_KEY); default: this machine's "
                                          "own key (genlab keys init / the studio make it).")]


def detect_cmd(
    path: Annotated[Path, typer.Argument(help="A text file, a picture (PNG, JPEG, ...), a WAV, or a studio bundle folder.")],
    key: KeyOpt = None,
    run: Annotated[str, typer.Option("--run", help="Text: the LM run (or folder with tokenizer.json) whose tokenizer "
                                                   "wrote it; default: the bundle's text run when it is here, "
                                                   "else runs/smollm2.")] = None,
    trust: Annotated[Path, typer.Option(help="CA certificate (PEM) to trust for C2PA credentials; default: the "
                                             "local CA from genlab keys init.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
):
    """Is the watermark there (statistic and p-value per item), and are the C2PA credentials intact?"""
    from genlab.safety.detect import detect_file
    from genlab.safety.keys import watermark_key

    key = key or watermark_key(create=False)
    if not key:
        raise ConfigError("no watermark key: pass --key KEY (no local key here; genlab keys init makes one)")
    if trust is not None and not trust.is_file():
        raise ConfigError(f"--trust '{trust}' is not a file")
    report = detect_file(path, key, run, trust)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    from rich.table import Table

    table = Table(title=f"genlab detect {report.path}")
    for col in ("item", "kind", "watermark", "statistic", "p-value", "credentials"):
        table.add_column(col)
    for item in report.items:
        w = item.watermark
        if w is None:
            mark, stat, p = "-", "-", "-"
        else:
            mark = "[green]yes[/]" if w["detected"] else "no"
            stat = (f"z = {w['z']:.2f} ({w['green_tokens']}/{w['scored_tokens']} green)" if w["kind"] == "text"
                    else f"{w['matches']}/{w['bits']} bits ({w['bit_accuracy']:.0%})")
            p = f"{w['p_value']:.2e}"
        table.add_row(item.name, item.kind, mark, stat, p, _creds(item.credentials) + "".join(
            f"\n[dim]{n}[/]" for n in item.notes))
    out.print(table)
    b = report.bundle
    if b is not None:
        if b["tampered"]:
            what = [f"files differ from manifest.json: {', '.join(b['manifest_mismatch'])}"] if b["manifest_mismatch"] else []
            if b["credentials_missing"]:
                what.append(f"credentials removed from: {', '.join(b['credentials_missing'])}")
            if b["credentials_intact"] is False:
                what.append("signed assets changed after signing")
            if b["article_matches_signed_record"] is False:
                what.append("article.md differs from the signed record")
            out.print(f"[bold red]tampered[/]: {'; '.join(what)}")
        elif b["signed"]:
            out.print("[green]bundle intact[/]: credentials verify and every file matches manifest.json")
        else:
            out.print(f"bundle unsigned ({b['unsigned_reason'] or 'no credentials'}); files match manifest.json")


def _creds(c: dict | None) -> str:
    if c is None:
        return "-"
    if not c["present"]:
        return "none" + (f" ({c['error']})" if c.get("error") else "")
    if c["intact"]:
        return f"[green]{c['state'].lower()}[/] ({c['signer']})" if c["state"] == "Trusted" else \
            f"valid, signer not trusted here ({c['signer']})"
    return "[red]invalid[/]: " + "; ".join(c["failures"][:2])


@keys_app.command("init")
def keys_init_cmd(
    folder: Annotated[Path, typer.Option("--dir", help="Where to keep them (default: $GENLAB_KEYS, else "
                                                       "~/.config/genlab/keys).")] = None,
    name: Annotated[str, typer.Option(help="Organization name in the certificates.")] = "genlab",
    force: Annotated[bool, typer.Option("--force", help="Replace existing signing keys.")] = False,
):
    """Create a local CA, a C2PA signing certificate it issues, and the watermark key (when missing)."""
    from genlab.safety.provenance import init_keys, signer_subject

    paths = init_keys(folder, name=name, force=force)
    out.print(f"keys -> {paths.folder} ({', '.join(paths.written)}); signer: {signer_subject(paths.folder)}")
    out.print("the studio now signs its bundles; `genlab detect BUNDLE` verifies them against this CA")


@keys_app.command("show")
def keys_show_cmd():
    """Where the keys are and what is there (never the keys themselves)."""
    from genlab.safety import keys
    from genlab.safety.provenance import signer_subject

    d = keys.key_dir()
    out.print(f"folder: {d}")
    out.print(f"watermark key: {'present' if keys.watermark_key(create=False) else 'none'}")
    out.print(f"signing certificate: {signer_subject() or 'none (genlab keys init)'}")


WatermarkOpt = Annotated[str, typer.Option("--watermark", metavar="KEY",
                                           help="Watermark the output with this key (genlab detect finds it); "
                                                "off by default.")]


def text_watermark(key: str | None):
    """The sampler's watermark for ``--watermark KEY`` (None without one)."""
    if key is None:
        return None
    from genlab.safety.watermark_text import TextWatermark

    return TextWatermark(key)
