"""Who may use the standalone server: the `--auth` / `--auth-file` logins of `serve` and `demo`.

`--listen` (every network interface) needs at least one login; `server_logins` says so before anything loads.
No message here ever contains a password.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from ..errors import LoraStudioError

Login = tuple[str, str]
PRIVATE_MODE_MASK = 0o077  # group and others: any permission on the file makes it shared


class ServerAccessError(LoraStudioError):
    """The server's login options are missing or unusable; nothing was started."""


def add_access_options(group: argparse._ArgumentGroup) -> None:
    """Add `--auth USER:PASSWORD` (repeatable) and `--auth-file FILE` to the web server options."""
    group.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                       help="ask for this login on the page and every API call (repeatable); other users of this "
                       "computer can see it in the process list, so prefer --auth-file")
    group.add_argument("--auth-file", type=Path, metavar="FILE",
                       help="a file of user:password lines (# comments allowed), readable only by you "
                       "(chmod 600); --listen needs this or --auth")


def server_logins(args: argparse.Namespace) -> list[Login]:
    """The logins from `--auth` and `--auth-file` (empty: no login asked).

    ServerAccessError when `--listen` has none, or a value, the file, a line of it or its permissions are unusable.
    """
    logins = [_parse_option(value, index) for index, value in enumerate(args.auth, start=1)]
    if args.auth_file is not None:
        logins += read_auth_file(args.auth_file)
    if args.listen and not logins:
        raise ServerAccessError(
            "--listen opens the app to the network, so it needs a login: add --auth USER:PASSWORD or "
            "--auth-file FILE (lines of user:password, chmod 600)"
        )
    return logins


def read_auth_file(path: Path) -> list[Login]:
    """The user:password lines of `path`; ServerAccessError when other users may read it or a line is not a login."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not UTF-8 text"
        raise ServerAccessError(f"--auth-file {path}: cannot read it ({reason})") from None
    if os.name == "posix" and mode & PRIVATE_MODE_MASK:
        raise ServerAccessError(
            f"--auth-file {path} is open to other users (mode {stat.S_IMODE(mode):04o}); "
            f"make it private with: chmod 600 {path}"
        )
    logins = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        login = _split(line)
        if login is None:
            raise ServerAccessError(
                f"--auth-file {path} line {number} is not user:password (both parts non-empty)"
            )
        logins.append(login)
    if not logins:
        raise ServerAccessError(f"--auth-file {path} has no user:password line")
    return logins


def _parse_option(value: str, index: int) -> Login:
    login = _split(value)
    if login is None:
        raise ServerAccessError(f"--auth value {index} is not USER:PASSWORD (both parts non-empty)")
    return login


def _split(value: str) -> Login | None:
    """`user:password` split at the first colon (the password may hold colons); None unless both are non-empty."""
    user, colon, password = value.partition(":")
    user = user.strip()
    return (user, password) if colon and user and password else None
