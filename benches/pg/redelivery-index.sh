#!/bin/sh
# What the redelivery index costs Postgres per insert: the unique constraint over
# (backend, remote_subscription_id, dedupe_key) that migrations up to 20261130000004 built,
# against the 32-byte `redelivery_digest` of migration 20261130000005. Everything else is the
# event table as the migrations leave it (same columns, same partial indexes).
#
#   sh benches/pg/redelivery-index.sh            # Postgres at $DATABASE_URL's server
#
# Two tables in a scratch database, each first filled with 480,000 rows, then pgbench inserts
# batches of 12 Graph-sized rows (about the ingest benchmark's mean batch) into each in turn,
# three rounds of ROUND_SECONDS (default 15). With synchronous_commit off the run is bound by
# CPU, not by the WAL flush, so the ratio of the two rates is the ratio of CPU per row. Keys
# and digests are computed in SQL the same way for both tables.
set -eu
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
seconds=${ROUND_SECONDS:-15}
db=rooms_sync_index_bench
dir=$(mktemp -d)
trap 'rm -rf "$dir"; psql -q -d "$url" -c "drop database if exists $db" >/dev/null 2>&1 || true' EXIT
psql -q -d "$url" -c "drop database if exists $db" -c "create database $db"
scratch=$(printf '%s' "$url" | sed "s#/[^/]*\$#/$db#")

columns="id bigint generated always as identity primary key,
    received_at timestamptz not null default now(),
    backend text collate \"C\" not null check (backend in ('ews', 'graph')),
    remote_subscription_id text collate \"C\",
    subscription_id bigint, mailbox_id bigint, kind text not null, item_id text,
    status text not null default 'pending'
        check (status in ('pending', 'processing', 'done', 'dead', 'ignored')),
    attempts integer not null default 0, last_error text, reject_reason text,
    dedupe_key text collate \"C\" not null, payload text not null,
    run_at timestamptz not null default now(), locked_until timestamptz,
    processed_at timestamptz"
partial_indexes() {
    cat <<EOF
create index on $1 (locked_until) where status = 'processing';
create index on $1 (remote_subscription_id) where subscription_id is null;
create index on $1 (mailbox_id) where status = 'pending'
    and kind in ('reauthorization_required', 'subscription_removed', 'missed');
create index on $1 (mailbox_id, id) where status in ('pending', 'processing');
create index on $1 (mailbox_id) where status = 'dead';
EOF
}
{
    echo "create table three_columns ($columns,
        unique nulls not distinct (backend, remote_subscription_id, dedupe_key));"
    echo "create table digest ($columns, redelivery_digest bytea);"
    echo "create unique index on digest (redelivery_digest);"
    partial_indexes three_columns
    partial_indexes digest
} | psql -q -d "$scratch"

payload=$(printf '{"subscriptionId":"0d8f2b6a-7c31-4e59-9a42-3f1b6c8d9e01","clientState":"secretClientValue","changeType":"updated","resource":"Users/abc/Events/AAMkAGI2THVSAAA=","resourceData":{"@odata.type":"#Microsoft.Graph.Event","@odata.id":"Users/abc/Events/AAMkAGI2THVSAAA=","@odata.etag":"W/\\"CQAAABYAAAA\\"","id":"AAMkAGI2THVSAAA="},"subscriptionExpirationDateTime":"2026-12-01T11:00:00.0000000Z","tenantId":"84bd8158-6d4d-4958-8b9f-9d6445542f95","pad":"%0170d"}' 0)
for table in three_columns digest; do
    case $table in
        digest) extra_column=", redelivery_digest" extra_value=", sha256(convert_to(k, 'UTF8'))" ;;
        *) extra_column="" extra_value="" ;;
    esac
    cat >"$dir/$table.sql" <<EOF
insert into $table (backend, remote_subscription_id, subscription_id, mailbox_id, kind, item_id,
                    status, dedupe_key, payload$extra_column)
select 'graph', '0d8f2b6a-7c31-4e59-9a42-' || lpad((g % 64)::text, 12, '0'), g % 64, g % 64,
       'updated', 'AAMkAGI2THVSAAA=' || k, 'pending', k, '$payload'$extra_value
from generate_series(1, 12) g,
     lateral (select md5(random()::text || g) || md5(random()::text) as k) r
on conflict do nothing;
EOF
done

export PGOPTIONS='-c synchronous_commit=off'
for table in three_columns digest; do
    pgbench -n -M prepared -c 2 -j 1 -t 20000 -f "$dir/$table.sql" "$scratch" >/dev/null
done
echo "# batches of 12 rows per second, 2 clients, synchronous_commit off, ${seconds} s each"
for round in 1 2 3; do
    line="round $round:"
    for table in three_columns digest; do
        tps=$(pgbench -n -M prepared -c 2 -j 1 -T "$seconds" -f "$dir/$table.sql" "$scratch" \
            | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
        line="$line $table $tps"
        eval "tps_$table=$tps"
    done
    # shellcheck disable=SC2154
    echo "$line, digest ÷ three columns $(awk "BEGIN { printf \"%.2f\", $tps_digest / $tps_three_columns }")"
done
psql -q -d "$scratch" -At -c "select 'index sizes: three columns ' ||
    pg_size_pretty(pg_relation_size('three_columns_backend_remote_subscription_id_dedupe_key_key'))
    || ', digest ' || pg_size_pretty(pg_relation_size('digest_redelivery_digest_idx'))"
