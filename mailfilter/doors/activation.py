"""The listening socket systemd hands over (socket activation, sd_listen_fds(3)), without libsystemd.

systemd's socket unit (systemd/mailfilter-worker.socket) binds [pipe] worker itself
and starts the service on the first connection, with the socket as fd 3 and
LISTEN_FDS=1, LISTEN_PID=<the service's pid> in its environment. A worker that
finds them takes that socket instead of binding its own, and must then leave
the socket file alone: it belongs to the socket unit, which keeps listening (and
queueing clients) while no worker runs.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import MutableMapping

from .pipeclient import unsafe_socket

FIRST_FD = 3  # SD_LISTEN_FDS_START
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """systemd handed over something the worker cannot serve on."""


def listen_fds(environ: MutableMapping[str, str] | None = None) -> int:
    """How many sockets systemd passed to this process (0: not socket-activated).

    The variables are removed, as sd_listen_fds(unset_environment=1) does, so that
    nothing this process starts (sendmail) believes they are meant for it."""
    environ = os.environ if environ is None else environ
    pid, count = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    for name in _VARIABLES:
        environ.pop(name, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return 0
    return int(count)


def inherited_socket(path: str, environ: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The unix stream socket systemd listens on for us, bound to PATH; None when systemd passed none.

    Anything else (several sockets, a datagram or TCP socket, one bound elsewhere than PATH,
    where the clients look) is ActivationError: the socket unit and [pipe] worker disagree."""
    count = listen_fds(environ)
    if count == 0:
        return None
    if count != 1:
        raise ActivationError(f"systemd passed {count} sockets; the worker takes exactly one (one ListenStream= in its .socket unit)")
    try:
        info = os.fstat(FIRST_FD)
    except OSError as exc:
        raise ActivationError(f"systemd said it passed fd {FIRST_FD}, which is not open: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ActivationError(f"fd {FIRST_FD} from systemd is not a socket")
    sock = socket.socket(fileno=FIRST_FD)  # family and type are read from the descriptor
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
            raise ActivationError("the socket from systemd is not a listening unix stream socket (ListenStream=/PATH in the .socket unit)")
        bound = sock.getsockname()
        if not isinstance(bound, str) or not bound or os.path.realpath(bound) != os.path.realpath(path):
            raise ActivationError(f"the socket from systemd is bound to {bound!r}, but clients connect to {path} ([pipe] worker)")
        problem = unsafe_socket(path, os.geteuid())
        if problem:
            raise ActivationError(f"refusing the socket from systemd: {problem}; clients would not use it (SocketUser=, SocketMode=0600)")
    except BaseException:
        sock.detach()  # not ours to close: leave the descriptor as systemd gave it
        raise
    os.set_inheritable(FIRST_FD, False)  # sendmail must not inherit it
    # The description is shared with systemd and the next worker: a blocking one is what they expect.
    sock.setblocking(True)
    return sock
