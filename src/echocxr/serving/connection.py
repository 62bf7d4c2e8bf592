"""Connection deadlines uvicorn lacks: a connection must send a whole request head within `head_timeout_s`.

uvicorn closes a keep-alive connection that stays idle between requests (`timeout_keep_alive`), but a
connection that opens and sends nothing, or sends its headers a byte at a time, is held forever; a few
hundred of those use up the server's file descriptors. This is uvicorn's h11 protocol with one timer more,
armed when a connection opens and after every response, cancelled when a request head has arrived. A slow
request body is the app's to bound (`ServerConfig.body_timeout_s`, answered 408).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("echocxr.serving")


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's H11Protocol, closing connections that send no complete request head in time."""

    head_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._waiting_after:
            self._cancel_head_timer()  # a request head arrived: the request's own limits take over

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._waiting_after = self.cycle  # the request before the one we wait for (None: a new connection)
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        busy = self.cycle is not None and not self.cycle.response_complete
        if not busy and not self.transport.is_closing():
            log.info("closing a connection that sent no complete request head in %g s", self.head_timeout_s)
            self.transport.close()


def head_timeout_protocol(head_timeout_s: float) -> type[HeadTimeoutProtocol]:
    """The protocol class for uvicorn's `http=` option, with this deadline."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout_s": float(head_timeout_s)})
