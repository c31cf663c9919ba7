"""The parent's side of the helper process (worker): the shares written for it, its answers taken as they come,
and the last shares it has not begun taken back to be read by the parent meanwhile, so the two meet in the middle
however fast each is (a busy machine, a cold disk). Nothing here waits on the other process: its answers are read
from a file when there are any. Anything wrong with the helper (it cannot start, dies, answers out of shape or not
in time) only means the shares it did not answer are read by the caller."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time

from . import worker
from .worker import CLAIM_BYTES, Answer, Settings, Share, frame, get_claim, set_claim, unframe

ANSWER_WAIT_S = 60.0
"""A helper that sends no answer for this long is given up (its shares are read by the caller)."""


class ReadHelper:
    """A running worker reading `count` shares from the first on: take its answers with `ready`, shares to read
    yourself with `take_back`, until `over`; then `close`."""

    def __init__(self, folder: str, process: subprocess.Popen[bytes], sizes: list[int]) -> None:
        self.folder, self.process, self.sizes = folder, process, sizes
        self.file = open(os.path.join(folder, "claim"), "r+b")  # noqa: SIM115 - closed in close()
        self.claim = mmap.mmap(self.file.fileno(), CLAIM_BYTES)
        self.answers = os.open(os.path.join(folder, "answers"), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self.buffer = bytearray()
        self.offset = 0
        self.answered: set[int] = set()
        self.failed = False
        self.progress = time.monotonic()

    @classmethod
    def start(cls, settings: Settings, shares: list[Share]) -> ReadHelper | None:
        """A helper reading `shares` with `settings`; None when it cannot be started here."""
        if not sys.executable or getattr(sys, "frozen", False):  # an embedded interpreter: nothing to start
            return None
        try:
            folder = tempfile.mkdtemp(prefix="lora-studio-scan-")
        except OSError:
            return None
        try:
            with open(os.path.join(folder, "request"), "wb") as request:
                request.write(b"".join(frame(message) for message in (settings, *shares)))
            with open(os.path.join(folder, "claim"), "wb") as claim:
                claim.write((0).to_bytes(8, "little") + len(shares).to_bytes(8, "little"))
            open(os.path.join(folder, "answers"), "wb").close()
            # -I -S: no environment variables, user or site packages, the standard library only
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", worker.__file__, folder], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            )
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)
            return None
        try:
            return cls(folder, process, [len(share[0]) for share in shares])
        except OSError:
            process.kill()
            process.wait()
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def ready(self) -> list[tuple[int, Answer]]:
        """The answers that came since the last call, as (share index, answer)."""
        if self.failed:
            return []
        self._pull()
        got: list[tuple[int, Answer]] = []
        try:
            while (found := unframe(self.buffer, self.offset)) is not None:
                message, self.offset = found
                got.append(_checked(message, self.sizes))
        except (ValueError, EOFError, TypeError):
            self._fail()
            return []
        if got:
            self.progress = time.monotonic()
            self.answered.update(index for index, _ in got)
        return got

    def take_back(self) -> int | None:
        """The last share the helper has not begun, now the caller's to read; None if there is none."""
        lowest, at = get_claim(self.claim, 1), get_claim(self.claim, 0)
        if lowest - 1 <= at or lowest - 1 in self.answered:
            return None
        set_claim(self.claim, 1, lowest - 1)
        return lowest - 1

    def over(self) -> bool:
        """Whether no more answers will come: the helper ended (its last answers taken), failed or is too slow."""
        if self.failed:
            return True
        if self.process.poll() is not None:  # all it wrote is in the file now: over once that is taken
            self._pull()
            return unframe(self.buffer, self.offset) is None
        if time.monotonic() - self.progress > ANSWER_WAIT_S:
            self._fail()
            return True
        return False

    def close(self) -> None:
        """Stop the helper if it still runs, and remove its files."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.claim.close()
        self.file.close()
        os.close(self.answers)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _pull(self) -> None:
        while chunk := os.read(self.answers, 1 << 22):
            self.buffer += chunk

    def _fail(self) -> None:
        self.failed = True
        if self.process.poll() is None:
            self.process.kill()


def _checked(message: object, sizes: list[int]) -> tuple[int, Answer]:
    """(index, answer) if `message` answers one of the shares, whose `sizes` are given; ValueError otherwise."""
    if not (isinstance(message, tuple) and len(message) == 2 and type(message[0]) is int
            and 0 <= message[0] < len(sizes)):
        raise ValueError("not an answer")
    answer = message[1]
    fine = isinstance(answer, list) and len(answer) == sizes[message[0]] and all(
        entry is None or entry is False
        or (type(entry) is tuple and len(entry) == 2 and type(entry[0]) is bytes and type(entry[1]) is int)
        for entry in answer
    )
    if not fine:
        raise ValueError("not an answer")
    return message[0], answer
