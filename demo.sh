#!/usr/bin/env bash
# Weft's local mesh in one command. No root, no Kubernetes: everything on 127.0.0.1.
#
#   frontend ─HTTP_PROXY─> [sidecar] ══mTLS══> [sidecar] orders-v1 (90%) / [sidecar] orders-v2 (10%)
#                              ╚══════ mTLS ══> [sidecar] payments (fails 20% with 503; retried)
#   scanner  ─HTTP_PROXY─> [sidecar] ══mTLS══> [sidecar] payments  ✗ 403, shop/payments-callers
#             every sidecar: its own identity and view from weft-control-plane,
#             which serves the manifests in examples/manifests
#
# Builds the binaries, then runs weft-demo (demo/), which starts the control plane and the
# five sidecars, sends traffic and shows a live view of the sidecars' metrics. Ctrl-C stops
# everything it started. Options go to weft-demo: ./demo.sh --help, ./demo.sh --duration 30s
set -euo pipefail
cd "$(dirname "$0")"

echo "building (the first build takes a few minutes)..." >&2
cargo build -q -p weft-proxy -p weft-control-plane -p weftctl -p weft-demo
exec "${CARGO_TARGET_DIR:-target}/debug/weft-demo" "$@"
