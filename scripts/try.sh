#!/usr/bin/env bash
# The quick start: builds envy and a Debian 12 box, brings up examples/web-app in a
# container, runs a command in it and fetches its page through the forwarded port.
# As root or as a normal user (who then runs machines in a user namespace of their own);
# only installing missing packages needs root, and scripts/deps.sh says so.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
envy=${ENVY_BIN:-}
if [ -z "$envy" ]; then
  command -v cargo >/dev/null 2>&1 || { echo "error: cargo is not installed; install Rust (rustup) first" >&2; exit 1; }
  cargo build -q --locked
  envy=$PWD/target/debug/envy
fi
scripts/debian-box.sh "$envy"
cd examples/web-app
"$envy" up
"$envy" exec -- sh -c 'echo "$GREETING: $(. /etc/os-release; echo $PRETTY_NAME), kernel $(uname -r)"'
port=$("$envy" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["machines"][0]["forwards"][0]["host_port"])')
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$port/" | grep -o '<h1>.*</h1>'
echo
echo "web-app is up: http://127.0.0.1:$port/  (envy -C examples/web-app ssh | halt | destroy --force)"
