"""Code written for the original harp library; only the import line changed.

Run: python migrate_harp.py [DISPATCHER [PORT]]
"""
import sys

import txharp.sync as harp  # was: import harp

rpc = harp.HarpCaller(sys.argv[1] if len(sys.argv) > 1 else "localhost",
                      int(sys.argv[2]) if len(sys.argv) > 2 else 3502)

# result() returns instead of raising, and "not finished" is not cached:
# asking again after the job ended gives its value.
job = rpc.web01.sleep(1)
print("finished at first:", job.result() is not harp.CALL_NOT_FINISHED)
print("get() waits:", job.get())
print("result() now:", job.result())

# Options for every call to a host, then a call; stream iterators work on
# Python 3 (the original's lacked __next__).
job = rpc.web01(queue={"deploy": "web01"}, max_exec_time=60).tail_log("/var/log/syslog", 3)
for number, line in job.follow(since=0, numbered=True):
    print(number, line)
print("stream():", job.stream().all())

# A job can be found again by its ID, with its metadata.
same = rpc.job(job.id())
print("value:", same.get(), "host:", same.host(), "procedure:", same.procedure(),
      "args:", same.args())

try:
    rpc.host("no-such-host").uptime().get()
except harp.RemoteError as e:
    print("error:", e.type)
