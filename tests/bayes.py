"""spamd's Bayes counts, read with sa-learn (the lab's and test_learn's private databases)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def counts(dbpath: Path) -> dict[str, int]:
    """nspam and nham of the Bayes database at DBPATH (sa-learn --dbpath's argument); 0 and 0 before any learning."""
    out = subprocess.run(["sa-learn", "--dbpath", str(dbpath), "--dump", "magic"], capture_output=True, text=True, timeout=60, check=False)
    found = {"nspam": 0, "nham": 0}
    for line in out.stdout.splitlines():
        fields = line.split()
        if fields and fields[-1] in found:
            found[fields[-1]] = int(fields[2])
    return found
