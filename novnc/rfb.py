"""The two ends of the RFB (VNC) handshake the console proxy speaks.

Towards the node, the proxy is a VNC client and answers the per-server password challenge
itself; towards the browser, it is a VNC server that offers no authentication. So the VNC
password never leaves the panel, and after the handshake the bytes flow through unchanged.
"""

import asyncio
import struct

VERSION = b"RFB 003.008\n"
SECURITY_NONE, SECURITY_VNC = 1, 2


class RfbError(Exception):
    pass


def vnc_response(challenge: bytes, password: str) -> bytes:
    """VNC authentication: DES of the challenge with the password (8 bytes, bits mirrored)."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = password.encode()[:8].ljust(8, b"\0")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in key)
    # TripleDES with one 8-byte key is single DES, which is what VNC uses.
    encryptor = Cipher(TripleDES(key), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


async def authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str) -> None:
    """Be the client up to (not including) ClientInit; raises RfbError when refused."""
    version = await reader.readexactly(12)
    if not version.startswith(b"RFB 003."):
        raise RfbError(f"not a VNC server: {version!r}")
    writer.write(VERSION)
    count = (await reader.readexactly(1))[0]
    if count == 0:
        length = struct.unpack(">I", await reader.readexactly(4))[0]
        raise RfbError((await reader.readexactly(length)).decode(errors="replace"))
    offered = set(await reader.readexactly(count))
    if password and SECURITY_VNC in offered:
        writer.write(bytes([SECURITY_VNC]))
        challenge = await reader.readexactly(16)
        writer.write(vnc_response(challenge, password))
    elif SECURITY_NONE in offered:
        writer.write(bytes([SECURITY_NONE]))
    else:
        raise RfbError(f"no usable security type among {sorted(offered)}")
    await writer.drain()
    if struct.unpack(">I", await reader.readexactly(4))[0] != 0:
        raise RfbError("the VNC server refused the password")


class BrowserSide:
    """The server end of the handshake towards noVNC: version, then 'no authentication'.

    `feed()` takes what the browser sent and returns (bytes to send back, bytes to pass on
    to the real server once the handshake is done).
    """

    def __init__(self):
        self.buffer = b""
        self.phase = "version"

    @staticmethod
    def greeting() -> bytes:
        return VERSION

    @property
    def done(self) -> bool:
        return self.phase == "relay"

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        if self.done:
            return b"", data
        self.buffer += data
        reply = b""
        if self.phase == "version" and len(self.buffer) >= 12:
            version, self.buffer = self.buffer[:12], self.buffer[12:]
            if not version.startswith(b"RFB 003."):
                raise RfbError("the browser does not speak RFB")
            reply += bytes([1, SECURITY_NONE])
            self.phase = "security"
        if self.phase == "security" and len(self.buffer) >= 1:
            choice, self.buffer = self.buffer[0], self.buffer[1:]
            if choice != SECURITY_NONE:
                raise RfbError("the browser chose a security type that was not offered")
            reply += struct.pack(">I", 0)  # SecurityResult: OK
            self.phase = "relay"
            rest, self.buffer = self.buffer, b""
            return reply, rest
        return reply, b""
