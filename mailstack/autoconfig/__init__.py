"""Client autoconfiguration: the documents Thunderbird, Outlook and Apple
devices fetch to set up an account from an address and a password
(documents.py, no I/O), and the HTTPS daemon serving them (server.py)."""
