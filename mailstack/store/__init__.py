"""The Maildir store shared by the IMAP and SMTP daemons.

    store = Store(cfg.storage.mail_root)
    mailbox = store.mailbox("ac-normandie.fr", "anne.martin", bytes_limit, messages_limit)
    inbox = mailbox.folder("INBOX")
    uid = inbox.deliver(stream, flags=["\\\\Seen"])      # durable when it returns
    inbox.messages(); inbox.store([uid], ["\\\\Flagged"]); inbox.move([uid], mailbox.folder("Archive"))

On disk it is Dovecot's Maildir++ (dovecot-uidlist v3, dovecot-keywords,
subscriptions, maildirsize), so either server can serve the same mail.
"""

from .folder import KeywordLimit, Message, MessageGone, OverQuota, Status, StoreError
from .mailbox import FolderExists, FolderInfo, Mailbox, NoSuchFolder, Store
from .maildir import MessageTooLarge
from .names import FolderNameError
from .notify import FolderWatcher

__all__ = [
    "FolderExists",
    "FolderInfo",
    "FolderNameError",
    "FolderWatcher",
    "KeywordLimit",
    "Mailbox",
    "Message",
    "MessageGone",
    "MessageTooLarge",
    "NoSuchFolder",
    "OverQuota",
    "Status",
    "Store",
    "StoreError",
]
