-- Ingest hardening: the EWS watermark chain only moves forward.
--
-- A batch can commit after a newer one for the same subscription (Exchange retried a
-- notification whose first copy was stuck before its commit; the retry was stored and answered,
-- the next notification followed, then the stuck copy committed). Such a batch ends on a
-- watermark the stored chain has already passed: it must neither move `last_watermark` back nor
-- record a gap. The watermarks passed most recently are kept to recognise it.

alter table subscriptions
    -- EWS: the last watermark and PreviousWatermark of each batch that moved the chain, newest
    -- first, at most 16 (set by ingress together with `last_watermark`).
    add column recent_watermarks text[] not null default '{}';
