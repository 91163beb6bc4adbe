#!/usr/bin/env bash
# The README's first command: apply the sample policies in manifests/ against the built-in
# fake AutoSend server (seeded from examples/demo-seed.json), then show the status.
# Everything stays on this machine: the fake listens on 127.0.0.1, the state store goes to a
# temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building listwarden and the fake AutoSend server (the first build takes about 5 minutes on 2 cores; cargo shows its progress)"
cargo build -p listwarden --bin listwarden -p autosend-fake --bin autosend-fake
target="${CARGO_TARGET_DIR:-target}"
bin="$target/debug/listwarden"
work=$(mktemp -d)
log="$work/fake.log"

"$target/debug/autosend-fake" --listen 127.0.0.1:0 --seed examples/demo-seed.json \
  --api-key demo-key >"$log" 2>&1 &
fake=$!
trap 'kill $fake 2>/dev/null || true; rm -rf "$work"' EXIT

url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's/^fake AutoSend listening on \(http[^ ]*\)$/\1/p' "$log")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "the fake AutoSend server did not start:"; cat "$log"; exit 1; }

export AUTOSEND_API_URL="$url" AUTOSEND_API_KEY=demo-key
echo "== listwarden apply manifests/ (against the fake at $url, AutoSend's default limits)"
"$bin" apply manifests/ --state "$work/state.db"
echo
echo "== listwarden status"
"$bin" status --state "$work/state.db"
echo
echo "== a second apply sends nothing: every contact is confirmed"
"$bin" apply manifests/ --state "$work/state.db" | sed -n '/^Plan:/,$p'
