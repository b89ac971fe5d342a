"""The Sieve mail filtering language (RFC 5228 and extensions): parse,
validate, run.  Pure Python; no I/O except in ``message.Message``, which
reads a message's body only when a body test needs it.

    script = compile_script(text)                      # SieveError if invalid
    actions = run(script, Message.from_file(path, envelope_from=..., envelope_to=...))

``SUPPORTED_EXTENSIONS`` is what ManageSieve advertises as SIEVE.
"""

from .actions import Action, Discard, Ereject, FileInto, Keep, Redirect, Reject, Vacation
from .errors import SieveError, SieveRuntimeError
from .interpreter import run
from .limits import DEFAULT_LIMITS, Limits
from .message import Message, MessageView
from .parser import parse
from .validate import SUPPORTED_EXTENSIONS, Script, compile_script, validate

__all__ = [
    "Action", "Discard", "Ereject", "FileInto", "Keep", "Redirect", "Reject", "Vacation",
    "SieveError", "SieveRuntimeError", "run", "DEFAULT_LIMITS", "Limits", "Message", "MessageView",
    "parse", "SUPPORTED_EXTENSIONS", "Script", "compile_script", "validate",
]
