"""An account's Sieve scripts on disk, in Dovecot Pigeonhole's layout so an
operator can migrate either way: ``ACCOUNT/sieve/NAME.sieve``, and the active
one as the symbolic link ``ACCOUNT/.dovecot.sieve`` -> ``sieve/NAME.sieve``.

Every change is atomic (a file renamed into place, a link replaced by
rename), so delivery reads the old script or the new one, never half.  A
script is compiled before it is stored: what is on disk always parses.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..files import write_atomic
from .errors import SieveError
from .limits import DEFAULT_LIMITS, Limits
from .names import MAX_NAME, name_problem
from .validate import Script, compile_script

SIEVE_DIR = "sieve"
ACTIVE_LINK = ".dovecot.sieve"
SUFFIX = ".sieve"


class ScriptError(Exception):
    """A request the store refuses; ``code`` is the ManageSieve response code."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class ScriptStore:
    """``global_dir``: the site's scripts for ``include :global`` (RFC 6609),
    NAME.sieve files the operator keeps; the store only ever reads them."""

    def __init__(self, account_dir: Path, max_scripts: int = 20, limits: Limits = DEFAULT_LIMITS,
                 global_dir: Path | None = None):
        self.account = account_dir
        self.dir = account_dir / SIEVE_DIR
        self.link = account_dir / ACTIVE_LINK
        self.max_scripts = max_scripts
        self.limits = limits
        self.global_dir = global_dir

    # -- reading ---------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        problem = name_problem(name)
        if problem:
            raise ScriptError(problem)
        return self.dir / (name + SUFFIX)

    def names(self) -> list[str]:
        try:
            return sorted(p.name[: -len(SUFFIX)] for p in self.dir.iterdir()
                          if p.name.endswith(SUFFIX) and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def _adopt_single_file(self) -> None:
        """An old Dovecot setup keeps one script as a plain ``.dovecot.sieve``:
        it becomes ``sieve/dovecot.orig.sieve``, active, as Pigeonhole does."""
        try:
            if self.link.is_symlink() or not self.link.is_file():
                return
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            target = self.dir / f"dovecot.orig{SUFFIX}"
            if not target.exists():
                os.link(self.link, target)
            self.activate("dovecot.orig")
        except OSError:
            pass  # left as it is: delivery then runs no script, and says so

    def active(self) -> str | None:
        """The active script's name; None when no script is active (or the
        link points outside our directory, as only a hand edit could make)."""
        self._adopt_single_file()
        try:
            target = os.readlink(self.link)
        except OSError:
            return None
        head, _, file = target.rpartition("/")
        if head != SIEVE_DIR or not file.endswith(SUFFIX) or not (self.dir / file).is_file():
            return None
        return file[: -len(SUFFIX)]

    def list(self) -> list[tuple[str, bool]]:
        active = self.active()
        return [(n, n == active) for n in self.names()]

    def get(self, name: str) -> str:
        try:
            return self._path(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ScriptError(f"no script named {name!r}", "NONEXISTENT") from None

    def check(self, text: str) -> Script:
        """Compile without storing (SieveError names the line and column)."""
        if len(text.encode("utf-8")) > self.limits.max_script_size:
            raise ScriptError(f"a script has at most {self.limits.max_script_size} bytes", "QUOTA/MAXSIZE")
        return compile_script(text, limits=self.limits)

    def have_space(self, name: str, size: int) -> None:
        """ScriptError unless a script of ``size`` bytes may be stored as ``name``."""
        self._path(name)
        if size > self.limits.max_script_size:
            raise ScriptError(f"a script has at most {self.limits.max_script_size} bytes", "QUOTA/MAXSIZE")
        if name not in self.names() and len(self.names()) >= self.max_scripts:
            raise ScriptError(f"at most {self.max_scripts} scripts per account", "QUOTA/MAXSCRIPTS")

    # -- changes ---------------------------------------------------------------------

    def put(self, name: str, text: str) -> None:
        """Store a script (replacing one of that name); SieveError if it does not compile."""
        path = self._path(name)
        self.have_space(name, len(text.encode("utf-8")))
        self.check(text)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, text, 0o600)

    def activate(self, name: str | None) -> None:
        """Make ``name`` the active script; None deactivates."""
        if name is None:
            self.link.unlink(missing_ok=True)
            return
        if not self._path(name).is_file():
            raise ScriptError(f"no script named {name!r}", "NONEXISTENT")
        tmp = self.account / f".{ACTIVE_LINK}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"{SIEVE_DIR}/{name}{SUFFIX}", tmp)
        os.replace(tmp, self.link)

    def delete(self, name: str) -> None:
        path = self._path(name)
        if self.active() == name:
            raise ScriptError(f"{name!r} is the active script: deactivate it first", "ACTIVE")
        try:
            path.unlink()
        except FileNotFoundError:
            raise ScriptError(f"no script named {name!r}", "NONEXISTENT") from None

    def rename(self, old: str, new: str) -> None:
        src, dst = self._path(old), self._path(new)
        if not src.is_file():
            raise ScriptError(f"no script named {old!r}", "NONEXISTENT")
        if dst.exists():
            raise ScriptError(f"a script named {new!r} exists", "ALREADYEXISTS")
        was_active = self.active() == old
        os.link(src, dst)  # never two names missing at once: link, relink, unlink
        if was_active:
            self.activate(new)
        src.unlink()

    # -- delivery --------------------------------------------------------------------

    def active_script(self) -> Script | None:
        """The active script compiled, or None.  A script that no longer
        compiles (edited by hand, or by an older version) raises SieveError."""
        name = self.active()
        if name is None:
            return None
        return _compiled(self._path(name), self.limits)

    def load_included(self, location: str, name: str) -> Script | None:
        """The loader ``run()`` takes for ``include``: a personal script of
        this account, or a global one of the site; None when there is none.
        SieveError when it does not compile, OSError when it cannot be read."""
        problem = name_problem(name)
        if problem:
            raise SieveError(f"bad script name {name!r}: {problem}", 0, 0)
        if location == "personal":
            return _compiled(self.dir / (name + SUFFIX), self.limits)
        if location == "global" and self.global_dir is not None:
            return _compiled(self.global_dir / (name + SUFFIX), self.limits)
        return None


def _compiled(path: Path, limits: Limits) -> Script | None:
    """The script at ``path`` compiled (None if there is no such file), from
    the cache while the file is unchanged."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:
        hit = _CACHE.get(key[0])
        if hit is not None and hit[0] == key:
            return hit[1]
    if st.st_size > limits.max_script_size:   # not read whole: a hand-made file may be huge
        raise SieveError(f"script too large: {st.st_size} bytes, at most {limits.max_script_size}", 1, 1)
    script = compile_script(path.read_text(encoding="utf-8"), limits=limits)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key[0]] = (key, script)
    return script


# Compiled scripts (active and included), by path, while the file is
# unchanged: a busy MX runs the same few thousand scripts all day.
_CACHE: dict[str, tuple[tuple, Script]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 10000

__all__ = ["ACTIVE_LINK", "MAX_NAME", "SIEVE_DIR", "ScriptError", "ScriptStore", "SieveError", "name_problem"]
