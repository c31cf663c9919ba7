"""Hostile requests to the standalone server: other web pages are refused, and with logins every API route asks.

The servers are the real ones (`lib_lora.ui.server`: the studio's Blocks behind OriginGuard, gradio's login,
uvicorn on a free port), run in this process without a model (none of the requests needs one). Two event
functions are wrapped to record their calls, so "nothing was acted on" is checked directly, as is an upload
never landing on disk. The command line's refusals run through `cli.main`, before any model loads.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from lib_lora.cli.main import main  # noqa: E402
from lib_lora.ui.origin_guard import refusal  # noqa: E402

USER, PASSWORD = "alice", "s3cret:with-colon"
NETWORK_HOST = "192.0.2.10"  # what a browser elsewhere on the network puts in Host (a documentation address)
# Origins another page could send; {port} is the server's, {other} another one.
HOSTILE_ORIGINS = ["null", "http://evil.example", "http://127.0.0.1.evil.example:{port}", "http://127.0.0.1:{other}"]
OWN_ORIGINS = ["http://127.0.0.1:{port}", "http://localhost:{port}", "http://[::1]:{port}"]
# The events the wrapped functions belong to: one through the queue, one answered directly.
QUEUED_EVENT, DIRECT_EVENT = "train_queue_listing", "describe"
Cookies = dict[str, str]


@dataclass
class Server:
    """A running guarded studio server, the event calls it recorded and gradio's upload folder."""

    url: str
    port: int
    fn_index: dict[str, int]
    calls: list[str] = field(default_factory=list)
    uploads: Path = Path()
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def origin(self, template: str) -> str:
        return template.format(port=self.port, other=self.port + 1)


def _serve(tmp: Path, *, listen: bool, logins: list[tuple[str, str]]) -> Iterator[Server]:
    from lib_lora.ui import StudioContext, build_studio
    from lib_lora.ui.server import bind_socket, make_server

    blocks = build_studio(StudioContext.for_folder(lambda: None, tmp / "workspace")).queue()
    sock = bind_socket("0.0.0.0" if listen else "127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = Server(url=f"http://127.0.0.1:{port}", port=port, fn_index={}, uploads=tmp / "gradio")
    for index, block_fn in blocks.fns.items():
        if block_fn.name in (QUEUED_EVENT, DIRECT_EVENT) and block_fn.name not in server.fn_index:
            server.fn_index[block_fn.name] = index
            block_fn.fn = _recorded(block_fn.fn, block_fn.name, server.calls)
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(server.uploads)  # gradio's app takes its upload folder when built
    try:
        uvicorn_server = make_server(blocks, sock, logins=logins)
    finally:
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR")
        else:
            os.environ["GRADIO_TEMP_DIR"] = before
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uvicorn_server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uvicorn_server.started, "the server did not start"
    try:
        yield server
    finally:
        server.client.close()
        uvicorn_server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def _recorded(fn: Callable[..., Any], name: str, calls: list[str]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def recorder(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return fn(*args, **kwargs)

    return recorder


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default server: 127.0.0.1, no login."""
    yield from _serve(tmp_path_factory.mktemp("local"), listen=False, logins=[])


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`--listen` with a login: every interface, reached here as a network address (Host header)."""
    yield from _serve(tmp_path_factory.mktemp("network"), listen=True, logins=[(USER, PASSWORD)])


# Each route as (method, path, what to send): everything that reads or acts, including the preflight.
def _routes(server: Server, session: str, served_file: str) -> list[tuple[str, str, dict[str, Any]]]:
    join = {"data": [], "fn_index": server.fn_index[QUEUED_EVENT], "session_hash": session}
    predict = {"data": [], "fn_index": server.fn_index[DIRECT_EVENT]}
    upload = {"files": {"files": (f"hostile-{session}.txt", b"written by another page")}}
    return [
        ("GET", "/", {}),
        ("GET", "/config", {}),
        ("GET", "/info", {}),
        ("POST", "/queue/join", {"json": join}),
        ("GET", f"/queue/data?session_hash={session}", {}),
        ("POST", "/run/predict", {"json": predict}),
        ("POST", "/api/predict", {"json": predict}),
        ("POST", "/call/predict", {"json": predict}),
        ("POST", "/component_server", {"json": {"session_hash": session, "component_id": 1, "fn_name": "x",
                                                "data": None}}),
        ("POST", "/cancel", {"json": {"session_hash": session, "fn_index": 0, "event_id": "x"}}),
        ("POST", "/upload", upload),
        ("GET", f"/file={served_file}", {}),
        ("POST", "/login", {"data": {"username": USER, "password": PASSWORD}}),
        ("OPTIONS", "/queue/join", {"headers": {"Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type"}}),
    ]


def _send(server: Server, method: str, path: str, options: dict[str, Any], *, host: str | None = None,
          origin: str | None = None, cookies: Cookies | None = None) -> httpx.Response:
    headers = dict(options.get("headers", {}))
    if origin is not None:
        headers["Origin"] = origin
    if host is not None:
        headers["Host"] = host
    if cookies:
        headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    extra = {key: value for key, value in options.items() if key != "headers"}
    if path.startswith("/queue/data"):  # an event stream: the answer's head is enough
        with server.client.stream(method, server.url + path, headers=headers) as response:
            if response.status_code != 200:
                response.read()
            return response
    return server.client.request(method, server.url + path, headers=headers, **extra)


def _own_upload(server: Server, *, host: str | None = None, cookies: Cookies | None = None) -> str:
    """Upload a file as the page would; its path, which `/file=` then serves."""
    origin = f"http://{host}" if host else server.url
    upload = _send(server, "POST", "/upload", {"files": {"files": ("own.txt", b"mine")}}, host=host, origin=origin,
                   cookies=cookies)
    assert upload.status_code == 200, upload.text
    path = upload.json()[0]
    assert Path(path).is_relative_to(server.uploads)  # where a hostile upload would land too
    assert _send(server, "GET", f"/file={path}", {}, host=host, origin=origin, cookies=cookies).content == b"mine"
    return path


def _uploaded(server: Server) -> list[Path]:
    return sorted(server.uploads.rglob("hostile-*")) if server.uploads.exists() else []


def _login(server: Server, host: str) -> Cookies:
    response = server.client.post(server.url + "/login", data={"username": USER, "password": PASSWORD},
                                  headers={"Host": host, "Origin": f"http://{host}"})
    assert response.status_code == 200, response.text
    server.client.cookies.clear()  # sent explicitly, per request
    return dict(response.cookies.items())


@pytest.mark.parametrize("template", HOSTILE_ORIGINS)
def test_another_origin_is_refused_on_every_route_and_nothing_is_acted_on(local, network, template):
    """The worst case: the user is logged in, so the other page's requests carry the session cookie."""
    session = uuid.uuid4().hex
    network_host = f"{NETWORK_HOST}:{network.port}"
    cookies = _login(network, network_host)
    for server, host, jar in [(local, None, None), (network, network_host, cookies)]:
        origin = server.origin(template)
        served_file = _own_upload(server, host=host, cookies=jar)
        for method, path, options in _routes(server, session, served_file):
            response = _send(server, method, path, options, host=host, origin=origin, cookies=jar)
            where = f"{method} {path} with Origin {origin}"
            assert response.status_code == 403 and response.text.startswith("refused: "), \
                f"{where}: {response.status_code} {response.text[:80]}"
            granted = {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}
            assert granted == {}, f"{where} granted {granted}"
        assert server.calls == [], f"an event ran for Origin {origin}: {server.calls}"
        assert _uploaded(server) == [], f"an upload from Origin {origin} was written"


@pytest.mark.parametrize("template", OWN_ORIGINS + [None])
def test_the_page_itself_and_tools_without_origin_still_work(local, template):
    origin = None if template is None else local.origin(template)
    session = uuid.uuid4().hex
    assert _send(local, "GET", "/", {}, origin=origin).status_code == 200
    config = _send(local, "GET", "/config", {}, origin=origin)
    assert config.status_code == 200 and "access-control-allow-origin" not in config.headers
    assert config.headers["x-frame-options"] == "DENY"  # no other page may frame it (clickjacking)
    join = {"data": [], "fn_index": local.fn_index[QUEUED_EVENT], "session_hash": session}
    assert _send(local, "POST", "/queue/join", {"json": join}, origin=origin).status_code == 200
    predict = {"data": [], "fn_index": local.fn_index[DIRECT_EVENT]}
    answer = _send(local, "POST", "/run/predict", {"json": predict}, origin=origin)
    assert answer.status_code == 200 and "No model is loaded" in str(answer.json()["data"]), answer.text
    upload = _send(local, "POST", "/upload", {"files": {"files": ("own.txt", b"mine")}}, origin=origin)
    assert upload.status_code == 200
    assert _send(local, "GET", f"/file={upload.json()[0]}", {}, origin=origin).content == b"mine"
    assert _send(local, "GET", "/config", {"headers": {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}},
                 origin=origin).status_code == 200
    _wait_for(lambda: local.calls.count(QUEUED_EVENT) >= 1, "the queued event")
    local.calls.clear()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not run"
        time.sleep(0.05)


REBOUND_HOSTS = ["evil.example:{port}", "127.0.0.1.evil.example:{port}", f"{NETWORK_HOST}:{{port}}"]


@pytest.mark.parametrize("template", REBOUND_HOSTS)
def test_a_local_server_answers_only_its_local_names(local, template):
    """DNS rebinding: another site's name pointed at 127.0.0.1 sends its own name as Host and as Origin."""
    host = template.format(port=local.port)
    for origin in (None, f"http://{host}"):
        response = _send(local, "POST", "/queue/join", {"json": {"data": [], "fn_index": 0,
                                                                 "session_hash": "x"}}, host=host, origin=origin)
        assert response.status_code == 403, (host, origin, response.status_code)


@pytest.mark.parametrize("site, mode, status", [
    ("cross-site", "no-cors", 403), ("same-site", "no-cors", 403),  # another page's <img>/<script>
    ("cross-site", "navigate", 200), ("none", "navigate", 200),  # a link to the app, the address typed in
    ("same-origin", "cors", 200),  # the page itself
])
def test_a_subresource_of_another_page_is_refused_without_origin(local, site, mode, status):
    """A no-cors load from another site carries no Origin, only Sec-Fetch-Site."""
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode}
    assert _send(local, "GET", "/config", {"headers": headers}).status_code == status


def test_with_logins_every_api_route_asks_for_the_login(network):
    host = f"{NETWORK_HOST}:{network.port}"
    session = uuid.uuid4().hex
    served_file = _own_upload(network, host=host, cookies=_login(network, host))
    refused = {}
    for method, path, options in _routes(network, session, served_file):
        if path in ("/", "/login") or method == "OPTIONS":
            continue  # the login page and the login itself
        response = _send(network, method, path, options, host=host, origin=f"http://{host}")
        if response.status_code != 401:
            refused[f"{method} {path}"] = response.status_code
    assert refused == {}, f"answered without a login: {refused}"
    assert network.calls == [] and _uploaded(network) == []
    wrong = network.client.post(network.url + "/login", data={"username": USER, "password": "wrong"},
                                headers={"Host": host})
    assert wrong.status_code >= 400 and "access-token" not in str(wrong.headers)

    cookies = _login(network, host)
    config = _send(network, "GET", "/config", {}, host=host, origin=f"http://{host}", cookies=cookies)
    assert config.status_code == 200
    join = {"data": [], "fn_index": network.fn_index[QUEUED_EVENT], "session_hash": session}
    joined = _send(network, "POST", "/queue/join", {"json": join}, host=host, cookies=cookies)
    assert joined.status_code == 200, joined.text
    _wait_for(lambda: QUEUED_EVENT in network.calls, "the queued event")
    network.calls.clear()


# The command line: a login is required with --listen, and a bad one is refused before the model loads.
def _auth_file(tmp_path: Path, text: str, mode: int) -> str:
    path = tmp_path / "logins.txt"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


REFUSALS: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("listen without login", lambda tmp: ["--listen"], "--listen opens the app to the network"),
    ("login on the command line without colon", lambda tmp: ["--auth", "alice"], "--auth value 1 is not"),
    ("empty password", lambda tmp: ["--listen", "--auth", "alice:"], "--auth value 1 is not"),
    ("file other users can read", lambda tmp: ["--listen", "--auth-file", _auth_file(tmp, "bob:pw1\n", 0o644)],
     "is open to other users (mode 0644); make it private with: chmod 600"),
    ("file with a bad line", lambda tmp: ["--listen", "--auth-file", _auth_file(tmp, "# logins\nbob pw1\n", 0o600)],
     "line 2 is not user:password"),
    ("file without logins", lambda tmp: ["--listen", "--auth-file", _auth_file(tmp, "# none\n\n", 0o600)],
     "has no user:password line"),
    ("missing file", lambda tmp: ["--listen", "--auth-file", str(tmp / "absent.txt")], "cannot read it"),
]


@pytest.mark.parametrize("argv, expected", [(case[1], case[2]) for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_an_unusable_login_is_refused_in_one_line_before_the_model_loads(tmp_path, capsys, command, argv, expected):
    if os.name != "posix" and "mode" in expected:
        pytest.skip("file modes are POSIX")
    with socket.socket() as taken:  # should the refusal fail, serving stops at once instead of running on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        where = ["--workspace", str(tmp_path)] + (["--output-dir", str(tmp_path / "demo")] if command == "demo" else [])
        code = main([command, "--port", str(taken.getsockname()[1]), *where, *argv(tmp_path)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lora-studio: error: "), captured
    assert expected in lines[0]
    assert "loading model" not in captured.out
    assert not re.search(r"pw1|alice:", captured.err + captured.out), "a password was shown"


@pytest.mark.parametrize(
    "origin, host, local_only, refused",
    [
        ("http://127.0.0.1:7861", "127.0.0.1:7861", True, False),
        ("http://localhost:7861", "127.0.0.1:7861", True, False),
        ("http://LOCALHOST:7861", "localhost:7861", True, False),
        ("http://[::1]:7861", "localhost:7861", True, False),
        ("http://127.0.0.1", "127.0.0.1:80", True, False),
        ("http://box.lan:7861", "box.lan:7861", False, False),
        ("http://box.lan:7861", "box.lan:7861", True, True),
        ("http://localhost:7861", "box.lan:7861", False, True),
        ("http://box.lan:7862", "box.lan:7861", False, True),
        ("https://box.lan:7861", "box.lan:7861", False, True),
        ("null", "127.0.0.1:7861", True, True),
        ("null", "box.lan:7861", False, True),
        ("http://127.0.0.1.evil.example:7861", "127.0.0.1:7861", True, True),
        ("http://localhost:7862", "127.0.0.1:7861", True, True),
        ("https://127.0.0.1:7861", "127.0.0.1:7861", True, True),
        ("file://", "127.0.0.1:7861", True, True),
        ("http://127.0.0.1:7861/path", "127.0.0.1:7861", True, True),
        ("http://user@127.0.0.1:7861", "127.0.0.1:7861", True, True),
        ("http://127.0.0.1:7861:80", "127.0.0.1:7861", True, True),
        ("http://127.0.0.1:99999", "127.0.0.1:7861", True, True),
        (None, "127.0.0.1:bad", True, True),
    ],
)
def test_refusal_table(origin, host, local_only, refused):
    headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin is not None else [])
    scope = {"type": "http", "scheme": "http", "headers": headers}
    assert (refusal(scope, local_only=local_only) is not None) is refused


@pytest.mark.browser
def test_the_login_page_and_the_app_work_in_a_browser(network):
    """Headless Chromium: the login form, then the app's own page-load event answered through guard and login."""
    from browser_app import chromium_path, open_page
    from playwright.sync_api import expect

    chromium_path()
    with open_page(network.url + "/") as (page, watch):
        page.get_by_label("username").fill(USER)
        page.get_by_label("password").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        expect(page.locator("#lora_studio_title")).to_contain_text("LoRA Studio", timeout=60_000)
        expect(page.locator("#lora_studio_model_info")).to_contain_text("No model is loaded", timeout=60_000)
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#lora_studio_train_tab")).to_be_visible()
        watch.assert_clean()
    network.calls.clear()
