"""Copy harp-proxy's job store while it runs, without the sqlite3 program.

Run: python backup_jobs.py DATABASE DESTINATION
"""
import sqlite3
import sys

source_path, destination_path = sys.argv[1], sys.argv[2]

source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
destination = sqlite3.connect(destination_path)
with destination:
    source.backup(destination)  # SQLite's online backup API
(check,) = destination.execute("PRAGMA integrity_check").fetchone()
destination.close()
source.close()
if check != "ok":
    sys.exit(f"the copy is damaged: {check}")
print(f"backed up {source_path} to {destination_path}")
