"""The connection layer under the app: uvicorn's h11 protocol with a deadline for each request's
headers, and the uvicorn configuration `gptforge serve` (and the tests) run with.

uvicorn closes a connection that sits idle after a response (timeout_keep_alive), but not one that
sends part of its headers and then nothing: 50 such sockets stayed open for minutes, each holding
a file descriptor. Here every connection must complete a request's headers within `header_timeout`
seconds of opening, or of its previous response, or it is closed.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def _protocol_with_header_timeout(header_timeout: float) -> type[H11Protocol]:
    class HeaderTimeout(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            self._arm()  # before the next pipelined request can start: its cycle is a new one
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout, self._expire, self.cycle)

        def _expire(self, cycle) -> None:
            if self.cycle is cycle and not self.transport.is_closing():  # no request began since
                self.transport.close()

    return HeaderTimeout


def server_config(app, header_timeout: float, **options) -> uvicorn.Config:
    return uvicorn.Config(app, http=_protocol_with_header_timeout(header_timeout), log_level="warning",
                          access_log=False, **options)
