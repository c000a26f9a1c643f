"""A real worker process for the watchdog tests: an HTTP server with an SDK endpoint.

Run: python worker_app.py PORT FOLDER

GET /api/inngest answers as the folder's `mode` file says at the time of the
request: `ok` (or no file) 200, `error` 500, `hang` accepts and never answers.
PUT /api/inngest (re-registration) is counted in `registered`. A `crash-after`
file holding seconds makes the process exit that long after it started (a
flapping worker). Each request is logged to `worker.log`, and the pid is in `pid`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FOLDER = Path(sys.argv[2])


def _mode() -> str:
    try:
        return (FOLDER / "mode").read_text().strip() or "ok"
    except FileNotFoundError:
        return "ok"


def _log(line: str) -> None:
    with open(FOLDER / "worker.log", "a") as log:
        log.write(f"{time.strftime('%H:%M:%S')} [{os.getpid()}] {line}\n")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        _log(format % args)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        mode = _mode()
        if mode == "hang":
            time.sleep(3600)
        elif mode == "error":
            self._answer(500, b'{"error":"internal"}')
        else:
            self._answer(200, b'{"mode":"ok","functionsFound":1}')

    def do_PUT(self) -> None:
        with open(FOLDER / "registered", "a") as registered:
            registered.write(f"{os.getpid()}\n")
        self._answer(200, b'{"message":"Successfully registered"}')


def main() -> None:
    port = int(sys.argv[1])
    crash = FOLDER / "crash-after"
    if crash.exists():
        delay = float(crash.read_text())
        threading.Timer(delay, lambda: os._exit(1)).start()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    (FOLDER / "pid").write_text(str(os.getpid()))
    _log("worker started")
    server.serve_forever()


if __name__ == "__main__":
    main()
