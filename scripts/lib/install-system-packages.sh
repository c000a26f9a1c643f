#!/usr/bin/env bash
# Debian packages the tests and benchmarks use, installed when missing: OpenSSH's
# sshd (the SSH tests and the SFTP benchmark start their own on a loopback port)
# and the zstd tool (the Typesense restore drill unpacks .tar.zst archives).
# Idempotent; installs only as root with apt-get, and says what it did either way.
set -euo pipefail

wanted=()
[ -x /usr/sbin/sshd ] || wanted+=(openssh-server)
command -v zstd >/dev/null 2>&1 || wanted+=(zstd)

if [ ${#wanted[@]} -eq 0 ]; then
  echo "==> system packages: sshd and zstd already installed"
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
