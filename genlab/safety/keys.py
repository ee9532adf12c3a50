"""Where genlab keeps its local secrets: the watermark key and the C2PA signing credentials.

The folder is ``$GENLAB_KEYS``, else ``$XDG_CONFIG_HOME/genlab/keys`` (``~/.config/genlab/keys``):

    watermark.key   the default watermark key (random, 32 bytes as hex; the studio's when none is named)
    ca.pem          the local certificate authority (C2PA refuses a self-signed end-entity certificate)
    ca-key.pem      its private key (only `genlab keys init` reads it)
    signer.pem      the end-entity signing certificate followed by the CA's: the chain C2PA embeds
    signer-key.pem  the signer's private key (P-256, ECDSA with SHA-256: C2PA's ES256)

Secrets are written with mode 0600 in a 0700 folder, atomically.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

WATERMARK_KEY = "watermark.key"
CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
SIGNER_CERT, SIGNER_KEY = "signer.pem", "signer-key.pem"


def key_dir() -> Path:
    env = os.environ.get("GENLAB_KEYS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "genlab" / "keys"


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` readable by this user only (0600 from the first byte), then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def watermark_key(create: bool = True, folder: Path | None = None) -> str | None:
    """The local default watermark key; created (random) on first use when ``create``."""
    path = (folder or key_dir()) / WATERMARK_KEY
    if path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return text
    if not create:
        return None
    key = secrets.token_hex(32)
    write_secret(path, (key + "\n").encode())
    return key
