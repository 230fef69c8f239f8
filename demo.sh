#!/usr/bin/env bash
# Weft's local demo: an app behind one weft-proxy, a client going through another, and a
# request crossing both. No root, no Kubernetes: the proxies run in local mode.
#
#   client --> [proxy A: static listener :19001] --> [proxy B: inbound :19106] --> app :18080
#
# Everything it starts is stopped when it exits (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")"

echo "building..."
cargo build -q -p weft-proxy -p weft-tests --bins
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

wait_ready() { # admin address
    for _ in $(seq 100); do
        "$bin/weft-test-app" get --timeout-ms 200 "http://$1/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "proxy with admin $1 did not become ready; its log:" >&2
    cat "$work"/*.log >&2
    exit 1
}

"$bin/weft-test-app" serve --port 18080 --name orders >"$work/app.log" 2>&1 &
pids+=($!)

# Proxy B: the app's sidecar. Inbound traffic goes to the app.
WEFT_MODE=local WEFT_INBOUND_ADDR=127.0.0.1:19106 WEFT_INBOUND_APP=127.0.0.1:18080 \
WEFT_OUTBOUND_ADDR=127.0.0.1:19101 WEFT_ADMIN_ADDR=127.0.0.1:19120 \
    "$bin/weft-proxy" >"$work/proxy-b.log" 2>&1 &
pids+=($!)

# Proxy A: the client's sidecar. A static listener sends "orders" traffic to proxy B.
cat >"$work/proxy-a.yaml" <<YAML
listeners:
  - name: orders
    bind: 127.0.0.1:19001
    target: 127.0.0.1:19106
YAML
WEFT_MODE=local WEFT_CONFIG="$work/proxy-a.yaml" WEFT_INBOUND_ADDR=127.0.0.1:19006 \
WEFT_OUTBOUND_ADDR=127.0.0.1:19002 WEFT_ADMIN_ADDR=127.0.0.1:19020 \
    "$bin/weft-proxy" >"$work/proxy-a.log" 2>&1 &
pids+=($!)

wait_ready 127.0.0.1:19120
wait_ready 127.0.0.1:19020

echo
echo "== GET http://127.0.0.1:19001/hello  (client -> proxy A -> proxy B -> app)"
"$bin/weft-test-app" get http://127.0.0.1:19001/hello
echo
for proxy in "A 127.0.0.1:19020" "B 127.0.0.1:19120"; do
    set -- $proxy
    echo "== proxy $1 counted:"
    "$bin/weft-test-app" get "http://$2/metrics" | grep -E '^weft_(requests_total|responses_total)' | sed 's/^/   /'
done
