-- Fixes from the core review (issue 10).
--
-- Early receipts. A provider can report on a message before Herald has recorded that it sent
-- it (Twilio calls back within milliseconds). Such a receipt is kept in the inbox, `held` when
-- it found its notification still being sent, unmatched when it came by a provider message
-- id not stored yet; recording the send applies it. Held receipts are found by the index by
-- notification (which retention needs too: without it every batch read the whole receipts
-- table), unmatched ones by a partial index as small as the unmatched receipts.
ALTER TABLE receipts ADD COLUMN held boolean NOT NULL DEFAULT false;
CREATE INDEX receipts_notification_idx ON receipts (notification_id) WHERE notification_id IS NOT NULL;
CREATE INDEX receipts_unmatched_message_idx ON receipts (provider, provider_message_id) WHERE notification_id IS NULL;

-- A tenant's list filtered by status (the operators' most common question: what failed?),
-- newest first, walked by an index instead of discarding the tenant's other rows.
CREATE INDEX notifications_tenant_status_idx ON notifications (tenant_id, status, id DESC);
