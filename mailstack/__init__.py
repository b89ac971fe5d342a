"""mailstack: an IMAP and SMTP mail server sharing one Maildir store."""

__version__ = "0.1.0"
