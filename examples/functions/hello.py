#!/usr/bin/env python3
"""hello: an example function for Serverless Managers, in Python 3 with the standard library only.

It follows the function contract of docs/function-contract.md:

- serves HTTP on 127.0.0.1:$PORT, or on the listening socket of fd 3 when the backend hands one
  over (socket activation: LISTEN_FDS=1 and LISTEN_PID naming this process);
- GET /healthz answers 200 "ok" (for `readiness = { http = "/healthz" }`);
- every other request answers 200 with a small JSON document: the greeting ($GREETING, default
  "hello"), the method and path, the function and instance ($SMGR_FUNCTION, $SMGR_INSTANCE) and
  the pid;
- on SIGTERM (or SIGINT) it stops accepting, finishes the requests in flight and exits 0.

Run it by hand with `PORT=8080 examples/functions/hello.py`.
"""

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

GREETING = os.environ.get("GREETING", "hello")
FUNCTION = os.environ.get("SMGR_FUNCTION", "")
INSTANCE = os.environ.get("SMGR_INSTANCE", "")

# The systemd socket-activation convention: the first passed descriptor is fd 3.
LISTEN_FD = 3


class Handler(BaseHTTPRequestHandler):
    """Answers every method: the health check, or the JSON greeting."""

    protocol_version = "HTTP/1.1"
    server_version = "hello-py"

    def __getattr__(self, name):
        # BaseHTTPRequestHandler dispatches to `do_<METHOD>`: answer them all alike.
        if name.startswith("do_"):
            return self.answer
        raise AttributeError(name)

    def answer(self):
        self.discard_body()
        path = urlsplit(self.path).path
        if self.command in ("GET", "HEAD") and path == "/healthz":
            body, content_type = b"ok\n", "text/plain"
        else:
            document = {
                "greeting": GREETING,
                "method": self.command,
                "path": self.path,
                "function": FUNCTION,
                "instance": INSTANCE,
                "pid": os.getpid(),
            }
            body, content_type = (json.dumps(document) + "\n").encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # One request per connection: a shutdown then only waits for requests in flight, never
        # for idle keep-alive connections.
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(body)

    def discard_body(self):
        length = self.headers.get("Content-Length")
        if length and length.isdigit():
            remaining = int(length)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)

    def log_message(self, format, *args):
        # One line per request on stderr would flood the host's logs; stay quiet.
        pass


class Server(ThreadingHTTPServer):
    # Request threads are joined by server_close(), so in-flight requests finish before exit.
    daemon_threads = False
    block_on_close = True


def activated_socket():
    """The listening socket handed over by the backend, or None when there is none for us."""
    if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    sock = socket.socket(fileno=LISTEN_FD)
    # Neither the descriptor nor the variables are meant for processes this one might start.
    sock.set_inheritable(False)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return sock


def make_server():
    sock = activated_socket()
    if sock is not None:
        server = Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
        server.socket.close()  # the unbound socket the constructor made
        server.socket = sock
        server.server_name, server.server_port = server.server_address[:2]
        return server, "fd 3"
    port = os.environ.get("PORT", "")
    if not port.isdigit():
        sys.exit(f"hello.py: PORT must be a port number, got {port!r}")
    try:
        return Server(("127.0.0.1", int(port)), Handler), f"127.0.0.1:{port}"
    except OSError as error:
        # The text holds "Address already in use" when the port was taken: the process backend
        # then retries with another port.
        sys.exit(f"hello.py: bind 127.0.0.1:{port}: {error}")


def main():
    server, where = make_server()

    def stop(signum, frame):
        # shutdown() waits for serve_forever() to return, so it cannot run on the thread that
        # serves (this one, interrupted by the signal).
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"hello.py: function {FUNCTION or '-'} instance {INSTANCE or '-'} pid {os.getpid()} "
          f"serving on {where}", file=sys.stderr, flush=True)
    # serve_forever() notices a shutdown request between polls: a short interval makes a SIGTERM
    # take effect quickly, at the cost of a few idle wake-ups a second.
    server.serve_forever(poll_interval=0.1)
    server.server_close()  # joins the request threads still running
    return 0


if __name__ == "__main__":
    sys.exit(main())
