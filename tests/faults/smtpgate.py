"""A reinjection outage for the smtp wiring's fault load: a TCP forwarder to Postfix's 10028 smtpd that can go down.

down() refuses new connections and cuts every open one, but never between the final dot of a message and
the smtpd's reply to it: a connection whose end of data has been forwarded is cut right after that reply
has gone back. A cut there would be SMTP's own duplicate window (RFC 1047: the server has the message, the
client never hears so and sends it again), which no filter can close and which this load does not measure.
Everything else a dying smtpd can do to the door (refused, reset mid-DATA, reset while idle in the pool)
happens, so the door's 4xx answers and Postfix's retries are what is tested.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from smtpwiring import Forwarder

END_OF_DATA = b"\r\n.\r\n"


class _Link:
    """One client connection and its upstream; `awaiting` while an end of data waits for its reply."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.lock = threading.Lock()
        self.awaiting = False
        self.cut = False  # down() came: no more bytes either way once nothing awaits a reply
        self.tail = b""  # the last bytes sent upstream, to find an end of data split across reads

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class ReinjectGate(Forwarder):
    """Forwards HOST:port to TARGET; down() and up() as the module says; `cuts` counts connections cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target)
        self.cuts = 0
        self._links: set[_Link] = set()
        self.up()

    def down(self) -> None:
        self.stop_listening()
        with self._lock:
            links = list(self._links)
        for link in links:
            with link.lock:
                link.cut = True
                if not link.awaiting:
                    self.cuts += 1
                    link.close()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=60)
        except OSError:
            client.close()
            return
        link = _Link(client, upstream)
        with self._lock:
            self._links.add(link)
        back = threading.Thread(target=self._replies, args=(link,), daemon=True)
        back.start()
        self._requests(link)
        back.join()
        with self._lock:
            self._links.discard(link)
        client.close()
        upstream.close()

    def _requests(self, link: _Link) -> None:
        """Client to upstream; nothing more once cut, and an end of data marks the link as awaiting."""
        try:
            while data := link.client.recv(65536):
                with link.lock:
                    if link.cut:
                        return
                    seen = link.tail + data
                    if END_OF_DATA in seen or seen.startswith(b".\r\n"):
                        link.awaiting = True
                    link.tail = seen[-4:]
                    link.upstream.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                link.upstream.shutdown(socket.SHUT_WR)

    def _replies(self, link: _Link) -> None:
        """Upstream to client; a reply that ends an awaited end of data lets a pending cut happen after it."""
        try:
            while data := link.upstream.recv(65536):
                with link.lock:
                    link.client.sendall(data)
                    if link.awaiting and data.endswith(b"\r\n"):
                        link.awaiting = False
                        if link.cut:
                            self.cuts += 1
                            link.close()
                            return
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                link.client.shutdown(socket.SHUT_WR)
