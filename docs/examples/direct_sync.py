"""harpd directly, without a reactor: txharp.sync.HarpServer.

Run: HARPD_PASSWORD=... python direct_sync.py [HOST [PORT [CA_FILE]]]
"""
import os
import sys

import txharp.sync as harp

host = sys.argv[1] if len(sys.argv) > 1 else "web01.example.net"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 4306
ca_file = sys.argv[3] if len(sys.argv) > 3 else "/etc/harp/ca.pem"

server = harp.HarpServer(host, "alice", os.environ["HARPD_PASSWORD"], port, ca_file=ca_file)
print("uptime:", server.uptime())
for item in server.tail_log("/var/log/syslog", 3):
    if isinstance(item, harp.Result):
        print("result:", item.value)
    else:
        print("packet:", item)
