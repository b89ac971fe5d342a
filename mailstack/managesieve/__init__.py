"""ManageSieve (RFC 5804): users edit their Sieve scripts from their mail client.

``protocol`` parses and formats the wire (no I/O), ``session`` is the state
machine and the commands, ``server`` the asyncio daemon (`mailstack managesieved`).
"""
