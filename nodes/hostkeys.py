"""SSH host keys as the panel stores them ("<type> <base64>"): the fingerprint admins compare
before they pin a key. Pure, so models can show fingerprints without loading the SSH client."""

import base64
import hashlib


def fingerprint(host_key: str) -> str:
    """OpenSSH's SHA256 fingerprint of "<type> <base64>"."""
    blob = base64.b64decode(host_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
