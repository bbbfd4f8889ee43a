#!/usr/bin/env python3
"""Attributes the frames of a SQLite WAL to the b-trees (tables and indexes) their pages
belong to, per event: which structures a run's bytes went to.

usage: walstat.py DB WAL EVENTS

Run the engine with ORDERHUB_DEBUG_WAL_AUTOCHECKPOINT=0 (scripts/lifecycle.sh does with
WALSTAT=1) so that the WAL holds every frame of the run, then call this while it still runs
(a clean stop checkpoints and deletes the WAL). Pages are attributed as they are at the end
(dbstat on a copy); pages freed and reused during the run count for their last owner."""
import sqlite3, struct, sys, collections, shutil, tempfile, os
db, wal, events = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(wal, 'rb').read()
magic, version, page_size, ckpt, salt1, salt2, c1, c2 = struct.unpack('>IIIIIIII', data[:32])
frames = []
off = 32
commits = 0
while off + 24 + page_size <= len(data):
    pgno, commit_size, s1, s2, k1, k2 = struct.unpack('>IIIIII', data[off:off+24])
    if (s1, s2) != (salt1, salt2):
        break
    frames.append(pgno)
    if commit_size:
        commits += 1
    off += 24 + page_size
# Map pages to b-trees on a checkpointed copy (the frames' pages as they are at the end).
tmp = tempfile.mkdtemp()
shutil.copy(db, os.path.join(tmp, 'x.db'))
shutil.copy(wal, os.path.join(tmp, 'x.db-wal'))
conn = sqlite3.connect(os.path.join(tmp, 'x.db'))
owner = {}
for name, pageno in conn.execute("SELECT name, pageno FROM dbstat"):
    owner[pageno] = name
count = collections.Counter(owner.get(p, '?(free/overflow/ptrmap)') for p in frames)
total = len(frames)
print(f"page size {page_size}, {total} frames in {commits} commits, {events} events: "
      f"{total*(page_size+24)/events:.0f} B of WAL per event, {total/commits:.1f} pages per commit")
for name, n in count.most_common():
    print(f"  {name:28s} {n:8d} frames  {n/events:6.3f} pages/event  {100*n/total:5.1f}%")
distinct = collections.Counter(owner.get(p, '?') for p in set(frames))
print("distinct pages touched:", sum(distinct.values()))
