#!/usr/bin/env python3
"""A recording sendmail for tests: `fake_sendmail.py DIR [--exit N] [--kill] [--sleep S] SENDMAIL-ARGS...`.

Writes DIR/N.argv (JSON list of the sendmail arguments it was given) and
DIR/N.eml (its standard input), then exits with the given status, or kills
itself with SIGKILL after reading its input. --sleep S waits S seconds after
reading its input, before recording it (a slow sendmail: nothing is recorded
if it is killed meanwhile).
"""

import json
import os
import signal
import sys
import time


def main() -> int:
    outdir, rest = sys.argv[1], sys.argv[2:]
    status, kill, sleep = 0, False, 0.0
    while rest and rest[0] in ("--exit", "--kill", "--sleep"):
        if rest[0] == "--exit":
            status, rest = int(rest[1]), rest[2:]
        elif rest[0] == "--sleep":
            sleep, rest = float(rest[1]), rest[2:]
        else:
            kill, rest = True, rest[1:]
    args = rest  # what mailfilter gave sendmail
    data = sys.stdin.buffer.read()
    time.sleep(sleep)
    name = f"{time.time_ns()}-{os.getpid()}"
    with open(os.path.join(outdir, name + ".eml"), "wb") as fh:
        fh.write(data)
    with open(os.path.join(outdir, name + ".argv"), "w") as fh:
        json.dump(args, fh)
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if status:
        sys.stderr.write(f"fake_sendmail: failing with {status} as told\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
