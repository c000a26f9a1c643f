#!/usr/bin/env bash
# Debian packages the tests and benchmarks use, installed when missing: OpenSSH's
# sshd (the SSH tests and the SFTP benchmark start their own on a loopback port),
# the zstd tool (the Typesense restore drill unpacks .tar.zst archives), tmux (a real
# terminal for `status --watch`) and systemd for systemd-analyze (the rendered user
# unit is checked with `systemd-analyze verify`; no systemd is started).
# Idempotent; installs only as root with apt-get, and says what it did either way.
set -euo pipefail

wanted=()
[ -x /usr/sbin/sshd ] || wanted+=(openssh-server)
command -v zstd >/dev/null 2>&1 || wanted+=(zstd)
command -v tmux >/dev/null 2>&1 || wanted+=(tmux)
command -v systemd-analyze >/dev/null 2>&1 || wanted+=(systemd)

if [ ${#wanted[@]} -eq 0 ]; then
  echo "==> system packages: sshd, zstd, tmux and systemd-analyze already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "==> system packages: missing ${wanted[*]}; not root or no apt-get, not installing" \
    "(the tests that need them skip, or fail under CI=true)"
  exit 0
fi

echo "==> system packages: installing ${wanted[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${wanted[@]}"
# sshd's privilege-separation folder; the package's own service is not wanted here.
mkdir -p /run/sshd
echo "==> system packages: installed ${wanted[*]}"
