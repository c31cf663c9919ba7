"""The standalone web server: the studio's `gr.Blocks` behind `OriginGuard`, with gradio's own login when asked.

gradio's `launch()` builds its app and starts serving in one call, leaving no moment to put a guard in front of
it, so the Blocks are mounted on an app of ours (gradio's documented `mount_gradio_app`) and served by uvicorn
on a socket bound beforehand (a taken port is an OSError before anything else starts). Standalone only: gradio 4.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Callable, Sequence

import gradio as gr
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from starlette.routing import Mount

from .origin_guard import OriginGuard

GRACEFUL_SHUTDOWN_S = 3  # requests still running after this on Ctrl+C are cancelled


def bind_socket(address: str, port: int) -> socket.socket:
    """A TCP socket bound to `address:port`; OSError when the port is taken or the address is not this machine's."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if os.name == "posix":  # a restart may reuse a port in TIME_WAIT (on Windows it would share a used one)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_blocks(blocks: gr.Blocks, sock: socket.socket, *, logins: Sequence[tuple[str, str]],
                 on_ready: Callable[[], None]) -> None:
    """Serve `blocks` on the bound `sock` until Ctrl+C (or SIGTERM); `on_ready()` once it accepts connections."""
    make_server(blocks, sock, logins=logins, on_ready=on_ready).run(sockets=[sock])


def make_server(blocks: gr.Blocks, sock: socket.socket, *, logins: Sequence[tuple[str, str]],
                on_ready: Callable[[], None] = lambda: None) -> uvicorn.Server:
    """The server for `blocks` on `sock`, not started (`.run(sockets=[sock])`).

    Only same-origin requests reach the app; on a loopback address only local Host names do; with `logins`,
    the page and every API route ask for one of them.
    """
    blocks.show_api = False
    outer = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    gr.mount_gradio_app(outer, blocks, path="/", auth=list(logins) or None, show_error=False,
                        app_kwargs={"dependencies": [Depends(_logged_in_to_post)]})
    mounted = next(route.app for route in outer.routes if isinstance(route, Mount))
    local_only = ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    config = uvicorn.Config(OriginGuard(outer, local_only=local_only), log_level="warning",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    return _Server(config, on_ready=on_ready, on_stop=mounted.stop_event.set)


def _logged_in_to_post(request: Request) -> None:
    """With logins, every POST but the login itself needs a session (gradio 4.40 leaves /cancel, /reset open).

    The session is gradio's own: its cookie names the token `/login` stored in the gradio app.
    """
    app = request.app
    if request.method != "POST" or not getattr(app, "auth", None) or request.url.path.rstrip("/") == "/login":
        return
    cookie_id = getattr(app, "cookie_id", "")
    token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(
        f"access-token-unsecure-{cookie_id}")
    if token is None or token not in getattr(app, "tokens", {}):
        raise HTTPException(status_code=401, detail="Not authenticated")


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_ready` once its sockets listen and `on_stop` as it begins to stop."""

    def __init__(self, config: uvicorn.Config, *, on_ready: Callable[[], None], on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._on_stop = on_stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()  # ends the open pages' heartbeat streams, as gradio's own close() does
        await super().shutdown(sockets=sockets)
