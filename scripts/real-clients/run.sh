#!/usr/bin/env bash
# Checks that real Exchange client libraries work against `rooms-sync simulate` unchanged:
# exchangelib (EWS) and msgraph-sdk (Graph), at the versions pinned in requirements.txt,
# installed into a virtual environment outside the source tree. Builds rooms-sync, starts
# the simulator on a free loopback port, drives it through both libraries (drive.py) and
# prints PASS/FAIL per step; exits non-zero on any failure.
#
# Environment: ROOMS_SYNC_REAL_CLIENTS_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/rooms-sync-real-clients)
# holds the virtual environment; PYTHON names the interpreter that creates it (python3).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${ROOMS_SYNC_REAL_CLIENTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rooms-sync-real-clients}
venv=$cache/venv
python=${PYTHON:-python3}
started=$(date +%s)

# The environment is rebuilt whenever the pinned versions change.
stamp=$venv/.requirements.sha256
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "real-clients: installing $(grep -v '^#' "$here/requirements.txt" | xargs) into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" >"$stamp"
fi

echo "real-clients: building rooms-sync"
(cd "$root" && cargo build --quiet --locked --bin rooms-sync)
target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps --locked |
    "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/debug/rooms-sync

# Port 0: the simulator picks a free port and prints its URL.
log=$(mktemp)
"$bin" simulate --listen 127.0.0.1:0 >"$log" 2>&1 &
sim=$!
cleanup() {
    kill "$sim" 2>/dev/null || true
    wait "$sim" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

base=
for _ in $(seq 100); do
    base=$(sed -n 's/^Exchange simulator listening on \(http:[^ ]*\)$/\1/p' "$log")
    [[ -n $base ]] && break
    if ! kill -0 "$sim" 2>/dev/null; then
        echo "real-clients: the simulator did not start:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
if [[ -z $base ]]; then
    echo "real-clients: the simulator printed no URL:" >&2
    cat "$log" >&2
    exit 1
fi
# Its control API answers once it serves.
"$venv/bin/python" - "$base/_sim/health" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(f"no health at {sys.argv[1]}")
PY
echo "real-clients: simulator at $base"

status=0
# -B: no __pycache__ in the source tree.
(cd "$here" && "$venv/bin/python" -B drive.py "$base") || status=$?
echo "real-clients: done in $(($(date +%s) - started)) s"
exit "$status"
