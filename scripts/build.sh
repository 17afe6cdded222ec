#!/usr/bin/env bash
# Builds the static guest agent and the pyro CLI (release), and puts both in target/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PYRO_PROFILE:-release}"
flag="--release"; [ "$profile" = "debug" ] && flag=""
# The agent runs as PID 1 in the guest: it must be statically linked. An explicit --target
# keeps the static RUSTFLAGS off the host build (proc-macros cannot be static).
RUSTFLAGS='-C target-feature=+crt-static' cargo build $flag -p pyro-agent --target x86_64-unknown-linux-gnu
cargo build $flag -p pyro-cli
cp "target/x86_64-unknown-linux-gnu/$profile/pyro-agent" "target/$profile/pyro-agent"
echo "[build] target/$profile/pyro and target/$profile/pyro-agent are ready"
