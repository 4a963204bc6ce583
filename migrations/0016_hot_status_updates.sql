-- The send path's status changes as HOT updates (issue 23).
--
-- A dispatched notification's row is updated twice on the send path: `queued → sending` by
-- the claim and `sending → sent` by the completion. PostgreSQL can make such an update HOT
-- (a new row version on the same page, no index touched) only when no indexed column
-- changes. `status` was in two indexes and `provider`/`provider_message_id` in a third, so
-- both updates wrote a new entry into every index of the table (five), which the benchmark's
-- profile showed as most of the completion's WAL.
--
-- * Lists and the dashboard's failures by status now read `indexed_status`: the status,
--   except for the three statuses of the send path, where it is NULL. Their changes then
--   leave every indexed column as it was. A list of `queued` or `sending` notifications
--   goes through their send jobs; a list of `sent` ones walks the tenant's newest rows
--   (`notifications_tenant_id_idx`), where they are (store::notifications::list_sql).
--   (`Status::SEND_PATH` in src/domain/status.rs names the same three: change both.)
-- * Receipts find their notification by the provider's message id on the `attempt` event
--   that recorded the send: that row is written anyway, so the index moves, it is not added.
--   A notification sent twice (an operator's retry) is found by either id.
-- * fillfactor 80 leaves room on each page for the new versions: the completion updates
--   a claim batch's rows in one transaction, so they cannot reuse each other's space.
--
-- Adding a stored generated column rewrites the table once (an exclusive lock for the time
-- of a copy): on a big installation, run `herald migrate` in a quiet hour.

ALTER TABLE notifications
    ADD COLUMN indexed_status text GENERATED ALWAYS AS (
        CASE WHEN status IN ('queued', 'sending', 'sent') THEN NULL ELSE status END
    ) STORED;
ALTER TABLE notifications SET (fillfactor = 80);

DROP INDEX notifications_status_idx;
DROP INDEX notifications_tenant_status_idx;
CREATE INDEX notifications_indexed_status_idx ON notifications (indexed_status, id DESC)
    WHERE indexed_status IS NOT NULL;
CREATE INDEX notifications_tenant_indexed_status_idx ON notifications (tenant_id, indexed_status, id DESC)
    WHERE indexed_status IS NOT NULL;

ALTER TABLE notification_events ADD COLUMN provider_message_id text;
UPDATE notification_events e SET provider_message_id = n.provider_message_id
FROM notifications n
WHERE n.id = e.notification_id AND n.provider_message_id IS NOT NULL
  AND e.type = 'attempt' AND e.status = 'sent' AND e.provider = n.provider;
DROP INDEX notifications_provider_message_idx;
CREATE INDEX notification_events_provider_message_idx ON notification_events (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
