-- The redelivery key becomes one fixed-size digest column with a unique index of its own.
--
-- The unique constraint over (backend, remote_subscription_id, dedupe_key) made every insert
-- descend and write a btree of three text columns, about 110 bytes an entry (a subscription id
-- and a 64-character hex key). A 32-byte digest of the same three values makes the index less
-- than half the size, and each insert and each redelivery probe compares one short value.
--
-- The digest is SHA-256 over the three parts, each preceded by its length in bytes as a
-- big-endian 64-bit integer; a null subscription id is the length -1 with no bytes, so it
-- matches only another null (the constraint was `nulls not distinct`). Ingest computes the
-- same bytes (`db::events::redelivery_digest`); this function is the definition the
-- migration backfills with, and the test suite checks that the two agree.
-- One part: its UTF-8 bytes after their count, or -1 and no bytes for null.
create function notification_events_digest_part(part text) returns bytea
language sql immutable parallel safe
return coalesce(int8send(length(convert_to(part, 'UTF8'))) || convert_to(part, 'UTF8'),
                int8send(-1));

create function notification_events_redelivery_digest(
    backend text, remote_subscription_id text, dedupe_key text
) returns bytea
language sql immutable parallel safe
return sha256(notification_events_digest_part(backend)
              || notification_events_digest_part(remote_subscription_id)
              || notification_events_digest_part(dedupe_key));

-- Null: the row takes part in no redelivery check (a key that has lapsed, see
-- `db::events::retire_lapsed_keys`, or a row not written by ingest).
alter table notification_events add column redelivery_digest bytea;

-- Rewrites every row once.
update notification_events
set redelivery_digest
    = notification_events_redelivery_digest(backend, remote_subscription_id, dedupe_key);

create unique index notification_events_redelivery on notification_events (redelivery_digest);

alter table notification_events drop constraint notification_events_dedupe_key;
