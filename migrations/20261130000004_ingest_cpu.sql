-- The webhook's insert into notification_events is the hot path: every acknowledgement pays
-- for each index, constraint and conversion of this table. These earned nothing for their cost.

-- Foreign keys: each inserted row looked up and share-locked its subscription and its mailbox.
-- Neither table has a row deleted (mailboxes are disabled, subscriptions ended), so the
-- references cannot dangle; the ids are written by ingest from rows it has just read.
alter table notification_events
    drop constraint notification_events_subscription_id_fkey,
    drop constraint notification_events_mailbox_id_fkey;

-- A digest of the whole request body, which nothing ever read.
alter table notification_events drop column body_sha256;

-- The payload is JSON the parser has already checked (Graph's item as received, or the
-- service's own rendering of an EWS event); converting it to jsonb on every insert cost more
-- than the rest of the row. Read it with `payload::jsonb` where a field is needed.
alter table notification_events alter column payload type text using payload::text;

-- Nothing claims events by run_at any more: the sync worker claims mailboxes.
drop index notification_events_claimable;

-- The redelivery key is compared byte for byte: ids and hex digests have no language. Under a
-- linguistic collation (the database's default) every comparison in the unique index's btree
-- went through the locale's string collation, on every insert.
alter table notification_events
    alter column backend type text collate "C",
    alter column remote_subscription_id type text collate "C",
    alter column dedupe_key type text collate "C";
