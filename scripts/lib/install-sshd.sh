#!/usr/bin/env bash
# Make sure OpenSSH's sshd is installed for the SSH transport tests and the SFTP
# benchmark (they start their own sshd on a loopback port). Idempotent: does nothing
# when /usr/sbin/sshd exists; installs only as root, and says what it did either way.
set -euo pipefail

SSHD=/usr/sbin/sshd

if [ -x "$SSHD" ]; then
  echo "==> sshd: $SSHD (already installed)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "==> sshd: $SSHD missing and not root; not installing (SSH tests skip, or fail under CI=true)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "==> sshd: $SSHD missing and no apt-get; install openssh-server by hand"
  exit 0
fi

echo "==> sshd: installing openssh-server"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends openssh-server
# The package's own service is not wanted here; tests run their own sshd.
mkdir -p /run/sshd
echo "==> sshd: installed $("$SSHD" -V 2>&1 | head -n 1)"
