#!/usr/bin/env bash
# Installs the Debian 12 packages pyro needs to build environments and run sandboxes.
# Idempotent; uses sudo when not root.
set -euo pipefail
pkgs=(qemu-system-x86 iproute2 nftables gcc libc6-dev git curl libsqlite3-dev pkg-config mmdebstrap e2fsprogs xz-utils cpio python3 python3-pip python3-venv ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[deps] all present: ${pkgs[*]}"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "[deps] installing: ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
