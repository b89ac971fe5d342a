"""How a command handler says NO or BAD."""


class No(Exception):
    """A tagged NO with an optional response code (RFC 5530)."""

    def __init__(self, text: str, code: str = ""):
        super().__init__(text)
        self.code = code


class Bad(Exception):
    """A tagged BAD: the command itself is wrong."""
