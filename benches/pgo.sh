#!/usr/bin/env bash
# Builds weft-proxy with profile-guided optimisation (PGO) and prints the binary's path.
#
#   benches/pgo.sh            # -> target/pgo/use/release/weft-proxy
#
# 1. builds an instrumented weft-proxy (rustc -Cprofile-generate) in target/pgo/gen;
# 2. trains it: weft-bench runs every weft scenario briefly with that binary (HTTP/1.1 one and
#    two hops, two hops over mTLS, opaque TCP), each proxy writing its profile when it exits;
# 3. merges the profiles with the toolchain's llvm-profdata (rustup component llvm-tools);
# 4. rebuilds weft-proxy with them (rustc -Cprofile-use) in target/pgo/use.
#
# Why: a sidecar at a modest request rate runs with cold caches: the core sleeps between
# requests, and the code that handles one request is spread over many pages. PGO lays hot code
# together and moves cold paths out of line, which is where most of the per-request time
# goes at 2000 req/s (benches/README.md, "Profile-guided build").
#
# The profile comes from the benchmark's own traffic shapes, so a run measured with this
# binary is the best case for traffic shaped like it; run.sh records which build it measured,
# and `benches/run.sh --no-pgo` measures the plain build.
#
# Exit status 2: PGO is not available here (no llvm-profdata and rustup cannot add it);
# nothing was built.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
pgo_dir="$target_dir/pgo"

host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
    rustup component add llvm-tools >&2 || true
fi
if [[ ! -x "$profdata" ]]; then
    echo "pgo.sh: no llvm-profdata in the toolchain and \`rustup component add llvm-tools\` failed" >&2
    exit 2
fi

# Separate target dirs: RUSTFLAGS differ, and sharing target/ would rebuild everything the
# next time a plain `cargo build` runs.
data="$pgo_dir/profiles"
rm -rf "$data"
mkdir -p "$data"
echo "pgo.sh: building the instrumented weft-proxy" >&2
RUSTFLAGS="-Cprofile-generate=$data" CARGO_TARGET_DIR="$pgo_dir/gen" \
    cargo build --release -p weft-proxy >&2
cargo build --release -p weft-bench >&2

echo "pgo.sh: training (every weft scenario, 2 s per loop)" >&2
"$target_dir/release/weft-bench" --weft-proxy "$pgo_dir/gen/release/weft-proxy" \
    --weft-build "PGO training run (instrumented)" \
    --scenarios weft-1hop,weft-2hop,weft-2hop-mtls,weft-1hop-tcp \
    --duration 2 --rounds 1 --warmup 1 --quiet-wait 0 --retries 0 \
    --out "$data/training.json" >/dev/null

shopt -s nullglob
raw=("$data"/*.profraw)
if ((${#raw[@]} == 0)); then
    echo "pgo.sh: the training run wrote no profile (did the proxies exit on SIGTERM?)" >&2
    exit 1
fi
"$profdata" merge -o "$data/weft-proxy.profdata" "${raw[@]}" >&2

echo "pgo.sh: building weft-proxy with the profile" >&2
RUSTFLAGS="-Cprofile-use=$data/weft-proxy.profdata" CARGO_TARGET_DIR="$pgo_dir/use" \
    cargo build --release -p weft-proxy >&2
echo "$pgo_dir/use/release/weft-proxy"
