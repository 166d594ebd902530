"""AES-256-GCM for model artifacts at rest (``registry.encrypt: true``).

The key never sits in deploy.yaml: ``registry.key_env`` names the environment variable that
holds it, base64-encoded (``maas models keygen`` prints a fresh one). Artifacts are decrypted
in memory only. GCM authenticates as well as encrypts, so a wrong key is detected, never turned
into garbage bytes; the associated data binds each file to its model name and plaintext hash,
so an encrypted file copied over another model's is refused too.

Sealed layout: ``MAGIC | 12-byte nonce | ciphertext with its 16-byte tag``.
"""

from __future__ import annotations

import base64
import binascii
import os

MAGIC = b"MAAS-AESGCM-1\n"
NONCE_BYTES = 12
KEY_BYTES = 32


class EncryptionError(Exception):
    """No usable key, or a sealed artifact that this key cannot open. Never contains the key."""


def new_key() -> str:
    """A fresh random key, base64-encoded as ``registry.key_env`` expects it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def key_from_env(env_name: str) -> bytes:
    """The 32-byte key held (base64) in ``env_name``; an error that says how to set it."""
    value = os.environ.get(env_name, "").strip()
    if not value:
        raise EncryptionError(
            f"environment variable {env_name} is not set: registry.encrypt needs the "
            f"base64 AES-256 key there on every machine that registers or serves models "
            f"(create one with `maas models keygen`)")
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionError(f"environment variable {env_name} is not valid base64; "
                              f"create a key with `maas models keygen`") from None
    if len(key) != KEY_BYTES:
        raise EncryptionError(f"environment variable {env_name} decodes to {len(key)} bytes; "
                              f"AES-256 needs {KEY_BYTES} (create one with `maas models keygen`)")
    return key


def seal(plaintext: bytes, key: bytes, context: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext``; ``context`` must be given again to open it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


def unseal(blob: bytes, key: bytes, context: bytes) -> bytes:
    """The plaintext of a :func:`seal` result; EncryptionError for a wrong key or context."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not is_sealed(blob):
        raise EncryptionError("not a maas-encrypted artifact (its header is missing)")
    nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], context)
    except InvalidTag:
        raise EncryptionError("decryption failed: the key is not the one this artifact was "
                              "encrypted with") from None
