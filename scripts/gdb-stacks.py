# gdb-stacks.py: where a Go process's goroutine stack memory is, by kind.
#
#   gdb -p $PID -batch -x scripts/gdb-stacks.py
#
# Stops the process for a few seconds (reads runtime.allgs through ptrace)
# and prints, per goroutine start function and stack size: how many, their
# bytes, and the median bytes in use at rest (stack top - saved SP; the
# runtime adds its 800-byte guard to this when it decides whether a stack
# can be halved at a GC, see runtime.shrinkstack), then the free slots of
# partly used stack spans (runtime.stackpool), which MemStats.StackInuse
# counts too. Used for docs/performance.md, "Issue 16: idle memory per
# connection". Needs the binary's DWARF (go build without -ldflags=-w).
import gdb, struct, collections
gt = gdb.lookup_type("runtime.g")
def off(field):
    t = gt; o = 0
    for part in field.split("."):
        f = [x for x in t.fields() if x.name == part][0]
        o += f.bitpos // 8; t = f.type
    return o
o_lo = off("stack.lo"); o_hi = off("stack.hi"); o_sp = off("sched.sp")
o_st = off("startpc"); o_status = off("atomicstatus"); o_gopc = off("gopc")
allgs = gdb.parse_and_eval("'runtime.allgs'")
n = int(allgs['len']); arr = int(allgs['array'])
inf = gdb.selected_inferior()
ptrs = struct.unpack("<%dQ" % n, bytes(inf.read_memory(arr, 8*n)))
size = max(o_lo, o_hi, o_sp, o_st, o_status, o_gopc) + 8
names = {}
def name(pc):
    if pc not in names:
        s = gdb.execute("info symbol 0x%x" % pc, to_string=True).strip()
        names[pc] = s.split(" in section")[0]
    return names[pc]
hist = collections.Counter(); used = collections.defaultdict(list)
for p in ptrs:
    b = bytes(inf.read_memory(p, size))
    q = lambda o: struct.unpack_from("<Q", b, o)[0]
    status = struct.unpack_from("<I", b, o_status)[0]
    if status == 6:  # _Gdead
        continue
    lo, hi, sp, st = q(o_lo), q(o_hi), q(o_sp), q(o_st)
    key = (name(st), hi - lo)
    hist[key] += 1
    if sp: used[key].append(hi - sp)
tot = 0
for (fn, sz), c in sorted(hist.items(), key=lambda kv: -kv[1]*kv[0][1]):
    u = sorted(used[(fn, sz)]); med = u[len(u)//2] if u else 0
    tot += c*sz
    if c >= 20:
        print("%7d x %6d B = %9d  rest-used(median) %5d B  %s" % (c, sz, c*sz, med, fn))
print("total stack bytes", tot, "goroutines", sum(hist.values()))
pool = gdb.parse_and_eval("'runtime.stackpool'")
tot = 0
for order in range(4):
    ssize = 2048 << order
    lst = pool[order]['item']['span']
    s = lst['first']; nspans = 0; free = 0
    while int(s) != 0:
        npages = int(s['npages']); ac = int(s['allocCount'])
        free += npages*8192//ssize - ac; nspans += 1
        s = s['next']
    print("order %d (%5d B): %6d partial spans, %7d free stacks = %9d B" % (order, ssize, nspans, free, free*ssize))
    tot += free*ssize
large = gdb.parse_and_eval("'runtime.stackLarge'")
lb = 0
for i in range(int(large['free'].type.sizeof // large['free'][0].type.sizeof)):
    s = large['free'][i]['first']
    while int(s) != 0:
        lb += int(s['npages'])*8192; s = s['next']
print("stackLarge free", lb)
print("pool slack total", tot)
