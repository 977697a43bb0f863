-- The contract tables of CONTRACT §5 and the bookkeeping columns the service needs on them.
-- Migrations are never edited once they have landed: add a new file instead.

create table mailboxes (
    id bigint generated always as identity primary key,
    address text not null,
    backend text not null,
    enabled boolean not null default true,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint mailboxes_address_key unique (address),
    constraint mailboxes_address_lower check (address = lower(address)),
    constraint mailboxes_backend_check check (backend in ('ews', 'graph'))
);

-- One row per subscription the service asked for; old rows are kept for forensics.
-- A row is inserted (status 'pending', with its clientState secret) before Exchange is asked,
-- so a notification that beats the create/Subscribe response can be recognised.
create table subscriptions (
    id bigint generated always as identity primary key,
    mailbox_id bigint not null references mailboxes (id),
    backend text not null,
    remote_id text,
    status text not null default 'pending',
    -- Graph clientState: a per-subscription shared secret compared on every notification.
    client_state text,
    callback_url text not null,
    expires_at timestamptz,
    requested_at timestamptz not null default now(),
    -- EWS: the watermark of the last event received (StatusEvent included) and when.
    last_watermark text,
    last_notification_at timestamptz,
    -- Set by ingress when continuity broke (PreviousWatermark mismatch) or Exchange reported the
    -- subscription lost; cleared by the worker once it has recovered.
    gap_detected_at timestamptz,
    lost_at timestamptz,
    lost_reason text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint subscriptions_remote_id_key unique (remote_id),
    constraint subscriptions_backend_check check (backend in ('ews', 'graph')),
    constraint subscriptions_status_check
        check (status in ('pending', 'active', 'superseded', 'expired', 'removed', 'failed'))
);

create unique index subscriptions_one_active_per_mailbox
    on subscriptions (mailbox_id) where status = 'active';
create index subscriptions_requested_at on subscriptions (backend, requested_at desc);

-- One row per event received; processing changes status, never deletes.
create table notification_events (
    id bigint generated always as identity primary key,
    received_at timestamptz not null default now(),
    backend text not null,
    remote_subscription_id text,
    -- The subscription and mailbox the event was matched to at receipt (null: unmatched yet).
    subscription_id bigint references subscriptions (id),
    mailbox_id bigint references mailboxes (id),
    kind text not null,
    item_id text,
    status text not null default 'pending',
    attempts integer not null default 0,
    last_error text,
    -- Why an event is not acted on: 'client_state_mismatch', 'unknown_subscription', ...
    reject_reason text,
    -- Redelivery key: EWS watermark (or a digest of the event when it has none); Graph
    -- resource id + change type + etag (or the lifecycle event).
    dedupe_key text not null,
    -- The parsed event as received, for the worker and for forensics.
    payload jsonb not null,
    -- SHA-256 of the whole HTTP body the event arrived in.
    body_sha256 bytea not null,
    run_at timestamptz not null default now(),
    locked_until timestamptz,
    processed_at timestamptz,
    constraint notification_events_dedupe_key
        unique nulls not distinct (backend, remote_subscription_id, dedupe_key),
    constraint notification_events_backend_check check (backend in ('ews', 'graph')),
    constraint notification_events_status_check
        check (status in ('pending', 'processing', 'done', 'dead', 'ignored'))
);

create index notification_events_claimable
    on notification_events (run_at) where status = 'pending';
create index notification_events_leased
    on notification_events (locked_until) where status = 'processing';
create index notification_events_unmatched
    on notification_events (remote_subscription_id) where subscription_id is null;

-- One row per occurrence of a calendar item in a room's calendar within the sync window.
create table reservations (
    id bigint generated always as identity primary key,
    mailbox_id bigint not null references mailboxes (id),
    item_id text not null,
    ical_uid text,
    subject text,
    organizer text,
    location text,
    starts_at timestamptz not null,
    ends_at timestamptz not null,
    is_all_day boolean not null default false,
    is_cancelled boolean not null default false,
    deleted_at timestamptz,
    synced_at timestamptz not null default now(),
    -- Exchange's version of the item (EWS ChangeKey, Graph etag): skip rewrites of unchanged items.
    change_key text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint reservations_mailbox_item_key unique (mailbox_id, item_id)
);

create index reservations_mailbox_starts on reservations (mailbox_id, starts_at);
