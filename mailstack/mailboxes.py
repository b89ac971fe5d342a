"""Where accounts meet the store: an account's Maildir with its quota.

The store knows nothing of accounts and the accounts know nothing of the
store; the daemons and the CLI open mailboxes through here.
"""

from __future__ import annotations

import os
from pathlib import Path

from .accounts.directory import AccountInfo
from .config import Config
from .store.mailbox import Mailbox, Store


def limits(cfg: Config, info: AccountInfo) -> tuple[int, int]:
    """(bytes, messages): the account's own, else the [storage] defaults; 0 = none."""
    b = info.quota_bytes if info.quota_bytes is not None else cfg.storage.quota_bytes
    m = info.quota_messages if info.quota_messages is not None else cfg.storage.quota_messages
    return b, m


def account_dir(cfg: Config, info: AccountInfo) -> Path:
    """MAIL_ROOT/DOMAIN/LOGIN: the account's Maildir and Sieve scripts are below it."""
    return cfg.storage.mail_root / info.address.rsplit("@", 1)[1] / info.login


def mailbox_for(cfg: Config, info: AccountInfo) -> Mailbox:
    """The account's Maildir, created with its special-use folders on first use."""
    home = account_dir(cfg, info)
    fresh = not home.exists()
    mb = Store(cfg.storage.mail_root, cfg.storage.shared).mailbox(home.parent.name, info.login, *limits(cfg, info))
    if fresh:
        _give_to_mail_owner(cfg.storage.mail_root, home)
    return mb


def _give_to_mail_owner(root: Path, tree: Path) -> None:
    """When root creates a Maildir (the CLI), hand it to the daemons' user:
    the owner of the mail root."""
    if os.geteuid() != 0:
        return
    st = root.stat()
    if st.st_uid == 0:
        return
    for p in [tree.parent, tree, *tree.rglob("*")]:
        if p == root or not str(p).startswith(str(root)):
            continue
        os.lchown(p, st.st_uid, st.st_gid)


def scripts_for(cfg: Config, info: AccountInfo):
    """The account's Sieve scripts (beside its Maildir, as Dovecot keeps them)."""
    from .sieve.limits import Limits
    from .sieve.scripts import ScriptStore

    limits = Limits(max_script_size=cfg.sieve.max_script_size, max_redirects=cfg.sieve.max_redirects)
    return ScriptStore(account_dir(cfg, info), cfg.sieve.max_scripts, limits, cfg.sieve.global_dir)
