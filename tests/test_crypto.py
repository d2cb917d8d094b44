"""Encryption of provider keys, the secret key file, key generation, hashing and masking."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tokensense import crypto
from tokensense.settings import reset_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("TOKENSENSE_HOME", str(home))
    monkeypatch.delenv("TOKENSENSE_SECRET", raising=False)
    reset_settings()
    crypto.reset_fernet_cache()
    yield home
    reset_settings()
    crypto.reset_fernet_cache()


def _use_secret(monkeypatch: pytest.MonkeyPatch, secret: str | None) -> None:
    if secret is None:
        monkeypatch.delenv("TOKENSENSE_SECRET", raising=False)
    else:
        monkeypatch.setenv("TOKENSENSE_SECRET", secret)
    reset_settings()
    crypto.reset_fernet_cache()


def test_new_key_is_prefixed_random_and_long() -> None:
    keys = {crypto.new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith("tsk_")
        assert len(key) == len("tsk_") + 43


def test_hash_key_is_sha256_hex() -> None:
    assert crypto.hash_key("tsk_abc") == hashlib.sha256(b"tsk_abc").hexdigest()
    assert crypto.hash_key("tsk_abc") != crypto.hash_key("tsk_abd")


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        ("sk-proj-abcdefghijklmnopqrstuvwxyz9876", "sk-…9876"),
        ("sk-ant-api03-zzzzzzzzzzzzzzzzzzzzz4321", "sk-…4321"),
        ("AIzaSyExampleExampleExample1234", "AIz…1234"),
        ("short-key", "…"),
        ("", "…"),
    ],
)
def test_mask_shows_only_a_prefix_and_the_last_four(secret: str, masked: str) -> None:
    assert crypto.mask(secret) == masked


def test_secret_from_environment_round_trips_without_a_key_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_secret(monkeypatch, "correct horse battery staple")
    token = crypto.encrypt_secret("sk-live-123")
    assert "sk-live-123" not in token
    assert crypto.decrypt_secret(token) == "sk-live-123"
    assert not (home / "secret.key").exists()
    # The derivation is stable: another process with the same secret reads it.
    other = Fernet(crypto.fernet_key_from_secret("correct horse battery staple"))
    assert other.decrypt(token.encode()) == b"sk-live-123"


def test_key_file_is_generated_private_and_reused(home: Path) -> None:
    token = crypto.encrypt_secret("sk-live-123")
    key_file = home / "secret.key"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    crypto.reset_fernet_cache()  # as a new process would
    assert crypto.decrypt_secret(token) == "sk-live-123"
    assert [p.name for p in home.iterdir()] == ["secret.key"]  # no temporary file left behind


def test_existing_key_file_is_never_replaced(home: Path) -> None:
    key_file = home / "secret.key"
    crypto._write_new_key_file(key_file)
    first = key_file.read_bytes()
    crypto._write_new_key_file(key_file)  # a second process racing the first
    assert key_file.read_bytes() == first
    assert [p.name for p in home.iterdir()] == ["secret.key"]


def test_wrong_secret_says_the_secret_changed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_secret(monkeypatch, "old secret")
    token = crypto.encrypt_secret("sk-live-123")
    _use_secret(monkeypatch, "new secret")
    with pytest.raises(crypto.SecretMismatchError, match="secret changed"):
        crypto.decrypt_secret(token)


def test_key_file_token_does_not_open_with_an_environment_secret(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = crypto.encrypt_secret("sk-live-123")
    _use_secret(monkeypatch, "set later")
    with pytest.raises(crypto.SecretMismatchError):
        crypto.decrypt_secret(token)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_key_file_readable_by_others_is_refused(home: Path) -> None:
    home.mkdir(mode=0o700)
    key_file = home / "secret.key"
    key_file.write_bytes(Fernet.generate_key())
    key_file.chmod(0o644)
    with pytest.raises(crypto.SecretError, match="chmod 600"):
        crypto.get_fernet()


def test_corrupt_key_file_is_a_clear_error(home: Path) -> None:
    home.mkdir(mode=0o700)
    key_file = home / "secret.key"
    key_file.write_bytes(b"not a key")
    key_file.chmod(0o600)
    with pytest.raises(crypto.SecretError, match="does not hold a valid key"):
        crypto.get_fernet()


def test_explicit_settings_are_used(home: Path, tmp_path: Path) -> None:
    from tokensense.settings import Settings

    settings = Settings(home=tmp_path / "other", secret="explicit")
    token = crypto.encrypt_secret("sk-live-123", settings=settings)
    assert crypto.decrypt_secret(token, settings=settings) == "sk-live-123"
    with pytest.raises(crypto.SecretMismatchError):
        crypto.decrypt_secret(token)  # the environment's (key file) secret is another one
