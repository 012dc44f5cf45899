#!/usr/bin/env bash
# `serve` of two corefocus binaries on one checkpoint, measured by `loadgen` in alternating
# rounds (issue 17's "serve + loadgen before and after, same machine, same run"):
#   scripts/serve-compare.sh BEFORE_BINARY AFTER_BINARY CHECKPOINT [rounds] [loadgen flags...]
# Both servers start first and stay up; each round loads one, then the other (the idle
# one does nothing meanwhile). Prints one JSON line per round and server.
set -euo pipefail
before=$1 after=$2 ckpt=$3 rounds=${4:-3}
shift $(( $# < 4 ? $# : 4 ))
# loadgen's flags: these defaults unless given (e.g. `--concurrency 1 --requests 200`).
loadgen=("$@")
[[ " $* " == *" --concurrency "* ]] || loadgen+=(--concurrency 8)
[[ " $* " == *" --requests "* ]] || loadgen+=(--requests 400)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$before" serve --checkpoint "$ckpt" --addr 127.0.0.1:8791 >/dev/null 2>&1 & pids+=($!)
"$after" serve --checkpoint "$ckpt" --addr 127.0.0.1:8792 >/dev/null 2>&1 & pids+=($!)
for port in 8791 8792; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  # One warm-up round each, not reported.
  "$after" loadgen --url "http://127.0.0.1:$port" --concurrency 8 --requests 50 >/dev/null
done
for r in $(seq "$rounds"); do
  for port in 8791 8792; do
    name=$([ $port = 8791 ] && echo before || echo after)
    "$after" loadgen --url "http://127.0.0.1:$port" "${loadgen[@]}" --json |
      python3 -c 'import json, sys; print(json.dumps({"round": int(sys.argv[1]), "server": sys.argv[2], "report": json.load(sys.stdin)}))' "$r" "$name"
  done
done
