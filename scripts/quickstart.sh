#!/usr/bin/env bash
# Quick start: install into .venv, run a tunnel server, a demo web service
# reachable only "behind" the client, and a client; then fetch a page from
# the service through the server's front door.  --keep leaves them running.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_PORT=${SERVER_PORT:-8123}
DEMO_PORT=${DEMO_PORT:-8125}
RUN=.quickstart
mkdir -p "$RUN"

if [ ! -x .venv/bin/twistd ] || [ ! -f .venv/.installed ] || [ setup.cfg -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q .
  touch .venv/.installed
fi
.venv/bin/pip install -q --no-deps --force-reinstall . >/dev/null

stop() {
  for name in client demo server; do
    [ -f "$RUN/$name.pid" ] && kill "$(cat "$RUN/$name.pid")" 2>/dev/null || true
  done
}
trap stop EXIT
stop; sleep 0.5

# Client "foo" authenticates with a token of its own: the server keeps only
# its SHA-256 (clients file), the client reads it from a file.
if [ ! -s "$RUN/foo.token" ]; then
  (umask 077; .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(32))" > "$RUN/foo.token")
fi
.venv/bin/python - "$RUN/foo.token" "$RUN/clients" <<'PY'
import hashlib, sys
token = open(sys.argv[1]).readline().strip()
open(sys.argv[2], "w").write(f"foo sha256:{hashlib.sha256(token.encode()).hexdigest()}\n")
PY

.venv/bin/twistd --pidfile "$RUN/server.pid" --logfile "$RUN/server.log" \
  remotedialer-server --listen "tcp:$SERVER_PORT:interface=127.0.0.1" --clients-file "$RUN/clients"
.venv/bin/twistd --pidfile "$RUN/demo.pid" --logfile "$RUN/demo.log" \
  web --listen "tcp:$DEMO_PORT:interface=127.0.0.1" --path demo
.venv/bin/twistd --pidfile "$RUN/client.pid" --logfile "$RUN/client.log" \
  remotedialer-client --connect "ws://127.0.0.1:$SERVER_PORT/connect" --id foo \
  --token-file "$RUN/foo.token" --allow "tcp/127.0.0.1:$DEMO_PORT"

URL="http://127.0.0.1:$SERVER_PORT/client/foo/http/127.0.0.1:$DEMO_PORT/hello.txt"
echo "server :$SERVER_PORT, demo service :$DEMO_PORT, client 'foo' (logs in $RUN/)"
echo "GET $URL"
.venv/bin/python - "$URL" <<'PY'
import sys, time, urllib.request, urllib.error
url = sys.argv[1]
for attempt in range(50):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            print(f"HTTP {r.status}, through the tunnel:")
            print(r.read().decode())
            break
    except urllib.error.HTTPError as e:
        if e.code != 500 or attempt == 49:
            print(f"HTTP {e.code}: {e.read().decode()}"); sys.exit(1)
    except OSError:
        pass
    time.sleep(0.2)
else:
    sys.exit("no answer through the tunnel; see .quickstart/*.log")
PY

if [ "${1:-}" = "--keep" ]; then
  echo "running; try: curl $URL   (Ctrl-C stops everything)"
  while sleep 3600; do :; done
fi
