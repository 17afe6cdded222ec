#!/usr/bin/env bash
# Host memory of 10 forked QEMU workspaces without and with KSM (needs root; changes
# /sys/kernel/mm/ksm while it runs and turns KSM off again at the end).
#
#   sudo PYRO_AGENT_BIN=... PYRO_CACHE_DIR=... bash scripts/measure-ksm-forks.sh [path/to/pyro]
#
# A workspace writes 100 MB of random data, is snapshotted with its memory and forked 10
# times; the script sums the PSS of every process running in a fork's VM directory (its QEMU
# and relay), then turns KSM on (2000 pages per 20 ms) and measures again every 30 s.
set -euo pipefail
P="$(realpath "${1:-$(dirname "$0")/../target/debug/pyro}")"
state="$(mktemp -d "${TMPDIR:-/tmp}/pyro-ksm.XXXXXX")"
export PYRO_STATE_DIR="$state" PYRO_BIN="$P"
forks="$state/forks.json"
ksm=/sys/kernel/mm/ksm
cleanup() {
  echo 2 > "$ksm/run"; echo 100 > "$ksm/pages_to_scan"; echo 0 > "$ksm/run"
  for w in $("$P" workspace list --json | python3 -c 'import json,sys;[print(w["workspace_id"]) for w in json.load(sys.stdin)["workspaces"]]'); do
    "$P" workspace delete "$w" >/dev/null || true
  done
  rm -rf "$state"
}
trap cleanup EXIT
W=$("$P" workspace create debian:12 --id-only 2>/dev/null)
"$P" workspace exec "$W" -- sh -c 'head -c 100000000 /dev/urandom > data.bin && sync' >/dev/null
"$P" workspace snapshot create "$W" s >/dev/null
"$P" workspace fork "$W" --snapshot s --count 10 --json > "$forks" 2>/dev/null
pss() {
  local total=0 n=0 k
  for f in $(python3 -c 'import json,sys;[print(w["workspace_id"]) for w in json.load(open(sys.argv[1]))["workspaces"]]' "$forks"); do
    for p in /proc/[0-9]*; do
      if [ "$(readlink "$p/cwd" 2>/dev/null)" = "$state/workspaces/$f/vm" ]; then
        k=$(awk '/^Pss:/ {print $2}' "$p/smaps_rollup" 2>/dev/null || echo 0)
        total=$((total + k)); n=$((n + 1))
      fi
    done
  done
  echo "$1: $n processes, PSS $((total / 1024)) MiB in all, $((total / 1024 / 10)) MiB per fork"
}
pss "KSM off"
echo 2000 > "$ksm/pages_to_scan"; echo 1 > "$ksm/run"
for t in 30 60 90; do
  sleep 30
  pss "KSM on, ${t} s"
done
