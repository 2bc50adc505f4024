"""Instructions per command from per_command.sh's runs (see there).

Usage: per_command.py OUT MODE... [--functions N]

Prints, per mode, the instructions per command of `none` and of the mode
and their difference; then the same without the subscriber's set-up (its
`init`, whose clock calibration varies from run to run by millions of
instructions) and, for recording modes, without the child's reading its
recording back (the bench's check, not the program's cost): the figure
to compare. With
--functions N, the N functions whose inclusive cost per command grows
most over `none`.
"""
import glob
import re
import subprocess
import sys


def total(path):
    for line in open(path):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"{path}: no totals line")


def runs(out, mode, secs):
    """(none's file, ops), (mode's file, ops) of one run: the server
    children in the order they were started (none first, then the mode)."""
    log = open(f"{out}/log-{mode}-{secs}.txt").read()
    files = sorted(glob.glob(f"{out}/cg-{mode}-{secs}.*.out"),
                   key=lambda f: int(f.split(".")[-2]))
    ops = lambda m: int(re.findall(rf"\b{re.escape(m)}=\d+k ops/s \(total_ops=(\d+)\)", log)[-1])
    return (files[-2], ops("none")), (files[-1], ops(mode))


def inclusive(path):
    """Inclusive instructions of each function of a callgrind file."""
    o = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                       capture_output=True, text=True, check=True).stdout
    r = {}
    for line in o.split("\n"):
        m = re.match(r"\s*([\d,]+)\s+\(.*?\)\s+(?!=>)(\S.*)$", line)
        if m and ":" in m.group(2):
            name = re.sub(r" \[.*\]$", "", m.group(2)).strip()
            r[name] = max(r.get(name, 0), int(m.group(1).replace(",", "")))
    return r


def per_command(a, b, f):
    """f's growth per command from run a to run b ((file, ops) pairs)."""
    return (f(b[0]) - f(a[0])) / (b[1] - a[1])


def main():
    args = sys.argv[1:]
    n_fn = 0
    if "--functions" in args:
        i = args.index("--functions")
        n_fn = int(args[i + 1])
        del args[i:i + 2]
    out, modes = args[0], args[1:]
    for m in modes:
        (n1, a1), (n4, a4) = runs(out, m, 1), runs(out, m, 4)
        none = per_command(n1, n4, total)
        mode = per_command(a1, a4, total)
        print(f"{m}: none {none:.0f}/command, {m} {mode:.0f}/command, added {mode - none:.0f}")
        # Set-up is not per command, yet it does not cancel out between
        # the two runs: the clock's calibration at `init` (quanta's) loops
        # until its readings settle, a few million instructions more or
        # less from one start to the next. The recording modes' read back
        # is the bench's check, not the program's cost.
        skip = ["awaitscope::init", "console_subscriber::init"]
        if m.startswith("aw-record"):
            skip.append("awaitscope_benches::read_recording")
        def kept(f, skip=skip):
            inc = inclusive(f)
            return total(f) - sum(max((v for k, v in inc.items() if k.endswith(s)), default=0)
                                  for s in skip)
        mode_k = per_command(a1, a4, kept)
        none_k = per_command(n1, n4, kept)
        print(f"{m} without set-up{' and the read back' if m.startswith('aw-record') else ''}: "
              f"added {mode_k - none_k:.0f}")
        if n_fn:
            fa = (inclusive(a1[0]), inclusive(a4[0]))
            fn = (inclusive(n1[0]), inclusive(n4[0]))
            rows = []
            for k in set(fa[1]) | set(fn[1]):
                grow = ((fa[1].get(k, 0) - fa[0].get(k, 0)) / (a4[1] - a1[1])
                        - (fn[1].get(k, 0) - fn[0].get(k, 0)) / (n4[1] - n1[1]))
                rows.append((grow, k))
            for grow, k in sorted(rows, reverse=True)[:n_fn]:
                print(f"  {grow:8.0f}  {k[:150]}")


main()
