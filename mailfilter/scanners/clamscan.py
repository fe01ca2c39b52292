"""ClamAV through clamscan, one process per message (for hosts without clamd).

The message goes to clamscan's standard input (`-`), so no temporary file is
written by us. Its exit status is read through the same table the admin
report uses.
"""

from __future__ import annotations

import re
import subprocess  # nosec B404

from ..config import ClamdConfig
from ..exitcodes import clamscan_code_text
from ..model import SCANNER_CLAMAV, Cause, ScanFailure, VirusOutcome, VirusReport
from ..spool import Spool

_FOUND = re.compile(r"^.*?: (.+) FOUND$", re.MULTILINE)


def scan(message: Spool, config: ClamdConfig) -> VirusOutcome:
    """Blocking: call it from a thread (the pipeline does)."""
    argv = [*config.clamscan, "--no-summary", "--stdout", "-"]
    try:
        # argv: the admin-configured clamscan plus fixed options; the message goes to stdin. No shell.
        proc = subprocess.run(argv, input=message.read(), capture_output=True, timeout=config.timeout, check=False)  # noqa: S603  # nosec B603
    except subprocess.TimeoutExpired:
        return ScanFailure(SCANNER_CLAMAV, Cause.TIMEOUT, f"clamscan gave no answer within {config.timeout:g} s")
    except OSError as exc:
        return ScanFailure(SCANNER_CLAMAV, Cause.UNAVAILABLE, f"cannot run {argv[0]}: {exc.strerror or exc}")
    return interpret(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def interpret(code: int, stdout: str, stderr: str) -> VirusOutcome:
    if code == 0:
        return VirusReport()
    names = tuple(dict.fromkeys(_FOUND.findall(stdout)))
    if code == 1 and names:
        return VirusReport(names, code=1)
    detail = " ".join((stderr.strip() or stdout.strip()).split())[:300]
    text = f"clamscan exit status {code}: {clamscan_code_text(code)}"
    return ScanFailure(SCANNER_CLAMAV, Cause.ERROR, f"{text}; {detail}" if detail else text, code=code)
