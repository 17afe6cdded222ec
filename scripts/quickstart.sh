#!/usr/bin/env bash
# From a fresh Debian 12 machine to `git version ...` printed by a sandboxed git:
# installs packages, builds pyro, then runs the main job. The first run builds the
# debian:12 environment from Debian packages (about half a minute), with progress.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/install-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/build.sh
exec target/release/pyro run debian:12 -- git --version
