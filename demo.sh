#!/usr/bin/env bash
# Weft's local demo: a control plane issues each workload a SPIFFE identity, and a request
# crosses two sidecars over mutual TLS. No root, no Kubernetes: everything runs on 127.0.0.1
# in local mode.
#
#   client --> [web's proxy: listener :19001] ==mTLS==> [orders' proxy: inbound :19106] --> app :18080
#                      ^                                          ^
#                      └──── certificates from weft-control-plane (:19012) ─┘
#
# Everything it starts is stopped when it exits (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")"

echo "building..."
cargo build -q -p weft-proxy -p weft-control-plane -p weft-tests --bins
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

wait_ready() { # name, admin address
    for _ in $(seq 100); do
        "$bin/weft-test-app" get --timeout-ms 200 "http://$2/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$1 did not become ready; its log:" >&2
    cat "$work/$1.log" >&2
    exit 1
}

# The control plane: a CA generated in the state directory, and one token per workload.
cat >"$work/tokens.yaml" <<YAML
tokens:
  - {token: "demo-web-token", namespace: shop, serviceAccount: web}
  - {token: "demo-orders-token", namespace: shop, serviceAccount: orders}
YAML
"$bin/weft-control-plane" --state-dir "$work/state" --token-file "$work/tokens.yaml" \
    --grpc-addr 127.0.0.1:19012 --cert-lifetime 1h >"$work/control-plane.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/state/bundle.crt" ] && break; sleep 0.1; done
echo demo-web-token >"$work/web.token"
echo demo-orders-token >"$work/orders.token"

# What both proxies share: local mode, and certificates from the control plane.
mesh_env=(WEFT_MODE=local WEFT_TRUST_DOMAIN=cluster.local WEFT_NAMESPACE=shop
          WEFT_CONTROL_PLANE_ADDR=127.0.0.1:19012 WEFT_TRUST_ANCHORS="$work/state/bundle.crt")

"$bin/weft-test-app" serve --bind 127.0.0.1 --port 18080 --name orders >"$work/app.log" 2>&1 &
pids+=($!)

# orders' sidecar: inbound mTLS only (STRICT), delivered to the app.
printf 'inboundMtls: {default: strict}\n' >"$work/orders.yaml"
env "${mesh_env[@]}" WEFT_SERVICE_ACCOUNT=orders WEFT_IDENTITY_TOKEN_FILE="$work/orders.token" \
    WEFT_CONFIG="$work/orders.yaml" WEFT_INBOUND_ADDR=127.0.0.1:19106 WEFT_INBOUND_APP=127.0.0.1:18080 \
    WEFT_OUTBOUND_ADDR=127.0.0.1:19101 WEFT_ADMIN_ADDR=127.0.0.1:19120 \
    "$bin/weft-proxy" >"$work/orders-proxy.log" 2>&1 &
pids+=($!)

# web's sidecar: a listener for "orders", which must be the orders identity.
cat >"$work/web.yaml" <<YAML
listeners:
  - name: orders
    bind: 127.0.0.1:19001
    target: 127.0.0.1:19106
    identity: spiffe://cluster.local/ns/shop/sa/orders
YAML
env "${mesh_env[@]}" WEFT_SERVICE_ACCOUNT=web WEFT_IDENTITY_TOKEN_FILE="$work/web.token" \
    WEFT_CONFIG="$work/web.yaml" WEFT_INBOUND_ADDR=127.0.0.1:19006 \
    WEFT_OUTBOUND_ADDR=127.0.0.1:19002 WEFT_ADMIN_ADDR=127.0.0.1:19020 \
    "$bin/weft-proxy" >"$work/web-proxy.log" 2>&1 &
pids+=($!)

wait_ready orders-proxy 127.0.0.1:19120
wait_ready web-proxy 127.0.0.1:19020

echo
echo "== GET http://127.0.0.1:19001/hello  (client -> web's proxy =mTLS=> orders' proxy -> app)"
"$bin/weft-test-app" get http://127.0.0.1:19001/hello
echo
echo "== plaintext straight to orders' STRICT inbound port is refused:"
"$bin/weft-test-app" get --timeout-ms 1000 http://127.0.0.1:19106/hello 2>&1 | sed 's/^/   /' || true
echo
for proxy in "web 127.0.0.1:19020 outbound" "orders 127.0.0.1:19120 inbound"; do
    set -- $proxy
    echo "== $1's proxy counted ($3):"
    "$bin/weft-test-app" get "http://$2/metrics" \
        | grep -E "^weft_requests_total\{direction=\"$3\"|^weft_identity_cert_expiration" | sed 's/^/   /'
done
