"""Provenance: C2PA content credentials, signed with a local certificate authority.

``init_keys`` (``genlab keys init``) makes, with the ``cryptography`` package, a local CA (P-256,
self-signed, CA:TRUE, pathlen 0, keyCertSign) and an end-entity certificate it issues (CA:FALSE,
digitalSignature, extended key usage emailProtection: one of those C2PA accepts), plus the default
watermark key (genlab.safety.keys). C2PA refuses a self-signed end-entity certificate, hence two.

``sign_asset`` embeds a C2PA manifest into a PNG, JPEG or WAV (``c2pa-python``'s Builder): a
``c2pa.actions`` assertion that says the asset was created by a trained algorithm
(IPTC's trainedAlgorithmicMedia) and genlab's own assertion (``org.genlab.bundle``: the prompt,
models, seeds, watermark schemes and the sha256 of the article). A format the SDK cannot embed into
gets a sidecar manifest store (``NAME.c2pa``) bound to the same bytes.

``verify_asset`` reads the credentials back (c2pa's Reader) with the local CA as trust anchor when
it is here: ``Trusted`` (signature valid, chain to a known CA), ``Valid`` (signature valid, signer
not known here), ``Invalid`` (the asset or the manifest changed after signing: the failure codes say
what), or no credentials at all.
"""

from __future__ import annotations

import datetime
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import genlab
from genlab.errors import ConfigError
from genlab.safety import keys

GENLAB_ASSERTION = "org.genlab.bundle"
SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".wav": "audio/wav"}


def _c2pa():
    try:
        import c2pa
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("C2PA credentials need the 'c2pa-python' package: pip install 'genlab[safety]'") from e
    return c2pa


# ---- keys ----------------------------------------------------------------------------------------

@dataclass
class KeyPaths:
    folder: Path
    written: list[str] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return self.folder / keys.CA_CERT

    @property
    def signer(self) -> Path:
        return self.folder / keys.SIGNER_CERT

    @property
    def signer_key(self) -> Path:
        return self.folder / keys.SIGNER_KEY


def init_keys(folder: Path | None = None, name: str = "genlab", force: bool = False,
              days: int = 730) -> KeyPaths:
    """A local CA and an end-entity signing certificate (and the watermark key, when missing)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder) if folder else keys.key_dir()
    paths = KeyPaths(folder)
    if paths.signer.exists() and not force:
        raise ConfigError(f"signing keys already exist in {folder}; pass --force to replace them "
                          "(bundles signed with the old ones then no longer verify as trusted here)")
    if not name.strip():
        raise ConfigError("--name must not be empty")
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(minutes=5)

    def dn(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])

    def usage(**on) -> x509.KeyUsage:
        flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                     data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                     encipher_only=False, decipher_only=False)
        return x509.KeyUsage(**{**flags, **on})

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = dn(f"{name} local CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(now + datetime.timedelta(days=days * 5))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    ee_key = ec.generate_private_key(ec.SECP256R1())
    ee = (x509.CertificateBuilder().subject_name(dn(f"{name} content signer")).issuer_name(ca_name)
          .public_key(ee_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(usage(digital_signature=True), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ee_key.public_key()), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def pem(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    for fname, data in ((keys.CA_KEY, key_pem(ca_key)), (keys.SIGNER_KEY, key_pem(ee_key)),
                        (keys.CA_CERT, pem(ca)), (keys.SIGNER_CERT, pem(ee) + pem(ca))):
        keys.write_secret(folder / fname, data)
        paths.written.append(fname)
    if keys.watermark_key(create=False, folder=folder) is None:
        keys.watermark_key(create=True, folder=folder)
        paths.written.append(keys.WATERMARK_KEY)
    return paths


def signer_subject(folder: Path | None = None) -> str | None:
    from cryptography import x509

    path = KeyPaths(Path(folder) if folder else keys.key_dir()).signer
    if not path.is_file():
        return None
    return x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()


class Signer:
    """The local signing credentials, loaded once (None from ``load`` when there are none)."""

    def __init__(self, chain: bytes, key: bytes, subject: str) -> None:
        self.chain, self.key, self.subject = chain, key, subject

    @classmethod
    def load(cls, folder: Path | None = None) -> Signer | None:
        paths = KeyPaths(Path(folder) if folder else keys.key_dir())
        if not (paths.signer.is_file() and paths.signer_key.is_file()):
            return None
        return cls(paths.signer.read_bytes(), paths.signer_key.read_bytes(), signer_subject(paths.folder) or "")

    def _signer(self):
        c2pa = _c2pa()
        return c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, self.chain, self.key, None))

    def sign(self, name: str, data: bytes, record: dict, embed: bool = True) -> tuple[bytes, bytes | None]:
        """(the asset with credentials embedded, None), or (the asset unchanged, a sidecar manifest
        store ``NAME.c2pa``) when ``embed`` is False or the SDK cannot embed into the format (the
        asset's bytes must then stay exactly as they are: the store is bound to their hash)."""
        c2pa = _c2pa()
        mime = MIME.get(Path(name).suffix.lower())
        if mime is None:
            raise ConfigError(f"cannot sign '{name}': C2PA signing here takes PNG, JPEG or WAV")
        manifest = {
            "claim_generator_info": [{"name": "genlab", "version": genlab.__version__}],
            "title": Path(name).name, "format": mime,
            "assertions": [
                {"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": SOURCE_TYPE,
                     "softwareAgent": {"name": "genlab", "version": genlab.__version__}}]}},
                {"label": GENLAB_ASSERTION, "data": record},
            ],
        }
        builder = c2pa.Builder.from_json(json.dumps(manifest))
        embed = embed and mime in c2pa.Builder.get_supported_mime_types()
        if not embed:
            builder.set_no_embed()
        dest = io.BytesIO()
        store = builder.sign(self._signer(), mime, io.BytesIO(data), dest)
        return (dest.getvalue(), None) if embed else (data, bytes(store))


# ---- verification --------------------------------------------------------------------------------

@dataclass
class Credentials:
    present: bool
    state: str | None = None  # Trusted | Valid | Invalid
    signer: str | None = None
    record: dict | None = None  # genlab's assertion
    failures: list[str] = field(default_factory=list)  # c2pa failure codes (and explanations)
    embedded: bool = True
    error: str | None = None

    @property
    def intact(self) -> bool:
        return self.present and self.state in ("Trusted", "Valid") and not self.failures

    def to_dict(self) -> dict:
        return {"present": self.present, "state": self.state, "intact": self.intact, "signer": self.signer,
                "embedded": self.embedded, "failures": self.failures, "error": self.error}


def _context(trust: Path | None):
    c2pa = _c2pa()
    ca = trust if trust is not None else KeyPaths(keys.key_dir()).ca
    if ca is not None and Path(ca).is_file():
        return c2pa.Context.from_dict({"verify": {"verify_trust": True},
                                       "trust": {"trust_anchors": Path(ca).read_text(encoding="utf-8")}})
    return None


def verify_asset(name: str, data: bytes, sidecar: bytes | None = None, trust: Path | None = None) -> Credentials:
    c2pa = _c2pa()
    mime = MIME.get(Path(name).suffix.lower())
    if mime is None:
        return Credentials(present=False, error=f"no C2PA reader for '{Path(name).suffix}' files here")
    ctx = _context(trust)
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), sidecar, ctx) if ctx is not None else \
            c2pa.Reader.try_create(mime, io.BytesIO(data), sidecar)
    except c2pa.C2paError as e:  # a manifest that cannot be parsed at all is tampering too
        return Credentials(present=True, state="Invalid", failures=[f"unreadable: {e}"], embedded=sidecar is None)
    if reader is None:
        return Credentials(present=False, embedded=sidecar is None)
    with reader:
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
        active = reader.get_active_manifest() or {}
    failures = [f"{f.get('code')}: {f.get('explanation', '')}".strip()
                for f in (results.get("activeManifest") or {}).get("failure", [])]
    record = next((a.get("data") for a in active.get("assertions", []) if a.get("label") == GENLAB_ASSERTION), None)
    info = active.get("signature_info") or {}
    signer = info.get("common_name") or info.get("issuer")
    return Credentials(present=True, state=state, signer=signer, record=record, failures=failures,
                       embedded=sidecar is None)
