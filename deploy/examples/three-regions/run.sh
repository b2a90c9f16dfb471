#!/usr/bin/env bash
# Three regions on one machine: a local redis-server, one meridian node per region on
# 127.0.N.1, and in front of each node a delay shim on 127.0.N.2 that emulates the client's
# path to that region (this kernel has no netem). Ctrl-C stops everything it started.
#
#   deploy/examples/three-regions/run.sh            # uses target/release/meridian or $PATH
#   MERIDIAN=/usr/local/bin/meridian deploy/examples/three-regions/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
bin=${MERIDIAN:-}
if [[ -z $bin ]]; then
  if [[ -x $root/target/release/meridian ]]; then bin=$root/target/release/meridian
  else bin=$(command -v meridian || true); fi
fi
[[ -x ${bin:-} ]] || { echo "run.sh: no meridian binary (build with cargo build --release, or set MERIDIAN=)" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "run.sh: redis-server is missing (apt-get install redis-server)" >&2; exit 2; }

work=$(mktemp -d -t meridian-three-regions.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# wait_for CMD...: retries CMD every 0.1 s for at most 20 s.
wait_for() {
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "run.sh: timed out waiting for: $*" >&2; exit 1
}

redis-server --bind 127.0.0.1 --port 6390 --save '' --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for redis-cli -p 6390 ping

# One-way delay (ms) from each client group to each region: clients whose source address is
# 127.0.11.1 are in Europe, 127.0.12.1 in America, 127.0.13.1 in Asia-Pacific; any other source
# (a browser on 127.0.0.1) gets the first column's default, as if it were in Europe.
#            default  eu-clients  us-clients  ap-clients
declare -A delay=(
  [eu]="10        10          45          90"
  [us]="45        45          10          80"
  [ap]="90        90          80          10"
)
n=0
for region in eu us ap; do
  n=$((n + 1))
  read -r def eu us ap <<<"${delay[$region]}"
  node=127.0.$n.1 public=127.0.$n.2
  "$bin" bench shim \
    --udp "$public:3478=$node:3478" --udp "$public:7882=$node:7882" --tcp "$public:7880=$node:7880" \
    --delay-ms "$def" --from "127.0.11.1=$eu" --from "127.0.12.1=$us" --from "127.0.13.1=$ap" \
    --ready-file "$work/shim-$region.json" >"$work/shim-$region.log" 2>&1 &
  pids+=($!)
  "$bin" serve --config "$here/$region.toml" >"$work/node-$region.log" 2>&1 &
  pids+=($!)
done
n=0
for region in eu us ap; do
  n=$((n + 1))
  wait_for test -s "$work/shim-$region.json"
  wait_for curl -fsS "http://127.0.$n.1:9100/readyz"
done
# Every node sees all three regions in the directory.
wait_for bash -c 'r=$(curl -fsS http://127.0.1.2:7880/v1/regions) && [[ $r == *node-eu* && $r == *node-us* && $r == *node-ap* ]]'

cat <<INFO
three regions up (logs in $work):
  eu  signaling http://127.0.1.2:7880  STUN/TURN 127.0.1.2:3478  (node 127.0.1.1, admin :9100)
  us  signaling http://127.0.2.2:7880  STUN/TURN 127.0.2.2:3478  (node 127.0.2.1, admin :9100)
  ap  signaling http://127.0.3.2:7880  STUN/TURN 127.0.3.2:3478  (node 127.0.3.1, admin :9100)
try:
  curl -s http://127.0.1.2:7880/v1/regions
  $bin device --url http://127.0.3.2:7880 --room arcade-1 --name rig-1 --bitrate-kbps 1000
      # asks ap, measures eu 20 ms / us 90 ms / ap 180 ms round trip, and publishes on eu
  curl -s http://127.0.3.2:7880/v1/rooms     # ap lists rig-1 with node-eu, region eu
  open http://127.0.1.2:7880/ in a browser: the SDK measures, and joins eu (10 ms one way)
Ctrl-C stops everything.
INFO
wait -n "${pids[@]}" || true
echo "run.sh: a process exited; stopping the rest (logs in $work)" >&2
