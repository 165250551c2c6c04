#!/usr/bin/env python3
"""cpusplit.py — where a CPU profile's time goes, per message, in the
categories of docs/performance.md ("The floor: a bare grpc-go relay on the
same shape"). Every sample is counted once: by the syscall it is in
(fdatasync; the commit log's or pebble WAL's write; a socket write or
read; the netpoller), else the scheduler and futex wake-ups, the GC,
allocation, else by the first frame up the stack that is not the runtime
or the standard library's helpers (grpc-go and x/net/http2, protobuf,
pebble, chatd's or grpcfloor's own code).

    scripts/bench/cpusplit.py BINARY PROFILE MESSAGES [-v]

MESSAGES: the messages sent during the profile (rate x seconds); -v lists
what fell into "other".
"""
import re, subprocess, sys, collections
binp, prof, n = sys.argv[1], sys.argv[2], float(sys.argv[3])
out = subprocess.run(["go", "tool", "pprof", "-traces", binp, prof], capture_output=True, text=True).stdout
def val(s):
    m = re.match(r"([0-9.]+)(ms|s|us|µs)", s)
    v = float(m.group(1)); u = m.group(2)
    return v * {"s": 1000, "ms": 1, "us": 1e-3, "µs": 1e-3}[u]
cats = collections.Counter(); total = 0
for block in out.split("-----------+-------------------------------------------------------"):
    lines = [l for l in block.splitlines() if l.strip()]
    while lines and re.match(r"\s+\S+:\s", lines[0]) and not re.match(r"\s+[0-9.]+(ms|s|us|µs)\s", lines[0]):
        lines = lines[1:]  # pprof labels
    if not lines or not re.match(r"\s+[0-9.]+(ms|s|us|µs)\s", lines[0]):
        continue
    v = val(lines[0].split()[0])
    stack = [lines[0].split(None, 1)[1].strip()] + [l.strip() for l in lines[1:]]
    total += v
    s = " ".join(stack)
    def has(p): return re.search(p, s) is not None
    if has(r"Fdatasync"): c = "fdatasync"
    elif has(r"syscall\.(write|pwrite|Pwrite)") and has(r"pebble|commitLog|os\.\(\*File\)\.WriteAt"): c = "log write"
    elif has(r"syscall\.write"): c = "socket write"
    elif has(r"syscall\.read"): c = "socket read"
    elif has(r"EpollWait|runtime\.netpoll"): c = "netpoll"
    elif has(r"gcBgMarkWorker|gcDrain|markroot|bgsweep|bgscavenge"): c = "GC"
    elif has(r"runtime\.(schedule|findRunnable|park_m|futex|wakep|startm|stopm|notewakeup|mcall|goready|ready)\b"): c = "scheduler+futex"
    elif has(r"runtime\.mallocgc"): c = "malloc"
    else:
        c = "other"
        for f in stack:
            if f.startswith(("runtime.", "internal/", "sync.", "sync/atomic", "memeqbody", "cmpbody", "aeshash", "indexbyte", "bytes.", "context.", "reflect.", "time.", "hash/", "strings.", "sort.", "slices.", "maps.", "encoding/binary", "gcWriteBarrier", "unicode")):
                continue
            if re.match(r"(google\.golang\.org/grpc|golang\.org/x/net/http2)", f): c = "grpc framing (HTTP/2, streams)"
            elif f.startswith("google.golang.org/protobuf") or "chat.Codec" in f or "server/chat.(*codec" in f: c = "protobuf"
            elif "pebble" in f: c = "pebble (memtable, batches)"
            elif f.startswith("github.com/chatd/chatd") or f.startswith("main."): c = "own code"
            else: c = "other: " + f.split("(")[0][:40]
            break
    cats[c] += v
print(f"total {total:.0f} ms of samples = {total/n:.3f} ms per message")
other = 0
for c, v in cats.most_common():
    if c.startswith("other"):
        other += v; continue
    print(f"{c:32s} {v/n:.3f} ms/msg  {100*v/total:4.1f} %")
print(f"{'other':32s} {other/n:.3f} ms/msg  {100*other/total:4.1f} %")
if "-v" in sys.argv[4:]:
    for c, v in cats.most_common():
        if c.startswith("other"): print("   ", c, round(v))
