"""A small, real IMAP4rev1 server for tests (a subset of RFC 3501), on loopback, in a thread.

No IMAP server ships with the project's Python packages, and Debian's dovecot would need a
system install in CI; this one speaks the protocol over a real socket (asyncio) so the
poller's imaplib client is exercised end to end, TLS included. It implements what reading a
mailbox needs, and refuses the rest with ``BAD``:

* CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN, SELECT, EXAMINE, CLOSE;
* SEARCH with ALL, SEEN, UNSEEN, UID <set> (AND-ed), FETCH with UID, FLAGS, RFC822.SIZE,
  RFC822, BODY[] and BODY.PEEK[], STORE with FLAGS/+FLAGS/-FLAGS (and .SILENT);
* the UID forms of SEARCH, FETCH and STORE.

Semantics that matter to a poller are real: ``RFC822`` and ``BODY[]`` set ``\\Seen`` on a
read-write mailbox, ``BODY.PEEK[]`` does not; with STARTTLS offered, LOGIN is refused until
the connection is encrypted (``LOGINDISABLED``). Failure injection: ``drop_on="STORE"``
closes the connection when the next STORE arrives, as a crash between reading a message and
flagging it would. One user; folders are in memory.
"""
from __future__ import annotations

import asyncio
import re
import ssl
import threading
from dataclasses import dataclass, field
from urllib.parse import quote

__all__ = ["ImapServer"]

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


@dataclass
class _Mail:
    uid: int
    raw: bytes
    flags: set[str] = field(default_factory=set)


class ImapServer:
    """``with ImapServer(user, password) as server:`` ``server.deliver(raw)``; ``server.url``."""

    def __init__(self, user: str = "ar@example.test", password: str = "p@ss word", *,
                 tls_context: ssl.SSLContext | None = None, starttls_context: ssl.SSLContext | None = None,
                 folders: tuple[str, ...] = ("INBOX",)):
        self.user, self.password = user, password
        self.tls_context = tls_context  # implicit TLS (imaps://)
        self.starttls_context = starttls_context  # offer STARTTLS on a plain connection
        self.port = 0
        self.drop_on: str | None = None
        self.commands: list[str] = []  # every command name received, e.g. "LOGIN", "UID FETCH"
        self._folders: dict[str, list[_Mail]] = {name.upper(): [] for name in folders}
        self._next_uid = 1
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- the test's side ------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "imaps" if self.tls_context else "imap"
        return f"{scheme}://{quote(self.user, safe='')}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/INBOX"

    def deliver(self, raw: bytes, *, folder: str = "INBOX", seen: bool = False) -> int:
        with self._lock:
            uid = self._next_uid
            self._next_uid += 1
            self._folders[folder.upper()].append(_Mail(uid, raw, {"\\Seen"} if seen else set()))
            return uid

    def flags(self, uid: int, folder: str = "INBOX") -> set[str]:
        with self._lock:
            return next(set(m.flags) for m in self._folders[folder.upper()] if m.uid == uid)

    def unseen(self, folder: str = "INBOX") -> list[int]:
        with self._lock:
            return [m.uid for m in self._folders[folder.upper()] if "\\Seen" not in m.flags]

    def start(self) -> "ImapServer":
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run():
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls_context))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="imap-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("IMAP test server did not start")
        return self

    def stop(self) -> None:
        async def shutdown():
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "ImapServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the protocol ---------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await _Session(self, reader, writer, tls=self.tls_context is not None).run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


class _Bad(Exception):
    """A command the server does not understand: answered ``BAD``."""


def _tokens(text: str, i: int = 0, depth: int = 0) -> tuple[list, int]:
    """Atoms, quoted strings and parenthesised lists (nested lists); ``[...]`` stays in its atom."""
    out: list = []
    while i < len(text):
        c = text[i]
        if c == " ":
            i += 1
        elif c == "(":
            sub, i = _tokens(text, i + 1, depth + 1)
            out.append(sub)
        elif c == ")":
            if depth == 0:
                raise _Bad("unbalanced )")
            return out, i + 1
        elif c == '"':
            j, value = i + 1, []
            while j < len(text) and text[j] != '"':
                if text[j] == "\\" and j + 1 < len(text):
                    j += 1
                value.append(text[j])
                j += 1
            if j >= len(text):
                raise _Bad("unterminated quoted string")
            out.append("".join(value))
            i = j + 1
        else:
            j, brackets = i, 0
            while j < len(text) and (brackets or text[j] not in ' ()"'):
                brackets += {"[": 1, "]": -1}.get(text[j], 0)
                j += 1
            out.append(text[i:j])
            i = j
    if depth:
        raise _Bad("unbalanced (")
    return out, i


def _numbers(spec: str, largest: int) -> set[int]:
    """An IMAP sequence set ("1:*", "2,4:6", "*") over 1..largest (``*`` is the largest)."""
    found: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        try:
            a = largest if lo == "*" else int(lo)
            b = a if not hi else (largest if hi == "*" else int(hi))
        except ValueError:
            raise _Bad(f"bad sequence set {spec!r}") from None
        found.update(range(min(a, b), max(a, b) + 1))
    return found


class _Session:
    def __init__(self, server: ImapServer, reader, writer, *, tls: bool):
        self.server, self.reader, self.writer, self.tls = server, reader, writer, tls
        self.user: str | None = None
        self.folder: str | None = None
        self.read_only = False

    def _capabilities(self) -> str:
        caps = ["IMAP4rev1"]
        if self.server.starttls_context is not None and not self.tls:
            caps += ["STARTTLS", "LOGINDISABLED"]
        return " ".join(caps)

    async def send(self, line: str | bytes) -> None:
        self.writer.write((line.encode() if isinstance(line, str) else line) + b"\r\n")
        await self.writer.drain()

    async def read_command(self) -> str | None:
        """One command line, with any ``{n}`` literals read in and turned into quoted strings."""
        text = ""
        while True:
            line = await self.reader.readline()
            if not line:
                return None
            line = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            m = re.search(r"\{(\d+)\+?\}$", line)
            if not m:
                return text + line
            await self.send("+ Ready for literal data")
            data = (await self.reader.readexactly(int(m.group(1)))).decode("utf-8", "surrogateescape")
            text += line[:m.start()] + '"' + data.replace("\\", "\\\\").replace('"', '\\"') + '"'

    async def run(self) -> None:
        await self.send(f"* OK [CAPABILITY {self._capabilities()}] arhub test IMAP4rev1 server ready")
        while True:
            line = await self.read_command()
            if line is None:
                return
            tag, _, rest = line.partition(" ")
            try:
                words, _ = _tokens(rest)
                if not tag or not words or not isinstance(words[0], str):
                    raise _Bad("expected: tag command [arguments]")
                name = words[0].upper()
                uid = name == "UID"
                if uid:
                    if len(words) < 2 or not isinstance(words[1], str):
                        raise _Bad("UID needs a command")
                    name = words[1].upper()
                    args = words[2:]
                else:
                    args = words[1:]
                self.server.commands.append(("UID " if uid else "") + name)
                if self.server.drop_on and self.server.drop_on.upper() == name:
                    self.server.drop_on = None
                    self.writer.transport.abort()  # the crash: no answer, connection gone
                    return
                if not await self.dispatch(tag, name, args, uid):
                    return
            except _Bad as exc:
                await self.send(f"{tag or '*'} BAD {exc}")

    async def dispatch(self, tag: str, name: str, args: list, uid: bool) -> bool:
        if uid and name not in ("SEARCH", "FETCH", "STORE"):
            raise _Bad(f"UID {name} is not supported")
        if name == "CAPABILITY":
            await self.send(f"* CAPABILITY {self._capabilities()}")
        elif name == "NOOP":
            pass
        elif name == "LOGOUT":
            await self.send("* BYE logging out")
            await self.send(f"{tag} OK LOGOUT completed")
            return False
        elif name == "STARTTLS":
            if self.server.starttls_context is None or self.tls:
                raise _Bad("STARTTLS not available")
            await self.send(f"{tag} OK Begin TLS negotiation now")
            await self.writer.start_tls(self.server.starttls_context)
            self.tls = True
            return True
        elif name == "LOGIN":
            if len(args) != 2 or not all(isinstance(a, str) for a in args):
                raise _Bad("LOGIN user password")
            if "LOGINDISABLED" in self._capabilities():
                await self.send(f"{tag} NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS")
                return True
            if args != [self.server.user, self.server.password]:
                await self.send(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials")
                return True
            self.user = args[0]
        elif self.user is None:
            await self.send(f"{tag} NO log in first")
            return True
        elif name in ("SELECT", "EXAMINE"):
            folder = str(args[0]).upper() if args else ""
            if folder not in self.server._folders:
                self.folder = None
                await self.send(f"{tag} NO no such mailbox")
                return True
            self.folder, self.read_only = folder, name == "EXAMINE"
            with self.server._lock:
                exists, next_uid = len(self.server._folders[folder]), self.server._next_uid
            await self.send(f"* FLAGS ({' '.join(SYSTEM_FLAGS)})")
            await self.send(f"* {exists} EXISTS")
            await self.send("* 0 RECENT")
            await self.send("* OK [UIDVALIDITY 1] UIDs valid")
            await self.send(f"* OK [UIDNEXT {next_uid}] predicted next UID")
            await self.send(f"{tag} OK [{'READ-ONLY' if self.read_only else 'READ-WRITE'}] {name} completed")
            return True
        elif self.folder is None:
            await self.send(f"{tag} NO select a mailbox first")
            return True
        elif name == "CLOSE":
            self.folder = None
        elif name == "SEARCH":
            await self.search(args, uid)
        elif name == "FETCH":
            await self.fetch(args, uid)
        elif name == "STORE":
            await self.store(args, uid)
        else:
            raise _Bad(f"{name} is not supported")
        await self.send(f"{tag} OK {'UID ' if uid else ''}{name} completed")
        return True

    def _selected(self, spec: str, uid: bool) -> list[tuple[int, _Mail]]:
        mails = self.server._folders[self.folder]
        if uid:
            wanted = _numbers(spec, mails[-1].uid if mails else 0)
            return [(i + 1, m) for i, m in enumerate(mails) if m.uid in wanted]
        wanted = _numbers(spec, len(mails))
        return [(i + 1, m) for i, m in enumerate(mails) if i + 1 in wanted]

    async def search(self, args: list, uid: bool) -> None:
        with self.server._lock:
            mails = list(enumerate(self.server._folders[self.folder], start=1))
            i = 0
            while i < len(args):
                key = str(args[i]).upper()
                if key == "ALL":
                    pass
                elif key == "SEEN":
                    mails = [(n, m) for n, m in mails if "\\Seen" in m.flags]
                elif key == "UNSEEN":
                    mails = [(n, m) for n, m in mails if "\\Seen" not in m.flags]
                elif key == "UID" and i + 1 < len(args):
                    keep = {m.uid for _, m in self._selected(str(args[i + 1]), True)}
                    mails = [(n, m) for n, m in mails if m.uid in keep]
                    i += 1
                else:
                    raise _Bad(f"search key {key} is not supported")
                i += 1
            found = [str(m.uid if uid else n) for n, m in mails]
        await self.send("* SEARCH" + "".join(" " + f for f in found))

    async def fetch(self, args: list, uid: bool) -> None:
        if len(args) != 2:
            raise _Bad("FETCH sequence-set items")
        items = args[1] if isinstance(args[1], list) else [args[1]]
        items = [str(item).upper() for item in items]
        known = {"UID", "FLAGS", "RFC822", "RFC822.SIZE", "BODY[]", "BODY.PEEK[]"}
        if unknown := [item for item in items if item not in known]:
            raise _Bad(f"FETCH items not supported: {' '.join(unknown)}")
        with self.server._lock:
            answers = []
            for number, mail in self._selected(str(args[0]), uid):
                reads = any(item in ("RFC822", "BODY[]") for item in items)
                if reads and not self.read_only:
                    mail.flags.add("\\Seen")
                parts: list[bytes] = []
                wanted = (["UID"] if uid and "UID" not in items else []) + items
                if reads and "FLAGS" not in wanted:
                    wanted.append("FLAGS")
                for item in wanted:
                    if item == "UID":
                        parts.append(b"UID %d" % mail.uid)
                    elif item == "FLAGS":
                        parts.append(b"FLAGS (" + " ".join(sorted(mail.flags)).encode() + b")")
                    elif item == "RFC822.SIZE":
                        parts.append(b"RFC822.SIZE %d" % len(mail.raw))
                    else:
                        label = b"RFC822" if item == "RFC822" else b"BODY[]"
                        parts.append(label + b" {%d}\r\n" % len(mail.raw) + mail.raw)
                answers.append(b"* %d FETCH (" % number + b" ".join(parts) + b")")
        for answer in answers:
            await self.send(answer)

    async def store(self, args: list, uid: bool) -> None:
        if len(args) != 3:
            raise _Bad("STORE sequence-set [+|-]FLAGS[.SILENT] (flags)")
        op = str(args[1]).upper()
        silent = op.endswith(".SILENT")
        op = op.removesuffix(".SILENT")
        if op not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise _Bad(f"STORE {op} is not supported")
        flags = {str(f) for f in (args[2] if isinstance(args[2], list) else [args[2]])}
        if self.read_only:
            raise _Bad("mailbox is read-only")
        with self.server._lock:
            answers = []
            for number, mail in self._selected(str(args[0]), uid):
                if op == "FLAGS":
                    mail.flags = set(flags)
                elif op == "+FLAGS":
                    mail.flags |= flags
                else:
                    mail.flags -= flags
                if not silent:
                    uid_part = f"UID {mail.uid} " if uid else ""
                    answers.append(f"* {number} FETCH ({uid_part}FLAGS ({' '.join(sorted(mail.flags))}))")
        for answer in answers:
            await self.send(answer)
