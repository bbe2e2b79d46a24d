"""Backup files on a target: their names, their manifests, and the streams that carry them
(compressed with zstd, checksummed as they pass).

Checksums read "<algorithm>:<hex>". New files get BLAKE3 (cryptographic, and several times
faster than SHA-256, which alone took as long as copying the disk); backups made before it
carry sha256 and are verified with that.
"""

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator

import blake3
import zstandard

from backup.models import Backup

MANIFEST_FORMAT = 1


def image_name(backup: Backup) -> str:
    suffix = ".zst" if backup.compression == "zstd" else ""
    return f"{backup.server_uuid}/{backup.id:06d}-{backup.kind}.qcow2{suffix}"


def disk_image_name(backup: Backup, target: str) -> str:
    """A data disk's image (backup/disks.py): the system disk's name with the disk's target."""
    suffix = ".zst" if backup.compression == "zstd" else ""
    return f"{backup.server_uuid}/{backup.id:06d}-{backup.kind}-{target}.qcow2{suffix}"


def data_files(backup: Backup) -> list[str]:
    """The files of a backup's data disks (none in a backup of a server without them)."""
    return [entry["file"] for entry in (backup.manifest or {}).get("disks", [])]


def manifest_name(backup: Backup) -> str:
    return f"{backup.server_uuid}/{backup.id:06d}-{backup.kind}.manifest.json"


def panel_name(backup: Backup) -> str:
    return f"panel/{backup.created_at:%Y%m%d-%H%M%S}-{backup.id:06d}.panel"


def manifest_bytes(backup: Backup) -> bytes:
    return json.dumps({"format": MANIFEST_FORMAT, **backup.manifest}, indent=2, sort_keys=True).encode()


CHECKSUM = "blake3"


class Counted:
    """Passes chunks through while counting and hashing them (the bytes as stored)."""

    def __init__(self, algorithm: str = CHECKSUM):
        if algorithm not in ("blake3", "sha256"):
            raise ValueError(f"unknown checksum algorithm {algorithm!r}")
        self.algorithm = algorithm
        self.size = 0
        self._hash = blake3.blake3() if algorithm == "blake3" else hashlib.sha256()

    @classmethod
    def like(cls, checksum: str) -> "Counted":
        """A Counted that computes the same kind of checksum as `checksum`."""
        return cls(checksum.partition(":")[0])

    def add(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        self._hash.update(chunk)
        return chunk

    @property
    def checksum(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"


def store(chunks: Iterable[bytes], write: Callable[[bytes], object], compression: str,
          progress: Callable[[int], None] | None = None) -> Counted:
    """Write `chunks` (compressed if asked); returns the stored size and checksum."""
    stored = Counted()
    compressor = zstandard.ZstdCompressor(level=3, threads=-1, write_checksum=True).compressobj() if compression == "zstd" else None
    read = 0
    for chunk in chunks:
        read += len(chunk)
        data = compressor.compress(chunk) if compressor else chunk
        if data:
            write(stored.add(data))
        if progress:
            progress(read)
    if compressor:
        tail = compressor.flush()
        if tail:
            write(stored.add(tail))
    return stored


def fetch(read: Callable[[int], bytes], compression: str, checked: Counted, chunk: int = 4 << 20) -> Iterator[bytes]:
    """The original bytes of a stored file read with `read(n)`, counting and hashing the stored
    bytes into `checked` on the way (compare its checksum when the iterator is exhausted)."""
    decompressor = zstandard.ZstdDecompressor().decompressobj() if compression == "zstd" else None
    while True:
        data = read(chunk)
        if not data:
            break
        checked.add(data)
        try:
            out = decompressor.decompress(data) if decompressor else data
        except zstandard.ZstdError as exc:
            raise ValueError(f"it does not decompress: {exc}") from exc
        if out:
            yield out
