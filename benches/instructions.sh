#!/usr/bin/env bash
# Instructions per request of the real service, counted by valgrind's callgrind: a figure that
# stays the same from run to run whatever else the machine is doing, for comparing two builds
# on the noisy shared machines where `cargo bench --bench ingest` moves by 10-20% between runs.
#
#   benches/instructions.sh [BINARY ...]     (default: the release build in the target dir)
#
# For each binary and each of two loads it starts `rooms-sync serve` under callgrind on a
# throwaway database, sends N1 and then (in a second start) N2 requests one at a time over one
# keep-alive connection, and prints (total(N2) - total(N1)) / (N2 - N1): the user-space
# instructions one request costs, start-up and shutdown cancelled out. The loads:
#   echo   Graph's validation handshake (no body, no database);
#   graph  one Graph notification per request, so one request per ingest batch (the batch's
#          statement is paid by one request, unlike under concurrent load);
#   ews    one EWS SendNotification with one event per request, likewise, each continuing the
#          watermark chain of the one before.
# Both go to an active subscription seeded in the throwaway database.
# Kernel time (system calls, wake-ups) is not counted: this measures the service's own code.
# valgrind hides the CPU's SHA extensions, so SHA-256 (two digests per event) runs in software
# here and weighs more than it does natively; the comparison between builds stays fair.
# Needs valgrind, python3, psql and the local Postgres (DATABASE_URL's server).
set -euo pipefail
cd "$(dirname "$0")/.."

db_server="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db_server="${db_server%/*}"
database="rooms_sync_instructions_$$"
target="${CARGO_TARGET_DIR:-target}"
binaries=("$@")
[ ${#binaries[@]} -eq 0 ] && binaries=("$target/release/rooms-sync")
work="$(mktemp -d)"
trap 'rm -rf "$work"; psql -q "$db_server/postgres" -c "drop database if exists $database" >/dev/null 2>&1 || true' EXIT

cat > "$work/client.py" <<'PY'
import http.client, sys
port, count, load = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
graph = ('{"value":[{"subscriptionId":"b8e5d0c2-1a2b-4c3d-9e8f-0a1b2c3d4e5f",'
         '"subscriptionExpirationDateTime":"2026-12-02T09:15:30.1234567+00:00","changeType":"updated",'
         '"clientState":"instructions-state","resource":"Users/7f3e9a12-4b6c-4d8e-9f01-2a3b4c5d6e7f/Events/ITEM",'
         '"tenantId":"5b1a3f0e-2c4d-4e6f-8a9b-0c1d2e3f4a5b","resourceData":{"@odata.type":"#Microsoft.Graph.Event",'
         '"@odata.id":"Users/7f3e9a12-4b6c-4d8e-9f01-2a3b4c5d6e7f/Events/ITEM",'
         '"@odata.etag":"W/\\"DwAAABYAAABhdXJvcmEtY2stMDAx\\"","id":"ITEM"}}]}')
ews = ('<?xml version="1.0" encoding="utf-8"?><soap11:Envelope xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/">'
       '<soap11:Header><t:RequestServerVersion xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" Version="Exchange2016"/></soap11:Header>'
       '<soap11:Body><m:SendNotification xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
       '<m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
       '<m:Notification><t:SubscriptionId>JgBpbnN0cnVjdGlvbnMtc3Vic2NyaXB0aW9u</t:SubscriptionId><t:PreviousWatermark>PREV</t:PreviousWatermark><t:MoreEvents>false</t:MoreEvents>'
       '<t:ModifiedEvent><t:Watermark>NEXT</t:Watermark><t:TimeStamp>2026-11-29T10:30:45Z</t:TimeStamp>'
       '<t:ItemId Id="AAMkAGJlbmNoLXJvb20AEYAAAAAITEM" ChangeKey="DwAAABYAAADmZXh0LWNrLTEwMDE="/>'
       '<t:ParentFolderId Id="AAMkAGJlbmNoLXJvb20ALgAAAABjYWxlbmRhcg==" ChangeKey="AQAAAA=="/></t:ModifiedEvent>'
       '</m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></soap11:Body></soap11:Envelope>')
connection = http.client.HTTPConnection("127.0.0.1", port)
for i in range(count):
    if load == "echo":
        connection.request("POST", "/api/webhooks/exchange?validationToken=Validation%3a+Testing+%2b+" + str(i))
        expected = 200
    elif load == "ews":
        body = (ews.replace("PREV", "AQAAAGluc3RyLXdt%09d" % i).replace("NEXT", "AQAAAGluc3RyLXdt%09d" % (i + 1))
                .replace("ITEM", "%09d" % i))
        connection.request("POST", "/api/webhooks/exchange", body=body,
                           headers={"Content-Type": "text/xml; charset=utf-8"})
        expected = 200
    else:
        body = graph.replace("ITEM", "AAMkAGInstr%09d" % i)
        connection.request("POST", "/api/webhooks/exchange", body=body,
                           headers={"Content-Type": "application/json"})
        expected = 202
    response = connection.getresponse()
    response.read()
    if response.status != expected:
        sys.exit(f"request {i}: status {response.status}, expected {expected}")
PY

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Total instructions of one run of `binary` answering `count` requests of `load`.
instructions() {
    local binary="$1" load="$2" count="$3" port admin out pid
    psql -q "$db_server/postgres" -c "drop database if exists $database" -c "create database $database" >/dev/null 2>&1
    env -i DatabaseUrl="$db_server/$database" IdpRootUrl=https://instructions.example "$binary" migrate >/dev/null 2>&1
    # One active subscription per backend, so that the notifications take the production path.
    psql -q "$db_server/$database" >/dev/null <<'SQL'
with m as (insert into mailboxes (address, backend) values ('graph-room@instructions.example', 'graph') returning id)
insert into subscriptions (mailbox_id, backend, remote_id, status, client_state, callback_url)
select id, 'graph', 'b8e5d0c2-1a2b-4c3d-9e8f-0a1b2c3d4e5f', 'active', 'instructions-state',
       'https://instructions.example/api/webhooks/exchange' from m;
with m as (insert into mailboxes (address, backend) values ('ews-room@instructions.example', 'ews') returning id)
insert into subscriptions (mailbox_id, backend, remote_id, status, callback_url)
select id, 'ews', 'JgBpbnN0cnVjdGlvbnMtc3Vic2NyaXB0aW9u', 'active',
       'https://instructions.example/api/webhooks/exchange' from m;
SQL
    port="$(free_port)"
    admin="$(free_port)"
    out="$work/callgrind.out"
    env -i DatabaseUrl="$db_server/$database" IdpRootUrl=https://instructions.example \
        ListenAddress="127.0.0.1:$port" AdminListenAddress="127.0.0.1:$admin" ServiceRoles=web \
        LogFormat=text valgrind --tool=callgrind --callgrind-out-file="$out" "$binary" serve \
        >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 200); do
        python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$port/readyz').status != 200)" \
            >/dev/null 2>&1 && break
        sleep 0.2
    done
    python3 "$work/client.py" "$port" "$count" "$load"
    kill -TERM "$pid"
    wait "$pid" || true
    sed -n 's/^summary: //p' "$out"
}

for binary in "${binaries[@]}"; do
    for load in echo graph ews; do
        if [ "$load" = echo ]; then low=1000 high=5000; else low=500 high=2500; fi
        a="$(instructions "$binary" "$load" "$low")"
        b="$(instructions "$binary" "$load" "$high")"
        echo "$binary $load: $(( (b - a) / (high - low) )) instructions per request"
    done
done
