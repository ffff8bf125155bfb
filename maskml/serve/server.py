"""Listening: the socket bound before the models load (a port in use is one clear error, and a failed
start releases it), and uvicorn serving the app on it, in the foreground or in a thread."""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from maskml.errors import MaskmlError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise MaskmlError(f"--host {host} is no address of this machine ({exc.strerror}): give an IP address, "
                          f"e.g. 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise MaskmlError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port (or stop "
                          f"the program that uses it)") from None
    return sock


def server_for(app):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def url_of(sock: socket.socket, token: str | None, host: str | None = None) -> str:
    """The address to open: the bound one, or `host` in its place (a wildcard address is no place to go)."""
    bound, port = sock.getsockname()[:2]
    shown = host or bound
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


@contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> Iterator[str]:
    """uvicorn serving `app` in a thread while the block runs; yields its URL (with ?token= when given)."""
    sock = bind(host, port)
    server = server_for(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="maskml serve", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise MaskmlError("the server stopped while starting (see the messages above)")
            time.sleep(0.01)
        yield url_of(sock, token)
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
