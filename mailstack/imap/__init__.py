"""The IMAP server: protocol (parser, formatting, session) and the Twisted daemon."""
