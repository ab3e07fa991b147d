#!/usr/bin/env python3
"""How much machine code a thread runs over and over: the instruction-cache footprint.

    python3 scripts/hot_code.py MIN_EXECUTIONS FILE... [--top=N]

FILE is a callgrind profile of one thread, written with `--dump-instr=yes`
(`--separate-threads=yes` writes one per thread). An instruction is hot if it ran at
least MIN_EXECUTIONS times in one file; the script prints how many 64-byte cache lines
the hot instructions of all FILEs span (the union, in KiB), then the functions with the
most hot lines.

Why: an instruction count says what a step costs only while the code a step runs fits
in the core's instruction cache (32 KiB per core on the bench machine). Past that, every
step fetches its code again from L2, and the wall clock grows faster than the count.
See docs/PERFORMANCE.md, "A/B an eleventh time".
"""

import collections
import re
import sys

LINE_BYTES = 64


def position(field, previous):
    """A callgrind position: absolute (hex or decimal), relative (+N, -N) or same (*)."""
    if field == "*":
        return previous
    if field.startswith("+"):
        return previous + int(field[1:], 0)
    if field.startswith("-"):
        return previous - int(field[1:], 0)
    return int(field, 0)


def hot_lines(path, minimum):
    """Cache lines of the instructions run at least `minimum` times, by function."""
    names = {}
    function = "?"
    address = 0
    after_call = False
    lines = collections.defaultdict(set)
    with open(path, encoding="utf-8", errors="replace") as profile:
        for raw in profile:
            raw = raw.rstrip("\n")
            # Names are compressed: "(id) name" the first time, "(id)" after, and a
            # callee's first mention (cfn=) names it for later fn= lines too.
            named = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?$", raw)
            if named:
                kind, ident, name = named.groups()
                if name:
                    names[ident] = name
                if kind == "fn":
                    function = names.get(ident, f"({ident})")
                continue
            if raw.startswith("fn="):
                function = raw[3:]
                continue
            if raw.startswith("calls="):
                # The next cost line is the call's inclusive cost, not executions.
                after_call = True
                continue
            if not raw or not (raw[0] in "+-*" or raw[0].isdigit()):
                continue
            fields = raw.split()
            try:
                address = position(fields[0], address)
            except ValueError:
                continue
            if after_call:
                after_call = False
                continue
            if len(fields) >= 3 and int(fields[2]) >= minimum:
                lines[function].add(address // LINE_BYTES)
    return lines


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--top")]
    top = 30
    for a in argv[1:]:
        if a.startswith("--top="):
            top = int(a.split("=", 1)[1])
    if len(args) < 2:
        sys.exit(__doc__)
    minimum = int(args[0])
    every = set()
    by_function = collections.Counter()
    for path in args[1:]:
        for function, lines in hot_lines(path, minimum).items():
            every |= lines
            by_function[function] = max(by_function[function], len(lines))
    print(f"hot code: {len(every)} lines of {LINE_BYTES} bytes, "
          f"{len(every) * LINE_BYTES / 1024:.1f} KiB")
    for function, count in by_function.most_common(top):
        print(f"{count * LINE_BYTES / 1024:6.2f} KiB  {function[:140]}")


if __name__ == "__main__":
    main(sys.argv)
