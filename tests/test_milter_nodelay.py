"""The milter's TCP listener gets TCP_NODELAY, which Linux gives every connection accepted from it (no Nagle stall
between libmilter's small writes at end of message: bench/miltertcp.py measures the effect)."""

from __future__ import annotations

import socket

from mailfilter.doors.milter import nodelay_listeners


def test_listening_tcp_sockets_get_nodelay_and_their_connections_inherit_it():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    other = socket.socket()  # a TCP socket that does not listen: left alone
    unix = socket.socket(socket.AF_UNIX)
    try:
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert nodelay_listeners() >= 1
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert other.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert client.fileno() >= 0  # the descriptors it looked at are still open and ours
        assert listener.fileno() >= 0 and unix.fileno() >= 0
    finally:
        for sock in (listener, other, unix):
            sock.close()
