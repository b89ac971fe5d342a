"""Script names (RFC 5804 §1.6), in a module of their own because both the
store (file names) and the validator (``include`` arguments, RFC 6609 §3.2)
check them, and the store already depends on the validator."""

from __future__ import annotations

MAX_NAME = 128


def name_problem(name: str) -> str | None:
    """RFC 5804 §1.6 names, narrowed to what is safe as a file name."""
    if not name:
        return "a script name cannot be empty"
    if len(name) > MAX_NAME:
        return f"a script name has at most {MAX_NAME} characters"
    if name.startswith(".") or "/" in name or "\\" in name:
        return "a script name cannot start with '.' or hold '/' or '\\'"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in name):
        return "a script name cannot hold control characters"
    return None
