"""The `mailfilter` command (bin/mailfilter, installed as a script, calls main()).

`pipe` is dispatched here, before click is imported: click would answer a usage
error with exit 2, which pipe(8) bounces, and importing it costs time on every
message. It goes to a running `mailfilter worker` when there is one
(doors/pipeclient.py), else it is filtered in this process (doors/pipe.py).
Everything else goes to the click CLI.
"""

from __future__ import annotations

import os
import sys

EX_TEMPFAIL = 75
_VALUE_OPTIONS = ("-c", "--config")


def _command(argv: list[str]) -> str | None:
    """The first word that is neither an option nor the value of --config."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUE_OPTIONS:
            skip = True
        elif arg == "--" or not arg.startswith("-"):
            return arg
    return None


def _syslog(text: str) -> None:
    """One line to syslog (facility mail), without the logging package: it may be what failed."""
    import syslog

    syslog.openlog("mailfilter/pipe", syslog.LOG_PID, syslog.LOG_MAIL)
    syslog.syslog(syslog.LOG_ERR, text.replace("\n", " ")[:1000])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if _command(argv) == "pipe":
        status = EX_TEMPFAIL
        try:
            from .doors import pipeclient

            try:
                status, line = pipeclient.hand_off(argv, sys.stdin.buffer)
                if line:
                    sys.stdout.write(line + "\n")
            except pipeclient.NoWorker as no_worker:
                from .doors import pipe

                status = pipe.main(argv, sys.stdin.buffer, sys.stdout, note=str(no_worker))
        except BaseException as exc:  # noqa: BLE001 - last resort: pipe.main already catches everything
            try:
                sys.stdout.write("4.3.0 mailfilter: internal error, message deferred\n")
                _syslog(f"error: internal error before the filter's own handling ({type(exc).__name__}: {exc}), message deferred")
            except BaseException:  # noqa: BLE001, S110 - nothing left to tell; the exit status still defers
                pass
        finally:
            try:
                sys.stdout.flush()
                if "logging" in sys.modules:  # not imported at all when a worker did the work
                    sys.modules["logging"].shutdown()
            except BaseException:  # noqa: BLE001, S110 - flushing is best effort; the exit status must still go out
                pass
            # os._exit: no interpreter shutdown that could wait on a scanner thread or raise.
            os._exit(status if status in (0, 69, 75) else EX_TEMPFAIL)
    from .cli import cli

    cli.main(args=argv, prog_name="mailfilter")
