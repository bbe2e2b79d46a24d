"""Live progress of one server over a websocket.

The browser gets `{"state", "state_label", "operation", "actions", ...}` at connect and after
every change. Changes arrive two ways: `server.update` messages from the worker through the
channel layer (with Redis), and a once-a-second look at the database, which is what makes
progress live when the layer is in memory and the worker runs in another process.
"""

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404
from django.utils import translation

from panel.accounts import sessions
from panel.accounts.middleware import SESSION_OTP_PENDING
from panel.accounts.tenancy import actor_for_user
from panel.metrics import live as live_metrics
from panel.ui import live
from panel.vps.models import Operation, ServerState, VirtualServer
from panel.progress import server_group

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
POLL_SECONDS = 1.0


class ServerConsumer(AsyncJsonWebsocketConsumer):
    poll_seconds = POLL_SECONDS

    async def connect(self):
        self.group = None
        self.poller = None
        self.last_sent = None
        self.last_operation_id = None
        self.signed_out = False
        self.server_id = self.scope["url_route"]["kwargs"]["server_id"]
        if not await self.authenticate():
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            message = await self.current()
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = server_group(self.server_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_if_changed(message)
        self.poller = asyncio.create_task(self.poll())

    async def disconnect(self, code):
        live_metrics.hub.unsubscribe(self)
        if self.poller is not None:
            self.poller.cancel()
            self.poller = None
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = None

    async def receive_json(self, content, **kwargs):
        if isinstance(content, dict) and content.get("type") == live_metrics.TYPE:
            await self.metrics_live(content)
            return
        # Otherwise the browser only listens; a message from it asks for a fresh state.
        await self.refresh()

    async def metrics_live(self, content: dict):
        """`{"type": "metrics.live", "on": true|false}`: live graph points of this socket's
        server (panel/metrics/live.py) while on. Always the server of the socket's URL, which
        connect() checked the user may see; an id of another server in the message is refused."""
        if not content.get("on"):
            live_metrics.hub.unsubscribe(self)
            await self.send_json({"type": live_metrics.TYPE, "status": "off"})
            return
        if not await self.still_signed_in():
            return
        asked = content.get("server", self.server_id)
        if str(asked) != str(self.server_id):
            await self.send_json({"type": live_metrics.TYPE, "status": "refused", "detail": "Not this socket's server."})
            return
        try:
            where = await self.live_target()
        except Http404:
            await self.refresh()  # gone or no longer the user's: the state message says so
            return
        if where is None:
            live_metrics.hub.unsubscribe(self)
            await self.send_json({"type": live_metrics.TYPE, "status": "stopped", "detail": "The server is not running."})
            return
        await live_metrics.hub.subscribe(self, self.server_id, *where, send=self.send_json)

    @database_sync_to_async
    def live_target(self) -> tuple[int, str, str] | None:
        """(node id, node URI, domain name) of the server if it runs, else None; Http404 when
        the user may not see it (the same check as every state message)."""
        server = self.actor.get_or_404(VirtualServer.objects.select_related("node"), pk=self.server_id)
        if server.node_id is None or server.state != ServerState.RUNNING:
            return None
        return server.node_id, server.node.uri, server.domain_name

    async def server_update(self, event):
        """A worker's progress message (with Redis): forwarded, with the actions allowed now."""
        if not await self.still_signed_in():
            return
        try:
            message = await self.current()
        except Http404:
            await self.refresh()
            return
        message = await self.merge(message, event)
        await self.send_if_changed(message)

    async def poll(self):
        try:
            while not self.signed_out:
                await asyncio.sleep(self.poll_seconds)
                await self.refresh()
        except asyncio.CancelledError:
            pass
        except Exception:  # never let the poller die silently with the socket still open
            log.exception("live progress of server %s failed", self.server_id)
            await self.close()

    async def refresh(self):
        if not await self.still_signed_in():
            return
        try:
            message = await self.current()
        except Http404:
            message = await self.deleted()
            await self.send_if_changed(message)
            await self.close()
            return
        await self.send_if_changed(message)

    async def send_if_changed(self, message: dict):
        if message != self.last_sent:
            self.last_sent = message
            await self.send_json(message)

    @database_sync_to_async
    def authenticate(self) -> bool:
        """Who is asking (the session's user), in their language; False for no one."""
        user = self.scope.get("user")
        session = self.scope.get("session")
        if user is None or not user.is_authenticated:
            return False
        if session is not None and session.get(SESSION_OTP_PENDING):
            return False  # the password is not enough while a second factor is pending
        self.actor = actor_for_user(user)
        self.user_id = user.pk
        self.session_key = session.session_key if session is not None else None
        self.language = (session.get("panel_language") if session is not None else None) \
            or user.preferred_language or "en"
        return True

    async def still_signed_in(self) -> bool:
        """Checked before anything is sent: a deactivated user or an ended session (signed out,
        here or from the sessions page) gets the socket closed within a poll."""
        if self.signed_out:
            return False
        if await database_sync_to_async(sessions.still_signed_in)(self.session_key, self.user_id):
            return True
        self.signed_out = True
        await self.close(code=CLOSE_UNAUTHENTICATED)
        return False

    @database_sync_to_async
    def current(self) -> dict:
        server = self.actor.get_or_404(VirtualServer.objects.all(), pk=self.server_id)
        with translation.override(self.language):
            message = live.snapshot(server, self.actor)
        if message["operation"]:
            self.last_operation_id = message["operation"]["id"]
        return message

    @database_sync_to_async
    def merge(self, message: dict, event: dict) -> dict:
        """Lay the event's operation and state over the database's (they may be newer)."""
        message = dict(message)
        state = event.get("state")
        if state:
            message["state"] = state
            with translation.override(self.language):
                message["state_label"] = str(dict(ServerState.choices).get(state, state))
        op = event.get("operation")
        current = message.get("operation")
        if op and op.get("id") and (current is None or op["id"] >= current["id"]):
            seen = op.get("admin", {}) if self.actor.is_admin else op  # the customer's part unless an admin watches
            with translation.override(self.language):
                message["operation"] = {
                    "id": op["id"],
                    "kind": op.get("kind", ""),
                    "kind_label": str(dict(Operation.Kind.choices).get(op.get("kind"), op.get("kind", ""))),
                    "status": op.get("status", ""),
                    "status_label": live.status_label(op.get("status", "")),
                    "progress": op.get("progress", 0),
                    "error": seen.get("error", ""),
                    "log_tail": seen.get("log_tail", ""),
                    "active": op.get("status") in Operation.ACTIVE,
                }
            message["busy"] = message["operation"]["active"]
        return message

    @database_sync_to_async
    def deleted(self) -> dict:
        op = None
        if self.last_operation_id:
            op = self.actor.restrict(Operation.objects.all()).filter(pk=self.last_operation_id).first()
        with translation.override(self.language):
            return live.deleted_snapshot(op, self.actor)
