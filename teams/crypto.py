"""Encryption of provider keys at rest, with a key list that can rotate (MultiFernet)."""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def encrypt_secret(plaintext: str) -> bytes:
    return _fernet(tuple(settings.FERNET_KEYS)).encrypt(plaintext.encode())


def decrypt_secret_dangerously(token: bytes) -> str:
    """Only the worker's client construction may call this; never log the result."""
    try:
        return _fernet(tuple(settings.FERNET_KEYS)).decrypt(bytes(token)).decode()
    except InvalidToken:
        raise ValueError(
            "the stored key cannot be decrypted with DISTILLERY_FERNET_KEYS "
            "(was the key list rotated without keeping the old key?)"
        ) from None


def rotate_secret(token: bytes) -> bytes:
    """The same secret, re-encrypted with the first key of the list (MultiFernet.rotate)."""
    try:
        return _fernet(tuple(settings.FERNET_KEYS)).rotate(bytes(token))
    except InvalidToken:
        raise ValueError("cannot be decrypted with any key of DISTILLERY_FERNET_KEYS") from None
