"""Encryption at rest for credentials (node keys, FTP passwords): Fernet (AES + HMAC).

The key comes from CREDENTIALS_KEY, or is generated into the data folder on first use. It is
separate from SECRET_KEY so that rotating sessions does not lose the node credentials.
"""

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@lru_cache(maxsize=1)
def _fernet() -> Fernet:
    # Any string secret becomes a valid 32-byte Fernet key through SHA-256.
    digest = hashlib.sha256(settings.CREDENTIALS_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode() if plaintext else ""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("credentials cannot be decrypted: CREDENTIALS_KEY changed?") from exc
