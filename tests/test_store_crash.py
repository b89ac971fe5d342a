"""Crash safety: SIGKILL a delivering, flag-changing process at random moments.

After every kill: each message whose delivery returned is present exactly
once with the UID it was given, no UID was reused, UIDVALIDITY is unchanged,
acknowledged flag changes are on disk, and the index agrees with the files.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from mailstack.store.folder import Folder
from mailstack.store.mailbox import Store
from mailstack.store.maildir import FileName
from mailstack.store.uidlist import read as read_uidlist

WORKER = r"""
import io, random, sys
from pathlib import Path
from mailstack.store.mailbox import Store
root, start, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
f = Store(Path(root)).mailbox("ac-normandie.test", "crash.test").folder("INBOX")
uids = []
for i in range(start, start + 1000):
    token = f"tok{i}"
    body = f"Subject: {token}\nX-Token: {token}\n\n".encode() + b"x" * rng.randrange(10, 3000) + b"\n"
    print("d", token, flush=True)
    uid = f.deliver(io.BytesIO(body))
    print("D", token, uid, flush=True)
    uids.append(uid)
    if rng.random() < 0.5:
        u = rng.choice(uids)
        flags = rng.sample(["\\Seen", "\\Flagged", "\\Answered", "Todo", "Done"], rng.randrange(0, 4))
        print("f", u, ",".join(flags), flush=True)
        f.store([u], flags, "replace")
        print("F", u, ",".join(flags), flush=True)
"""

TOKEN = re.compile(rb"X-Token: (tok\d+)")


def test_sigkill_while_delivering_and_flagging(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    mb = Store(root).mailbox("ac-normandie.test", "crash.test")
    validity = mb.folder("INBOX").uidvalidity
    rng = random.Random(20261125)
    acked: dict[str, int] = {}  # token -> uid
    flags_acked: dict[int, frozenset[str]] = {}
    flags_uncertain: dict[int, set[frozenset[str]]] = {}
    started = 0
    seen_uids: set[int] = set()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for round_ in range(30):
        p = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), str(started), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        time.sleep(rng.uniform(0.3, 0.9))  # startup takes part of it: kills land anywhere
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        pending_flags: dict[int, frozenset[str]] = {}
        for line in out.split("\n")[:-1]:  # the last piece may be a line cut by the kill
            parts = line.split(" ")
            if parts[0] == "D":
                assert parts[1] not in acked
                acked[parts[1]] = int(parts[2])
            elif parts[0] == "d":
                started = max(started, int(parts[1][3:]) + 1)
            elif parts[0] == "f":
                pending_flags[int(parts[1])] = frozenset(x for x in parts[2].split(",") if x)
            elif parts[0] == "F":
                uid = int(parts[1])
                flags_acked[uid] = pending_flags.pop(uid)
                flags_uncertain.pop(uid, None)
        for uid, fl in pending_flags.items():  # killed mid-change: old or new flags
            flags_uncertain[uid] = {flags_acked.get(uid, frozenset()), fl}
        check(mb, validity, acked, flags_acked, flags_uncertain, seen_uids)
    assert len(acked) > 300, f"only {len(acked)} deliveries acknowledged: the kills came too early"


def check(mb, validity, acked, flags_acked, flags_uncertain, seen_uids) -> None:
    folder: Folder = mb.folder("INBOX")  # a fresh open: sync with what the crash left
    try:
        assert folder.uidvalidity == validity
        on_disk: dict[str, list[int]] = {}
        for m in folder.messages():
            with folder.open(m.uid) as fh:
                token = TOKEN.search(fh.read(200)).group(1).decode()
            on_disk.setdefault(token, []).append(m.uid)
        for token, uids in on_disk.items():
            assert len(uids) == 1, f"{token} stored {len(uids)} times: {uids}"
        for token, uid in acked.items():
            assert on_disk.get(token) == [uid], f"acknowledged {token} (UID {uid}) found as {on_disk.get(token)}"
        # no UID was ever given to two messages
        uid_to_token = {uids[0]: t for t, uids in on_disk.items()}
        assert len(uid_to_token) == len(on_disk)
        for uid in seen_uids & set(uid_to_token):
            assert uid in uid_to_token
        seen_uids |= set(uid_to_token)
        # acknowledged flags
        msgs = {m.uid: m for m in folder.messages()}
        for uid, fl in flags_acked.items():
            if uid in flags_uncertain:
                assert msgs[uid].flags in flags_uncertain[uid]
            else:
                assert msgs[uid].flags == fl, (uid, msgs[uid].flags, fl)
        # the index agrees with the files and the uid list
        ul = read_uidlist(folder.path)
        files = {}
        for sub in ("new", "cur"):
            for name in os.listdir(folder.path / sub):
                fn = FileName.parse(name)
                files[fn.base] = fn.letters
        from_files = {ul.uids[b]: letters for b, letters in files.items()}
        from_index = {r.uid: r.letters for r in folder.index.rows()}
        assert from_index == from_files
        assert os.listdir(folder.path / "tmp") == [] or all(
            not n.startswith("maildirsize") for n in os.listdir(folder.path / "tmp")
        )
    finally:
        folder.close()
