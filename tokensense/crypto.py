"""Encryption of provider keys at rest, TokenSense key generation and hashing, and masking for display."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from tokensense.settings import Settings, get_settings

KEY_PREFIX = "tsk_"
SECRET_KEY_FILENAME = "secret.key"


class SecretError(Exception):
    """The encryption secret is missing, unsafe, or not the one the data was encrypted with."""


class SecretMismatchError(SecretError):
    """A stored value cannot be decrypted with the current secret."""


def new_key() -> str:
    """A fresh TokenSense key: `tsk_` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a TokenSense key is stored and looked up."""
    return hashlib.sha256(key.encode()).hexdigest()


def mask(secret: str) -> str:
    """`sk-proj-abc...wxyz` → `sk-…wxyz`: enough to tell keys apart, too little to use one.

    Short values (under 12 characters) show nothing but the ellipsis, since four
    characters would be a large share of them.
    """
    if len(secret) < 12:
        return "…"
    return f"{secret[:3]}…{secret[-4:]}"


def fernet_key_from_secret(secret: str) -> bytes:
    """The Fernet key derived from a passphrase (`TOKENSENSE_SECRET`): SHA-256, URL-safe base64."""
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


def secret_key_path(home: Path | None = None) -> Path:
    return (home or get_settings().home) / SECRET_KEY_FILENAME


def _check_private(path: Path) -> None:
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretError(
            f"{path} is accessible by other users (mode {mode:04o}); "
            f"restrict it with `chmod 600 {path}` and try again"
        )


def _write_new_key_file(path: Path) -> None:
    """Create `path` holding a new Fernet key, mode 0600, unless another process got there first.

    The key is written to a private temporary file and hard-linked into place, so
    no reader ever sees a partly written file and an existing key is never replaced.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
    key = Fernet.generate_key() + b"\n"
    fd, tmp_name = tempfile.mkstemp(prefix=".secret-", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(key)
            tmp.flush()
            os.fsync(tmp.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: exclusive create instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return
            with os.fdopen(fd, "wb") as out:
                out.write(key)
    finally:
        os.unlink(tmp_name)


def _read_key_file(path: Path) -> bytes:
    _check_private(path)
    key = path.read_bytes().strip()
    try:
        Fernet(key)
    except ValueError as e:
        raise SecretError(
            f"{path} does not hold a valid key ({e}); restore it from a backup, "
            "or set TOKENSENSE_SECRET to the secret that was used"
        ) from e
    return key


@functools.cache
def _fernet_for(secret: str | None, key_path: Path) -> Fernet:
    if secret:
        return Fernet(fernet_key_from_secret(secret))
    if not key_path.exists():
        _write_new_key_file(key_path)
    return Fernet(_read_key_file(key_path))


def get_fernet(settings: Settings | None = None) -> Fernet:
    """The Fernet for the configured secret: `TOKENSENSE_SECRET`, else `TOKENSENSE_HOME/secret.key`.

    The key file is generated on first use (mode 0600); an existing one that
    other users can read is refused.
    """
    settings = settings or get_settings()
    return _fernet_for(settings.secret, secret_key_path(settings.home))


def reset_fernet_cache() -> None:
    _fernet_for.cache_clear()


def encrypt_secret(plaintext: str, *, settings: Settings | None = None, fernet: Fernet | None = None) -> str:
    """`plaintext` encrypted with the configured secret, as a URL-safe token string."""
    return (fernet or get_fernet(settings)).encrypt(plaintext.encode()).decode()


def decrypt_secret(token: str, *, settings: Settings | None = None, fernet: Fernet | None = None) -> str:
    """The plaintext of `token`; `SecretMismatchError` when the secret is not the one used to encrypt it."""
    try:
        return (fernet or get_fernet(settings)).decrypt(token.encode()).decode()
    except InvalidToken as e:
        raise SecretMismatchError(
            "cannot decrypt a stored provider key: the encryption secret changed since it was stored "
            "(TOKENSENSE_SECRET, or the secret.key file in TOKENSENSE_HOME); restore the old secret, "
            "or store the key again with `tokensense providers set`"
        ) from e
