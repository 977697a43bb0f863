-- Subscription upkeep: each mailbox is scheduled from its own row (when to look at it next, the
-- lease of the replica acting on it, consecutive failures), and says whether a working
-- subscription covers it. Scheduling lives in rows, not in memory, so a restart resumes where
-- it was and several replicas never act on one mailbox at once.

alter table mailboxes
    add column upkeep_due_at timestamptz not null default now(),
    add column upkeep_locked_until timestamptz,
    add column upkeep_failures integer not null default 0,
    add column upkeep_error text,
    add column coverage text not null default 'uncovered',
    add column coverage_reason text,
    add column coverage_changed_at timestamptz not null default now(),
    -- A full resync of the reservations window is owed (first sight, lost events...).
    add column resync_requested_at timestamptz,
    add column resync_reason text,
    add constraint mailboxes_coverage_check check (coverage in ('covered', 'uncovered', 'disabled'));

create index mailboxes_upkeep_due on mailboxes (upkeep_due_at);

alter table subscriptions
    -- Graph: the resource subscribed to, to recognise the subscription when listing Graph's.
    add column resource text,
    -- EWS: the StatusFrequency asked for (silence is judged against it), and the watermark the
    -- Subscribe response gave, the resume point until a notification moves `last_watermark`.
    add column status_frequency_minutes integer,
    add column subscribe_watermark text,
    add column activated_at timestamptz,
    -- Graph: when to renew (about half the lifetime, with jitter); set at create and renewal.
    add column renew_at timestamptz,
    add column renewed_at timestamptz,
    add column ended_at timestamptz,
    add column end_reason text;

-- Lifecycle notifications are acted on by subscription upkeep, found by mailbox.
create index notification_events_lifecycle_pending on notification_events (mailbox_id)
    where status = 'pending'
      and kind in ('reauthorization_required', 'subscription_removed', 'missed');

-- Jobs that are not per mailbox (e.g. reconciling the list of Graph subscriptions), scheduled
-- and leased the same way.
create table worker_jobs (
    name text primary key,
    due_at timestamptz not null default now(),
    locked_until timestamptz,
    last_run_at timestamptz,
    last_error text
);

insert into worker_jobs (name) values ('graph_reconcile');
