"""The same calls without a reactor, through txharp.sync.

Run: python call_sync.py [DISPATCHER [PORT]]
"""
import sys

import txharp.sync as harp

dispatcher = sys.argv[1] if len(sys.argv) > 1 else "localhost"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 3502

rpc = harp.HarpCaller(dispatcher, port)

job = rpc.web01.uptime()  # returns once the job is accepted
print("submitted job", job.id())
print("uptime:", job.get())  # blocks until the job ends

job = rpc.web01.tail_log("/var/log/syslog", 3)
for line in job.follow(since=0):
    print(line)
print("result:", job.get())
