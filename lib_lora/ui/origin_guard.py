"""`OriginGuard`: the standalone server answers its own page only, never another web page's scripts.

gradio 4.40 echoes any `Origin` of a request made to 127.0.0.1 (`null` included) with credentials allowed, and
any origin at all when served on 0.0.0.0, so every web page the user opens could drive the app. The guard wraps
the whole ASGI app: a request from another origin is answered 403 before the app sees it, and the app's
`Access-Control-Allow-*` answers are dropped (its own page never needs them), and no other page may show it in a
frame (where clicks could be tricked into it).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Names of this computer a browser may use for it: one origin in the guard's eyes.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
DEFAULT_PORTS = {"http": 80, "https": 443}
HTTP_SCHEMES = {"ws": "http", "wss": "https"}
# Sec-Fetch-Site values of a request the page itself (or the user, typing the address) made.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})

Authority = tuple[str, str, int]  # scheme, host name, port


class OriginGuard:
    """Wrap `app`: cross-origin HTTP and WebSocket requests get 403; answers lose their CORS grants and may not
    be framed.

    A request is the page's own when its `Origin` (if any) is the scheme, host and port it was sent to (the
    loopback names counting as one) and, without `Origin`, its `Sec-Fetch-Site` (if any) is not another
    site's sub-request. With `local_only`, the `Host` must also be a loopback name (a rebound DNS name is not).
    """

    def __init__(self, app: ASGIApp, *, local_only: bool) -> None:
        self.app = app
        self.local_only = local_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = refusal(scope, local_only=self.local_only)
        if reason is not None:
            await _refuse(scope, send, reason)
            return
        await self.app(scope, receive, _own_page_only(send) if scope["type"] == "http" else send)


def refusal(scope: Scope, *, local_only: bool) -> str | None:
    """Why the request in `scope` is not the page's own, or None when it is."""
    headers = _headers(scope)
    scheme = HTTP_SCHEMES.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
    hosts = headers.get("host", [])
    if len(hosts) != 1:
        return "the request needs exactly one Host header"
    own = _authority(f"{scheme}://{hosts[0]}")
    if own is None:
        return f"Host {_short(hosts[0])} is not a host name"
    if local_only and own[1] not in LOOPBACK_NAMES:
        return f"Host {_short(hosts[0])} is not this computer (the app serves 127.0.0.1 and localhost only)"
    origins = headers.get("origin", [])
    if not origins:
        site = (headers.get("sec-fetch-site") or ["none"])[0]
        mode = (headers.get("sec-fetch-mode") or ["navigate"])[0]
        if site not in OWN_FETCH_SITES and mode != "navigate":
            return f"a {site} request from another page"
        return None
    if len(origins) > 1:
        return "the request has more than one Origin header"
    if not _same(_authority(origins[0]), own):
        return f"Origin {_short(origins[0])} is not this server ({own[0]}://{hosts[0]})"
    return None


def _same(origin: Authority | None, own: Authority) -> bool:
    if origin is None or origin[0] != own[0] or origin[2] != own[2]:
        return False
    return origin[1] == own[1] or (origin[1] in LOOPBACK_NAMES and own[1] in LOOPBACK_NAMES)


def _authority(url: str) -> Authority | None:
    """(scheme, host name, port) of an origin-like URL, or None when it is not one (`null`, a path, a bad port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    return scheme, parts.hostname.lower().rstrip("."), port if port is not None else DEFAULT_PORTS[scheme]


def _headers(scope: Scope) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in scope.get("headers", []):
        found.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return found


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


async def _refuse(scope: Scope, send: Send, reason: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
        return
    body = f"refused: {reason}; open the app at its own address instead\n".encode()
    await send({
        "type": "http.response.start",
        "status": 403,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


def _own_page_only(send: Send) -> Send:
    """`send` with the response's CORS grants removed and framing by any page refused."""
    async def send_own(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value) for name, value in message.get("headers", [])
                if not name.lower().startswith(b"access-control-allow-") and name.lower() != b"x-frame-options"
            ]
            message["headers"] = [*headers, (b"x-frame-options", b"DENY")]
        await send(message)

    return send_own
