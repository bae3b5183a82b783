#!/usr/bin/env bash
# The floor (issue 13) in instructions: user-space instructions per recorded delivery of
# `havedane serve` and of bench/bare_smtp.py, each under valgrind's callgrind, counted only
# while bench/smtp_load.py runs (4 clients; the server's start and a warm-up are not
# counted). Instruction counts do not move with the machine's load, unlike CPU time; they
# leave out the kernel, cache misses and waiting. Loopback only; stops what it started.
#   bench/floor_instructions.sh havedane|bare [seconds]     (needs valgrind)
# With PYTHONPATH=<a checkout's src> it measures that code instead (a "before" figure).
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=$1
SECONDS_COUNTED=${2:-20}
DIR=$(mktemp -d)
VG=""
trap '[ -n "$VG" ] && kill $VG 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
.venv/bin/havedane init --domain x.test --dir "$DIR" >/dev/null
export HAVEDANE_SMTP_MAX_CONNECTIONS_PER_CLIENT=1000 HAVEDANE_LIMITS_TESTS_PER_MINUTE=1000 \
  HAVEDANE_SMTP_MAX_DELIVERIES_PER_PROBE=1000000000 HAVEDANE_SMTP_MAX_SESSIONS_PER_TEST=1000000000
CG="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$DIR/cg.out"
if [ "$WHAT" = havedane ]; then
  $CG .venv/bin/havedane serve --config "$DIR/havedane.toml" --smtp-listen 127.0.0.1:2735 \
    --web-listen 127.0.0.1:8291 >"$DIR/serve.log" 2>&1 &
  RCPTS=()
else
  $CG .venv/bin/python bench/bare_smtp.py --tls-dir "$DIR/tls" --listen 127.0.0.1:2735 --db "$DIR/bare.sqlite3" \
    >"$DIR/serve.log" 2>&1 &
  RCPTS=(--rcpt bench@do.x.test --rcpt bench@dont.x.test --rcpt bench@wrong.x.test)
fi
VG=$!
up() { for _ in $(seq 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.5; done; exit 1; }
up 2735
if [ "$WHAT" = havedane ]; then up 8291; fi
LOAD=(.venv/bin/python bench/smtp_load.py --smtp 127.0.0.1:2735 --web http://127.0.0.1:8291 --clients 4 "${RCPTS[@]}")
"${LOAD[@]}" --seconds 5 >/dev/null  # warm-up, not counted
callgrind_control -i on $VG >/dev/null
"${LOAD[@]}" --seconds "$SECONDS_COUNTED" | tee "$DIR/load.txt"
callgrind_control -i off $VG >/dev/null
callgrind_control -d $VG >/dev/null
kill $VG
wait $VG || true
VG=""
N=$(grep -o " deliveries=[0-9]*" "$DIR/load.txt" | cut -d= -f2)
IR=$(cat "$DIR"/cg.out* | sed -n 's/^totals: *//p' | awk '{s += $1} END {print s}')
echo "$WHAT: $N deliveries, $IR instructions counted, $((IR / N)) per delivery"
