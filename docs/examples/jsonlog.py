"""A log observer factory for twistd --logger: one JSON object per line.

Run: twistd --nodaemon --logger=jsonlog.observer harp-proxy ...
(with this file's directory on PYTHONPATH)
"""
import sys

from twisted.logger import jsonFileLogObserver


def observer():
    # recordSeparator="" gives plain JSON lines (journald, jq, Vector...)
    # instead of RFC 7464 records that start with an ASCII RS character.
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
