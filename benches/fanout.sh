#!/usr/bin/env bash
# --read-fanout all vs quorum on fresh 3-node loopback clusters (BENCHMARKS.md).
#
#   benches/fanout.sh ab [ROUNDS] [CLIENTS]   # reads/s and node CPU per read, ABBA order
#   benches/fanout.sh stall [FANOUT]           # 16-client reads at A while B is SIGSTOPped 3 s
#
# BIN (default target/release/ringlab) is used as built; ports 7101-7103 (peers) and
# 8101-8103 (HTTP) on 127.0.0.1 must be free. Each round starts a fresh cluster,
# writes 10,000 keys, then measures 1 s warm-up + 5 s of 100 % reads.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$(pwd)/target/release/ringlab}
NODES=http://127.0.0.1:8101,http://127.0.0.1:8102,http://127.0.0.1:8103
WORK=$(mktemp -d /tmp/ringlab-fanout.XXXXXX)
stop() { pkill -f "$BIN serve --id" 2>/dev/null || true; sleep 0.5; }
trap 'stop; rm -rf "$WORK"' EXIT

start() { # start FANOUT: a fresh cluster A, B, C
  stop
  local d; d=$(mktemp -d "$WORK/cl.XXXX")
  "$BIN" keygen >"$d/key"
  for i in 1 2 3; do
    local id; id=$(echo ABC | cut -c$i)
    RUST_LOG=warn "$BIN" serve --id $id --peer-addr 127.0.0.1:710$i --http 127.0.0.1:810$i \
      --data-dir "$d/$id" --seeds 127.0.0.1:7101 --zone z$i --cluster-key-file "$d/key" \
      --read-fanout "$1" >"$d/$id.log" 2>&1 &
    if [ $i = 1 ]; then until curl -sf http://127.0.0.1:8101/health >/dev/null; do sleep 0.2; done; fi
  done
  for _ in $(seq 100); do
    local ok=1
    for p in 8101 8102 8103; do
      n=$(curl -sf http://127.0.0.1:$p/cluster | python3 -c 'import json,sys; v=json.load(sys.stdin); print(sum(m["status"]=="up" for m in v["nodes"]), len(set(v["partitions"])))' 2>/dev/null) || { ok=0; break; }
      [ "$n" = "3 3" ] || { ok=0; break; }
    done
    [ $ok = 1 ] && return 0
    sleep 0.3
  done
  echo "the cluster did not form (logs in $d)" >&2; exit 1
}
fill() { "$BIN" bench --target ringlab --node "$1" --concurrency 16 --reads 0 --keys 10000 --duration 3s --warmup 0s --json >/dev/null; }
cpu() { local s=0; for p in $(pgrep -f "$BIN serve --id"); do read -r -a f </proc/"$p"/stat; s=$((s + f[13] + f[14])); done; echo $s; }

case ${1:-ab} in
ab)
  ROUNDS=${2:-6}; C=${3:-16}
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="all quorum"; else order="quorum all"; fi
    for f in $order; do
      start "$f"; fill "$NODES"; sync; sleep 1
      c0=$(cpu)
      out=$("$BIN" bench --target ringlab --node "$NODES" --concurrency "$C" --reads 1 --keys 10000 --duration 5s --warmup 1s --json)
      c1=$(cpu)
      python3 - "$out" "$c0" "$c1" "$r" "$f" <<'PY'
import json, os, sys
v = json.loads(sys.argv[1]); ticks = int(sys.argv[3]) - int(sys.argv[2])
ops = v["ops_per_s"] * 6  # CPU is counted over the warm-up too
us = ticks / os.sysconf("SC_CLK_TCK") / ops * 1e6
print(f"round {sys.argv[4]} {sys.argv[5]:>6}: {v['ops_per_s']:.0f} reads/s, "
      f"p50 {v['p50_ms']:.2f} p99 {v['p99_ms']:.2f} ms, node CPU {us:.1f} us/read")
PY
    done
  done ;;
stall)
  F=${2:-quorum}
  start "$F"; fill http://127.0.0.1:8101
  pb=$(pgrep -f "$BIN serve --id B")
  (sleep 1.5; kill -STOP "$pb"; sleep 3; kill -CONT "$pb") &
  pauser=$!
  out=$("$BIN" bench --target ringlab --node http://127.0.0.1:8101 --concurrency 16 --reads 1 --keys 10000 --duration 6s --warmup 0s --json)
  python3 - "$out" "$F" <<'PY'
import json, sys
v = json.loads(sys.argv[1])
print(f"{sys.argv[2]}: {v['ops_per_s']:.0f} reads/s, p99 {v['p99_ms']} p99.9 {v['p999_ms']} "
      f"max {v['max_ms']} ms, errors {v['errors']}")
PY
  wait "$pauser"
  curl -s http://127.0.0.1:8101/metrics | grep -E '^ringlab_read_retries_total' || true ;;
*) echo "usage: benches/fanout.sh ab [ROUNDS] [CLIENTS] | stall [FANOUT]" >&2; exit 2 ;;
esac
