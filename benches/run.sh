#!/usr/bin/env bash
# Weft's proxy benchmark in one command: builds the harness and weft-proxy in release mode,
# then runs every scenario (direct, weft 1/2 hops and 2 hops over mTLS, the same with Envoy
# when `envoy` is on PATH).
#
#   benches/run.sh            # full run, 10 s per measurement (~30 minutes with the PGO build)
#   benches/run.sh --quick    # 3 s per measurement, for iterating
#   benches/run.sh --no-pgo   # measure the plain release build instead of the PGO one
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

# weft-proxy is measured as built by benches/pgo.sh (profile-guided) unless `--no-pgo` is
# given or PGO is unavailable; the results record which build ran.
pgo=1
args=()
for a in "$@"; do
    case "$a" in
        --no-pgo) pgo=0 ;;
        -h | --help) pgo=0; args+=("$a") ;;
        *) args+=("$a") ;;
    esac
done

cargo build --release -p weft-bench

extra=()
proxy="$target_dir/release/weft-proxy"
build="plain release build (cargo build --release)"
if ((pgo)); then
    set +e
    pgo_proxy="$("$root/benches/pgo.sh")"
    status=$?
    set -e
    if ((status == 0)); then
        proxy="$pgo_proxy"
        build="profile-guided release build (benches/pgo.sh, trained on the weft scenarios)"
    elif ((status == 2)); then
        echo "run.sh: PGO unavailable; measuring the plain release build" >&2
        build="plain release build (PGO unavailable on this machine)"
        pgo=0
    else
        echo "run.sh: the PGO build failed; weft's scenarios will be skipped" >&2
        extra+=(--skip-weft "the profile-guided weft-proxy did not build (benches/pgo.sh failed)")
    fi
fi
if ((!pgo)) && ! cargo build --release -p weft-proxy; then
    echo "run.sh: weft-proxy does not build; its scenarios will be skipped" >&2
    extra+=(--skip-weft "weft-proxy did not build (cargo build --release -p weft-proxy failed)")
fi

exec "$target_dir/release/weft-bench" --weft-proxy "$proxy" --weft-build "$build" \
    "${extra[@]}" "${args[@]}"
