"""Bounds that keep a hostile script or message from eating the server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Parse-time and run-time limits; the defaults suit a school district."""

    max_script_size: int = 64 * 1024   # bytes of script text
    max_depth: int = 32                # nested blocks and tests
    max_commands: int = 2048           # commands and tests in one script
    max_list_length: int = 1024        # strings in one string list
    max_actions: int = 32              # actions one run may produce
    max_redirects: int = 5             # distinct redirect addresses per run
    max_variables: int = 128           # distinct variable names per run
    max_variable_size: int = 4096      # characters kept in a variable (RFC 5229 §6 allows truncation)
    max_string_size: int = 64 * 1024   # characters of one string after ${...} expansion
    match_seconds: float = 2.0         # CPU budget of all :matches/:regex work in one run
    max_include_depth: int = 5         # scripts included within included scripts (RFC 6609)
    max_includes: int = 10             # include commands that load a script, per run


DEFAULT_LIMITS = Limits()
