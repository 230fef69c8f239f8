#!/usr/bin/env bash
# Weft's proxy benchmark in one command: builds the harness and weft-proxy in release mode,
# then runs every scenario (direct, weft 1/2 hops and 2 hops over mTLS, the same with Envoy
# when `envoy` is on PATH).
#
#   benches/run.sh            # full run, ~10 s per measurement (a few minutes in all)
#   benches/run.sh --quick    # 3 s per measurement, for iterating
#   benches/run.sh --help     # every option (scenarios, rate, cores, output path…)
#   benches/run.sh --propagation [options]   # instead: the control-plane propagation
#                             # benchmark (issue 4), results/propagation.{md,json}; see README
#
# Results: a table on stdout, benches/results/latest.json and benches/results/latest.md.
# If weft-proxy does not build, its scenarios are skipped (never run on a stale binary).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

# Opt-in: the control-plane propagation benchmark. It starts the weft-control-plane binary,
# so that is built first (never run on a stale one); options go to weft-propagation
# (`--proxies 1000,10000`, `--rounds`, `--changes`, `--sched nice`, `--help`).
if [[ "${1:-}" == "--propagation" ]]; then
    shift
    cargo build --release -p weft-control-plane
    cargo build --release -p weft-bench --features propagation --bin weft-propagation
    exec "$target_dir/release/weft-propagation" \
        --control-plane "$target_dir/release/weft-control-plane" "$@"
fi

cargo build --release -p weft-bench

extra=()
if ! cargo build --release -p weft-proxy; then
    echo "run.sh: weft-proxy does not build; its scenarios will be skipped" >&2
    extra+=(--skip-weft "weft-proxy did not build (cargo build --release -p weft-proxy failed)")
fi

exec "$target_dir/release/weft-bench" --weft-proxy "$target_dir/release/weft-proxy" "${extra[@]}" "$@"
