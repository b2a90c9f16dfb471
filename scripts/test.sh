#!/usr/bin/env bash
# shellcheck disable=SC2317  # suite functions are invoked indirectly, through run_suite
# The whole meridian test suite, on a fresh machine or a used one:
#
#   ./scripts/test.sh
#
# Installs what is missing (quietly, only when missing), then runs, stopping at the first
# failing suite: rustfmt check, clippy, release build, reference runs of the TURN interop
# and browser tests against coturn, cargo test (unit + integration, including the webrtc-rs
# TURN interop tests against meridian), check-config on the example config, and the
# headless-Chromium browser test against meridian, and a fuzz smoke run of every cargo-fuzz
# target (cargo-fuzz is installed from crates.io when missing).
# Ends with one line "suites: N passed, M failed"; exits non-zero on any failure.
#
# Knobs (environment):
#   MERIDIAN_TEST_RELEASE=0    skip the release build; the browser test then uses the debug binary
#   MERIDIAN_TEST_REFERENCE=0  skip the coturn reference runs (and the coturn install)
#   MERIDIAN_TEST_BROWSER=0    skip the browser test (and the chromium install)
#   MERIDIAN_TEST_NO_INSTALL=1 never install anything; fail if something is missing
#   FUZZ_SMOKE=0|1|auto        run_fuzz_smoke below (auto: when fuzz/Cargo.toml exists);
#                              FUZZ_SECONDS per target (default 15)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export DEBIAN_FRONTEND=noninteractive

RELEASE="${MERIDIAN_TEST_RELEASE:-1}"
REFERENCE="${MERIDIAN_TEST_REFERENCE:-1}"
BROWSER="${MERIDIAN_TEST_BROWSER:-1}"
NO_INSTALL="${MERIDIAN_TEST_NO_INSTALL:-0}"
FUZZ_SMOKE="${FUZZ_SMOKE:-auto}"

LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/meridian-test.XXXXXX")
trap 'rm -rf "$LOG_DIR"' EXIT

PASSED=0
FAILED=0
SKIPPED=0
SUITE_LINES=()
START_ALL=$SECONDS

say() { printf '%s\n' "$*"; }
header() { printf '\n==> %s\n' "$*"; }

summary_and_exit() {
  header "summary ($((SECONDS - START_ALL)) s)"
  for l in "${SUITE_LINES[@]}"; do say "  $l"; done
  if ((SKIPPED > 0)); then
    say "suites: ${PASSED} passed, ${FAILED} failed, ${SKIPPED} skipped"
  else
    say "suites: ${PASSED} passed, ${FAILED} failed"
  fi
  if ((FAILED > 0)); then exit 1; fi
  exit 0
}

# run_suite NAME COMMAND...: runs one suite with a header and its timing; stops the whole
# run on failure (fail fast). Exit status 99 from the command means "skipped".
run_suite() {
  local name=$1
  shift
  header "$name"
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  local dt=$((SECONDS - t0))
  if ((rc == 99)); then
    SKIPPED=$((SKIPPED + 1))
    SUITE_LINES+=("SKIP  ${name} (${dt} s)")
    say "--- SKIP: ${name}"
  elif ((rc == 0)); then
    PASSED=$((PASSED + 1))
    SUITE_LINES+=("PASS  ${name} (${dt} s)")
    say "--- PASS: ${name} (${dt} s)"
  else
    FAILED=$((FAILED + 1))
    SUITE_LINES+=("FAIL  ${name} (${dt} s, exit ${rc})")
    say "--- FAIL: ${name} (exit ${rc}, ${dt} s)"
    summary_and_exit
  fi
}

die() {
  say "error: $*" >&2
  FAILED=$((FAILED + 1))
  SUITE_LINES+=("FAIL  setup: $*")
  summary_and_exit
}

# ---------------------------------------------------------------- installs (idempotent)

# as_root, apt_install (uses NO_INSTALL, LOG_DIR, say)
# shellcheck source=scripts/lib/apt.sh
source "$ROOT/scripts/lib/apt.sh"

npm_install_browser_deps() {
  local dir="$ROOT/tests/browser"
  local want have=""
  want=$(node -e 'console.log(require(process.argv[1]).dependencies["playwright-core"])' "$dir/package.json")
  if [[ -f $dir/node_modules/playwright-core/package.json ]]; then
    have=$(node -e 'console.log(require(process.argv[1]).version)' "$dir/node_modules/playwright-core/package.json")
  fi
  [[ $have == "$want" ]] && return 0
  if [[ $NO_INSTALL == 1 ]]; then
    say "tests/browser: playwright-core $want not installed (MERIDIAN_TEST_NO_INSTALL=1)" >&2
    return 1
  fi
  say "installing playwright-core $want in tests/browser (npm ci)"
  # playwright-core ships no browser and downloads none; Debian's chromium is used.
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error \
    </dev/null >"$LOG_DIR/npm.log" 2>&1) || { cat "$LOG_DIR/npm.log" >&2; return 1; }
}

install_prerequisites() {
  command -v cargo >/dev/null || { say "cargo not found" >&2; return 1; }
  cargo fmt --version >/dev/null 2>&1 || { say "rustfmt missing: rustup component add rustfmt" >&2; return 1; }
  cargo clippy --version >/dev/null 2>&1 || { say "clippy missing: rustup component add clippy" >&2; return 1; }
  local pkgs=()
  # The GStreamer WHIP publisher of tests/gst_whip.rs (cargo test): webrtcbin, libnice, the
  # encoders, and the Python bindings that tests/gst/whip_publish.py drives them with.
  pkgs+=(gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-nice gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0
    gir1.2-nice-0.1 python3-gi python3-cryptography)
  # The SFU's DTLS is AWS-LC's libssl (aws-lc-sys "ssl"): built with CMake, bindings generated
  # by bindgen, which needs libclang.
  pkgs+=(cmake libclang-dev)
  # The multi-node tests (geo/tests/redis.rs, tests/cluster.rs) run a real redis-server.
  pkgs+=(redis-server)
  [[ $REFERENCE == 1 ]] && pkgs+=(coturn)
  [[ $BROWSER == 1 ]] && pkgs+=(chromium openssl nodejs)
  if ((${#pkgs[@]} > 0)); then apt_install "${pkgs[@]}" || return 1; fi
  if [[ $BROWSER == 1 ]]; then npm_install_browser_deps || return 1; fi
  say "cargo: $(cargo --version)"
  [[ $BROWSER == 1 ]] && say "node: $(node --version); chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
  [[ $REFERENCE == 1 ]] && say "coturn: $(turnserver --version 2>/dev/null | head -n 1)"
  return 0
}

# ---------------------------------------------------------------- suites

meridian_bin() {
  if [[ $RELEASE == 1 ]]; then echo "$ROOT/target/release/meridian"; else echo "$ROOT/target/debug/meridian"; fi
}

suite_check_config() {
  local bin
  bin=$(meridian_bin)
  [[ -x $bin ]] || cargo build -q --bin meridian || return 1
  local cfg="config/meridian.example.toml"
  [[ -f $cfg ]] || { say "$cfg does not exist" >&2; return 1; }
  say "$bin check-config $cfg"
  "$bin" check-config "$cfg"
}

suite_browser() {
  MERIDIAN_BIN=$(meridian_bin) timeout 300 node tests/browser/turn.mjs
}

suite_reference_interop() {
  # The same interop tests against coturn: shows whether a failure is in the test client
  # or in meridian. Reuses the test binary built by the cargo test suite.
  MERIDIAN_TEST_BACKEND=coturn cargo test --locked --test turn_interop
}

suite_reference_browser() {
  MERIDIAN_TEST_BACKEND=coturn timeout 300 node tests/browser/turn.mjs
}

# Fuzz smoke test: every cargo-fuzz target runs for FUZZ_SECONDS (default 15) on a scratch
# corpus, so the tree stays clean. cargo fuzz needs nightly-only compiler flags (sanitizers,
# coverage); the machine's stable toolchain accepts them with RUSTC_BOOTSTRAP=1, so no nightly
# is needed. cargo-fuzz itself is installed from crates.io when missing. A crash, a build
# failure or a missing tool fails the suite: this check never reports success without running.
ensure_cargo_fuzz() {
  if cargo fuzz --version >/dev/null 2>&1; then return 0; fi
  if [[ $NO_INSTALL == 1 ]]; then
    say "cargo-fuzz is missing and MERIDIAN_TEST_NO_INSTALL=1"
    return 1
  fi
  say "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked --quiet
}

run_fuzz_smoke() {
  ensure_cargo_fuzz || return 1
  local secs="${FUZZ_SECONDS:-15}" work t targets
  work=$(mktemp -d "$LOG_DIR/fuzz.XXXXXX")
  targets=$(cd fuzz && cargo fuzz list) || return 1
  [[ -n $targets ]] || { say "no fuzz targets found"; return 1; }
  for t in $targets; do
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    say "fuzz target $t: ${secs} s"
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "$work/$t/corpus" -- \
      -max_total_time="$secs" -artifact_prefix="$work/$t/artifacts/" -print_final_stats=1 \
      </dev/null >"$work/$t.log" 2>&1) || {
      tail -n 60 "$work/$t.log"
      say "fuzz target $t failed; crash inputs (base64):"
      for a in "$work/$t/artifacts"/*; do [[ -f $a ]] && { say "$a"; base64 -w0 "$a"; say ""; }; done
      return 1
    }
    # The run must have executed inputs: a zero count would mean nothing was fuzzed.
    local runs
    runs=$(grep -E '^stat::number_of_executed_units' "$work/$t.log" | grep -oE '[0-9]+$' | tail -n 1)
    if [[ -z $runs || $runs -eq 0 ]]; then
      tail -n 30 "$work/$t.log"
      say "fuzz target $t executed no inputs"
      return 1
    fi
    say "fuzz target $t: ${runs} inputs, no crash"
  done
}

# ---------------------------------------------------------------- main

say "meridian test suite in $ROOT (CI=${CI:-false}, $(nproc 2>/dev/null || echo '?') cores)"

header "prerequisites"
install_prerequisites || die "installing prerequisites failed"

run_suite "cargo fmt --check" cargo fmt --all -- --check
run_suite "cargo clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings
if [[ $RELEASE == 1 ]]; then
  run_suite "cargo build --release" cargo build --release --locked --bin meridian
fi
# The coturn reference runs come first: when they pass and the meridian runs fail, the
# fault is in meridian, not in the test clients.
if [[ $REFERENCE == 1 ]]; then
  run_suite "reference: TURN interop tests vs coturn" suite_reference_interop
  if [[ $BROWSER == 1 ]]; then
    run_suite "reference: browser test vs coturn" suite_reference_browser
  fi
fi
# With coturn installed (the reference runs), the bench's end-to-end tests against coturn run
# too instead of being left out.
if [[ $REFERENCE == 1 ]]; then export MERIDIAN_TEST_COTURN=1; fi
run_suite "cargo test" cargo test --workspace --locked
run_suite "check-config example" suite_check_config
if [[ $BROWSER == 1 ]]; then
  run_suite "browser test vs meridian (chromium)" suite_browser
fi
case "$FUZZ_SMOKE" in
  1) run_suite "fuzz smoke" run_fuzz_smoke ;;
  auto) if [[ -f fuzz/Cargo.toml ]]; then run_suite "fuzz smoke" run_fuzz_smoke; fi ;;
  *) ;;
esac

# ---------------------------------------------------------------- SFU browser test
# The node's own pages and SDK (signaling/web, served at / and /device) in headless Chromium:
# a device page publishes the fake camera, a direct player and a relay-only player (through
# the node's TURN) watch it and send controls; see tests/browser/sfu.mjs.
suite_browser_sfu() {
  MERIDIAN_BIN=$(meridian_bin) timeout 300 node tests/browser/sfu.mjs
}
if [[ $BROWSER == 1 ]]; then
  run_suite "SFU browser test vs meridian (chromium)" suite_browser_sfu
fi
# WHIP publishing and WHEP playback from headless Chromium (fake camera), and simulcast
# layer choice (WHIP and SDK publishers, SDK player); see tests/browser/whip.mjs.
suite_browser_whip() {
  MERIDIAN_BIN=$(meridian_bin) timeout 300 node tests/browser/whip.mjs
}
if [[ $BROWSER == 1 ]]; then
  run_suite "WHIP/WHEP browser test vs meridian (chromium)" suite_browser_whip
fi

# Measured routing across three regions (nodes behind delay shims, one redis-server): the
# device simulator and the SDK measure, are redirected to the nearest region and play from
# it; see tests/browser/regions.mjs.
suite_browser_regions() {
  MERIDIAN_BIN=$(meridian_bin) timeout 300 node tests/browser/regions.mjs
}
if [[ $BROWSER == 1 ]]; then
  run_suite "regions browser test vs meridian (chromium)" suite_browser_regions
fi

summary_and_exit
