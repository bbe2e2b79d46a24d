"""The console proxy: a websocket on the panel's own origin, bridged to the VNC port of the
node that runs the server now (looked up at connect time, so it follows migrations).

A channels consumer rather than websockify: it runs in the web process on the same port and
path prefix as the rest of the panel (one reverse-proxy rule), it sees the Django session
to check the token's user, and it can end the session when the user loses access.
"""

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from novnc import rfb, tokens

log = logging.getLogger(__name__)

CLOSE_NOT_ALLOWED = 4401  # no token, used, expired, another user's; the user or key lost its access
CLOSE_UNAVAILABLE = 4403  # suspended, stopped, or given to another customer
CLOSE_GONE = 4404
CLOSE_NODE = 4502  # the node's VNC did not answer
WATCH_SECONDS = 2


def _target(token) -> tuple[str, int, str] | int:
    """(host, port, password) of the server's VNC now, or a close code."""
    from nodes.connection import driver_for
    from nodes.driver import DriverError
    from panel.crypto import decrypt
    from panel.vps.models import VirtualServer

    server = VirtualServer.objects.select_related("node").filter(pk=token.server_id).first()
    if server is None:
        return CLOSE_GONE
    if not tokens.still_allowed(token):
        return CLOSE_UNAVAILABLE
    try:
        port = driver_for(server.node.uri).vnc_port(server.domain_name)
    except DriverError:
        return CLOSE_NODE
    return server.node.address or "127.0.0.1", port, decrypt(server.vnc_password)


def _holder_allowed(token, session_key: str | None) -> bool:
    """Whoever asked for the token may still use it: its API key is not revoked; its user is
    active, and the session that opened the socket is still signed in as them."""
    from panel.accounts.models import ApiKey
    from panel.accounts.sessions import still_signed_in

    if token.api_key_id is not None and not ApiKey.objects.filter(pk=token.api_key_id,
                                                                  revoked_at__isnull=True).exists():
        return False
    return token.user_id is None or still_signed_in(session_key, token.user_id)


class ConsoleProxy(AsyncWebsocketConsumer):
    async def connect(self):
        self.writer = None
        self.tasks = []
        raw = self.scope["url_route"]["kwargs"]["token"]
        token = await database_sync_to_async(tokens.consume)(raw, self.scope.get("user"))
        session = self.scope.get("session")
        self.session_key = session.session_key if session is not None else None
        if token is None or not await database_sync_to_async(_holder_allowed)(token, self.session_key):
            await self.refuse(CLOSE_NOT_ALLOWED)
            return
        target = await database_sync_to_async(_target)(token)
        if isinstance(target, int):
            await self.refuse(target)
            return
        host, port, password = target
        try:
            reader, self.writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            await asyncio.wait_for(rfb.authenticate(reader, self.writer, password), 5)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, rfb.RfbError) as exc:
            log.warning("console of server %s: VNC at %s:%s: %s", token.server_id, host, port, exc)
            await self.refuse(CLOSE_NODE)
            return
        self.token = token
        self.browser = rfb.BrowserSide()
        await self.accept(subprotocol=self.subprotocol())
        await self.send(bytes_data=self.browser.greeting())
        self.tasks = [asyncio.create_task(self.pump(reader)), asyncio.create_task(self.watch())]

    def subprotocol(self) -> str | None:
        return "binary" if "binary" in (self.scope.get("subprotocols") or []) else None

    async def refuse(self, code: int) -> None:
        # Accepted, then closed with a code: the page can say why (a refused handshake is an
        # anonymous HTTP 403 to the browser).
        await self.accept(subprotocol=self.subprotocol())
        await self.close(code=code)

    async def receive(self, text_data=None, bytes_data=None):
        if self.writer is None or bytes_data is None:
            return
        try:
            reply, onward = self.browser.feed(bytes_data)
        except rfb.RfbError:
            await self.close(code=CLOSE_NOT_ALLOWED)
            return
        if reply:
            await self.send(bytes_data=reply)
        if onward:
            self.writer.write(onward)
            await self.writer.drain()

    async def pump(self, reader: asyncio.StreamReader) -> None:
        """Node → browser, until either side ends."""
        try:
            while data := await reader.read(65536):
                await self.send(bytes_data=data)
        except asyncio.CancelledError:
            return
        except OSError:
            pass
        # The guest went away: say why, if it is because the user lost access.
        allowed = await database_sync_to_async(tokens.still_allowed)(self.token)
        await self.close(code=None if allowed else CLOSE_UNAVAILABLE)

    async def watch(self) -> None:
        """End the session as soon as the user may no longer use this console: the server's
        side (suspended, stopped, another owner) or the holder's (deactivated, signed out,
        key revoked)."""
        try:
            while True:
                await asyncio.sleep(WATCH_SECONDS)
                if not await database_sync_to_async(_holder_allowed)(self.token, self.session_key):
                    await self.close(code=CLOSE_NOT_ALLOWED)
                    return
                if not await database_sync_to_async(tokens.still_allowed)(self.token):
                    await self.close(code=CLOSE_UNAVAILABLE)
                    return
        except asyncio.CancelledError:
            pass

    async def disconnect(self, code):
        for task in self.tasks:
            task.cancel()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
