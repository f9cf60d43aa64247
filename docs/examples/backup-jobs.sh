#!/bin/sh
# Copy harp-proxy's job store while harp-proxy runs, then check the copy.
# Run: sh backup-jobs.sh DATABASE DESTINATION
set -eu
db="$1"
dest="$2"
# .backup uses SQLite's online backup: a consistent snapshot that includes
# what is still in the write-ahead log, taken without stopping writers.
sqlite3 "$db" ".backup '$dest'"
test "$(sqlite3 "$dest" 'PRAGMA integrity_check')" = ok
echo "backed up $db to $dest"
