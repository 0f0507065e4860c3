"""Ed25519 keys and signatures for bundles (``cryptography``, the extra ``edgeslm[deploy]``).

The signature covers the index, which names every manifest by its sha256 and every blob by its
digest, so it covers every byte of the bundle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import BundleError, InputFileError, MissingExtraError, OutputFileError

INSTALL = "pip install 'edgeslm[deploy]'"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingExtraError(f"signed bundles need cryptography: {INSTALL}") from None
    return ed25519


def generate_key(path: Path) -> Path:
    """A new private key at ``path`` (owner-readable only) and its public key at ``path.pub``; returns the latter."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization as s

    public = path.with_name(path.name + ".pub")
    if path.exists() or public.exists():
        raise OutputFileError(f"{path} or {public} exists; keys are never overwritten, choose another name")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fp:
            fp.write(private)
        public.write_bytes(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    except OSError as exc:
        raise OutputFileError(f"cannot write the key {path}: {exc.strerror}") from None
    return public


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()[: 64 * 1024]
    except OSError as exc:
        raise InputFileError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _load(path: Path, private: bool) -> Any:
    """The Ed25519 key in the PEM file ``path`` (private, or public), or an error naming what to give."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization as s

    what = "private key" if private else "public key"
    raw = _read(path, what)
    try:
        key = s.load_pem_private_key(raw, password=None) if private else s.load_pem_public_key(raw)
    except (ValueError, TypeError):
        key = None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        made = "the private key" if private else "the .pub file"
        raise InputFileError(f"{path} is not an unencrypted PEM Ed25519 {what}; give {made} of 'edgeslm bundle keygen'")
    return key


def sign(private_key: Path, data: bytes) -> bytes:
    return bytes(_load(private_key, private=True).sign(data))


def check_signature(public_key: Path, data: bytes, signature: bytes) -> None:
    from cryptography.exceptions import InvalidSignature

    key = _load(public_key, private=False)
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise BundleError(f"the bundle's signature does not match the key {public_key.name}: "
                          "it was signed by another key, or changed after signing") from None
