#!/usr/bin/env bash
# The crash test's long mode (docs/durability.md): the release `rooms-sync serve` under constant
# Graph and EWS load is killed with SIGKILL at least CRASH_KILLS times (default 200) while a
# durable throwaway Postgres cluster is crashed with `pg_ctl stop -m immediate` CRASH_PG_CRASHES
# times (default 50). It prints the ledger (sent = acked + refused + failed + no answer), stored,
# missing and restart-to-ready, and fails when an acknowledged notification is not stored or the
# ledger does not balance. Needs PostgreSQL's server binaries under /usr/lib/postgresql, not a
# running server. CRASH_SENDERS (default 8, a quarter of them EWS) sets the load.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_KILLS="${CRASH_KILLS:-200}"
export CRASH_PG_CRASHES="${CRASH_PG_CRASHES:-50}"
# Only the ignored tests of tests/api/crash.rs: the long mode.
exec cargo test --release --locked --test api crash:: -- --ignored --nocapture --test-threads 1
