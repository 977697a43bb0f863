-- The sync worker: each mailbox's reservations are brought in line with Exchange by rounds
-- scheduled and leased from the mailbox row, like subscription upkeep, so one mailbox is never
-- synced twice at once (across replicas too) and a crashed worker's round is taken over once
-- its lease expires.

alter table mailboxes
    -- When a sync round is owed regardless of notifications (safety net, window roll, retry
    -- after a failure). Pending events make a mailbox due as well.
    add column sync_due_at timestamptz not null default now(),
    add column sync_locked_until timestamptz,
    -- Names the holder of the lease: a round extends its lease while it works and only
    -- finishes while the token is still its own.
    add column sync_lease_token uuid,
    -- Consecutive failed rounds, and the last error, for backoff and for `rooms-sync status`.
    add column sync_failures integer not null default 0,
    add column sync_error text,
    -- Where the next incremental round starts: the Graph delta link (verbatim) or the EWS
    -- SyncState, together with the backend that issued it and, for Graph, the window it covers.
    add column sync_cursor text,
    add column sync_cursor_backend text,
    add column sync_window_start timestamptz,
    add column sync_window_end timestamptz,
    -- Last successful round, and last successful full round (the window rolls from it).
    add column synced_at timestamptz,
    add column full_synced_at timestamptz,
    -- Why the last full round read the whole window (first sync, missed, window moved...).
    add column full_sync_reason text,
    add constraint mailboxes_sync_cursor_backend_check
        check (sync_cursor_backend in ('ews', 'graph'));

create index mailboxes_sync_due on mailboxes (sync_due_at) where enabled;

alter table reservations
    -- The backend whose id `item_id` is; a mailbox moved to the other backend adopts its rows.
    add column backend text,
    -- The series a row is an occurrence of (the master's item id), so a deleted or changed
    -- master retires the occurrences it no longer has.
    add column series_master_id text,
    -- The UID that identifies the meeting across backends: the iCalendar UID of the series
    -- for occurrences, the item's own for single meetings.
    add column series_uid text,
    -- For occurrences and exceptions: the start the series pattern gave the occurrence.
    add column original_start timestamptz,
    add constraint reservations_backend_check check (backend in ('ews', 'graph'));

create index reservations_series on reservations (mailbox_id, series_master_id)
    where series_master_id is not null;
create index reservations_uid on reservations (mailbox_id, series_uid)
    where series_uid is not null;

-- Events waiting for a sync of their mailbox (lifecycle events are upkeep's).
create index notification_events_sync_pending on notification_events (mailbox_id, id)
    where status in ('pending', 'processing');

-- Dead events, counted per mailbox by `rooms-sync status` and found by `events replay`.
create index notification_events_dead on notification_events (mailbox_id) where status = 'dead';
