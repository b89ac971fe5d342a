"""An account's Maildir: its folders, subscriptions, special-use folders, quota.

``Store(root).mailbox(domain, login)`` is the only way to an account's
files, and it refuses any domain or login that could leave ROOT.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..files import write_atomic
from . import names
from .folder import Folder, OverQuota
from .names import INBOX, FolderNameError
from .quota import Quota, QuotaExceeded, Usage

SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}
SPECIAL_USES = {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
SPECIAL_USE_FILE = "mailstack-special-use"
SUBSCRIPTIONS = "subscriptions"
_LOGIN = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


class NoSuchFolder(FolderNameError):
    pass


class FolderExists(FolderNameError):
    pass


@dataclass(frozen=True)
class FolderInfo:
    name: str
    special_use: str | None
    subscribed: bool
    has_children: bool
    selectable: bool  # False for a parent that exists only through its children


class Store:
    """The mail root: ROOT/DOMAIN/LOGIN/Maildir for every account."""

    def __init__(self, root: Path, shared: bool = False):
        self.root = root
        self.shared = shared  # [storage] shared: a network file system several nodes use

    def mailbox(self, domain: str, login: str, bytes_limit: int = 0, messages_limit: int = 0) -> Mailbox:
        domain, login = domain.lower(), login.lower()
        if not _DOMAIN.match(domain) or ".." in domain:
            raise ValueError(f"invalid domain {domain!r}")
        if not _LOGIN.match(login) or ".." in login:
            raise ValueError(f"invalid login {login!r}")
        return Mailbox(self.root / domain / login / "Maildir", bytes_limit, messages_limit, self.shared)


class Mailbox:
    def __init__(self, path: Path, bytes_limit: int = 0, messages_limit: int = 0, shared: bool = False):
        self.path = path
        self.shared = shared
        self.quota = Quota(path, bytes_limit, messages_limit)
        self.ensure()

    # -- layout ----------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the Maildir and the special-use folders on first use."""
        if (self.path / "cur").is_dir() and (self.path / SUBSCRIPTIONS).exists():
            return
        for sub in ("cur", "new", "tmp"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in SPECIAL_USE:
            self._make_dir(names.dir_name(name))
        if not (self.path / SUBSCRIPTIONS).exists():
            self._write_subscriptions([INBOX, *SPECIAL_USE])

    def _make_dir(self, d: str) -> Path:
        p = self.path / d
        for sub in ("cur", "new", "tmp"):
            (p / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        (p / "maildirfolder").touch()
        return p

    def _dir(self, name: str) -> Path:
        name = names.normalize(name)
        p = self.path / names.dir_name(name) if name != INBOX else self.path
        if p.parent != self.path and p != self.path:  # cannot happen after normalize; belt and braces
            raise FolderNameError(f"{name!r} escapes the mailbox")
        return p

    def _quota_check(self, nbytes: int, nmessages: int) -> None:
        try:
            self.quota.check(nbytes, nmessages)
        except QuotaExceeded as e:
            raise OverQuota(str(e)) from None

    def folder(self, name: str, max_age: float = 0.0, sync: bool = True) -> Folder:
        """Open a folder, synced with its files (``max_age``: see Folder.sync);
        ``sync=False`` for a deliverer that only drops mail in (Folder.drop)."""
        name = names.normalize(name)
        p = self._dir(name)
        if not (p / "cur").is_dir():
            raise NoSuchFolder(f"no folder {name!r}")
        f = Folder(p, name, self._quota_check, self.quota.record, self.shared)
        if sync:
            f.sync(max_age)
        return f

    def exists(self, name: str) -> bool:
        try:
            return (self._dir(name) / "cur").is_dir()
        except FolderNameError:
            return False

    # -- listing ----------------------------------------------------------------------

    def folder_names(self) -> list[str]:
        found = [INBOX]
        with os.scandir(self.path) as it:
            for e in it:
                if e.is_dir() and e.name.startswith(".") and (Path(e.path) / "cur").is_dir():
                    n = names.from_dir_name(e.name)
                    if n is not None:
                        found.append(n)
        return sorted(set(found), key=lambda n: (n != INBOX, n))

    def list(self) -> list[FolderInfo]:
        real = set(self.folder_names())
        everything = set(real)
        for n in real:  # parents that exist only through their children
            p = names.parent(n)
            while p:
                everything.add(p)
                p = names.parent(p)
        subs = set(self.subscriptions())
        uses = self.special_uses()
        out = []
        for n in sorted(everything, key=lambda n: (n != INBOX, n)):
            prefix = n + names.SEPARATOR
            out.append(
                FolderInfo(
                    name=n,
                    special_use=uses.get(n),
                    subscribed=n in subs,
                    has_children=any(o.startswith(prefix) for o in everything),
                    selectable=n in real,
                )
            )
        return out

    def special_uses(self) -> dict[str, str]:
        uses = {n: u for n, u in SPECIAL_USE.items()}
        try:
            for line in (self.path / SPECIAL_USE_FILE).read_text("utf-8").splitlines():
                use, _, name = line.partition(" ")
                if use in SPECIAL_USES and name:
                    uses[name] = use
        except FileNotFoundError:
            pass
        real = set(self.folder_names())
        return {n: u for n, u in uses.items() if n in real}

    # -- changes ----------------------------------------------------------------------------

    def create(self, name: str, special_use: str | None = None) -> None:
        name = names.normalize(name)
        if name == INBOX or self.exists(name):
            raise FolderExists(f"folder {name!r} already exists")
        if special_use is not None:
            if special_use not in SPECIAL_USES:
                raise FolderNameError(f"unknown special use {special_use!r}")
            self._set_special_use(name, special_use)
        self._make_dir(names.dir_name(name))

    def _set_special_use(self, name: str, use: str) -> None:
        path = self.path / SPECIAL_USE_FILE
        try:
            lines = path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        lines = [ln for ln in lines if ln.partition(" ")[2] != name] + [f"{use} {name}"]
        write_atomic(path, "\n".join(lines) + "\n")

    def delete(self, name: str) -> None:
        """Delete a folder and its messages (its children stay, as in Dovecot)."""
        name = names.normalize(name)
        if name == INBOX:
            raise FolderNameError("INBOX cannot be deleted")
        p = self._dir(name)
        if not (p / "cur").is_dir():
            raise NoSuchFolder(f"no folder {name!r}")
        # Rename first so that no reader sees a half-deleted folder (Dovecot does the same).
        trash = self.path / f".DOVECOT-TRASHED.{os.getpid()}.{id(p)}"
        os.rename(p, trash)
        freed_b = freed_m = 0
        for sub in ("cur", "new"):
            for e in os.scandir(trash / sub):
                freed_b += e.stat().st_size
                freed_m += 1
        shutil.rmtree(trash, ignore_errors=True)
        if freed_m:
            self.quota.record(-freed_b, -freed_m)

    def rename(self, old: str, new: str) -> None:
        """Rename a folder; its children follow.  INBOX: its messages move to ``new``."""
        old, new = names.normalize(old), names.normalize(new)
        if new == INBOX or self.exists(new):
            raise FolderExists(f"folder {new!r} already exists")
        if new.startswith(old + names.SEPARATOR):
            raise FolderNameError(f"cannot move {old!r} inside itself")
        if old == INBOX:
            self.create(new)
            src, dst = self.folder(INBOX), self.folder(new)
            src.move([m.uid for m in src.messages()], dst)
            return
        children = [n for n in self.folder_names() if n.startswith(old + names.SEPARATOR)]
        if not self.exists(old) and not children:
            raise NoSuchFolder(f"no folder {old!r}")
        moving = ([old] if self.exists(old) else []) + children
        for n in moving:
            target = new + n[len(old) :]
            names.normalize(target)  # the new names must be valid too, before anything moves
            if self.exists(target):
                raise FolderExists(f"folder {target!r} already exists")
        for n in moving:
            target = new + n[len(old) :]
            os.rename(self._dir(n), self.path / names.dir_name(target))
        subs = self.subscriptions()
        self._write_subscriptions([new + s[len(old) :] if s == old or s.startswith(old + "/") else s for s in subs])

    # -- subscriptions --------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        try:
            text = (self.path / SUBSCRIPTIONS).read_text("utf-8", "replace")
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        if lines and lines[0].startswith("V\t"):
            lines = lines[1:]
        out = []
        for line in lines:
            if line:
                try:
                    out.append(names.normalize(line.replace("\t", names.SEPARATOR)))
                except FolderNameError:
                    continue
        return out

    def subscribe(self, name: str) -> None:
        name = names.normalize(name)
        subs = self.subscriptions()
        if name not in subs:
            self._write_subscriptions(subs + [name])

    def unsubscribe(self, name: str) -> None:
        name = names.normalize(name)
        self._write_subscriptions([s for s in self.subscriptions() if s != name])

    def _write_subscriptions(self, subs: list[str]) -> None:
        # Dovecot 2.3's format: a version line, an empty line, then one
        # name per line with the hierarchy separator written as a TAB.
        body = "".join(s.replace(names.SEPARATOR, "\t") + "\n" for s in dict.fromkeys(subs))
        write_atomic(self.path / SUBSCRIPTIONS, "V\t2\n\n" + body)

    def usage(self) -> Usage:
        return self.quota.usage()
