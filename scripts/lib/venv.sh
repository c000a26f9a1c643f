# Shared by scripts/run and scripts/test: make ./.venv with Python >= 3.11 and
# install the project with the given extras, skipping the install when nothing
# that affects it changed since the last one.

find_python() {
  for candidate in "${SELFHEAL_PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "selfheal: Python >= 3.11 is required (set SELFHEAL_PYTHON to its path)" >&2
  return 1
}

ensure_venv() {
  local extras="$1"
  local py
  py="$(find_python)"
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $py"
    "$py" -m venv .venv
  fi
  local stamp=".venv/.selfheal-install-stamp"
  local want
  want="$(cat pyproject.toml scripts/lib/constraints.txt | sha256sum | cut -d' ' -f1) $extras"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing selfheal$extras into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c scripts/lib/constraints.txt -e ".$extras"
    echo "$want" >"$stamp"
  fi
}
