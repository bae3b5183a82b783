#!/usr/bin/env bash
# The core's two figures (issue 2): recorded deliveries/s through the receiver and
# GET /api/tests/{alias} requests/s. Starts its own `havedane serve` on loopback,
# runs the load generators (separate processes), stops the server.
#   bench/core.sh [seconds]
# Needs wrk (apt-get install wrk) for the HTTP figure.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-20}
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
.venv/bin/havedane init --domain x.test --dir "$DIR" >/dev/null
# The load generator is one address opening 16 connections at a time, all to one test.
HAVEDANE_SMTP_MAX_CONNECTIONS_PER_CLIENT=1000 HAVEDANE_LIMITS_TESTS_PER_MINUTE=1000 \
HAVEDANE_SMTP_MAX_DELIVERIES_PER_PROBE=1000000000 HAVEDANE_SMTP_MAX_SESSIONS_PER_TEST=1000000000 \
  .venv/bin/havedane serve --config "$DIR/havedane.toml" --smtp-listen 127.0.0.1:2725 --web-listen 127.0.0.1:8281 \
  >"$DIR/serve.log" 2>&1 &
PID=$!
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:8281/ && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(python3 --version)"
echo "== deliveries/s (STARTTLS, new connection per message, 3 recipients, 16 clients)"
.venv/bin/python bench/smtp_load.py --smtp 127.0.0.1:2725 --web http://127.0.0.1:8281 --clients 16 \
  --seconds "$SECONDS_PER_RUN" --db "$DIR/havedane.sqlite3"
echo "== GET /api/tests/{alias} requests/s (a test with deliveries and sessions; 32 connections)"
ALIAS=$(curl -s -X POST http://127.0.0.1:8281/api/tests | python3 -c 'import json,sys; print(json.load(sys.stdin)["alias"])')
.venv/bin/python - "$ALIAS" <<'PY'
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", 2725) as s:
    s._host = "do.x.test"; s.starttls(context=ctx)
    s.sendmail("a@sender.example", [f"test@{sys.argv[1]}.do.x.test", f"test@{sys.argv[1]}.dont.x.test"], b"Subject: x\r\n\r\nx\r\n")
PY
sleep 0.5
wrk -t1 -c32 -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:8281/api/tests/$ALIAS" | grep -E "Requests/sec|Latency"
