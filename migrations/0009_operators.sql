-- The operators' view (issue 13).
--
-- `retried`: an operator requeued a failed, expired or bounced notification. `deferred` is
-- reserved for rate limits that hold a send back (its detail says which and until when).
ALTER TABLE notification_events DROP CONSTRAINT notification_events_type_check;
ALTER TABLE notification_events ADD CONSTRAINT notification_events_type_check CHECK (type IN (
    'accepted', 'scheduled', 'attempt', 'receipt', 'callback', 'cancelled',
    'expired', 'suppressed', 'rescued', 'retried', 'deferred'));

-- Stats over a window of time read the events of that window: `at` grows with the table
-- (append-only, clock_timestamp()), which is what a BRIN index wants. It costs the hot path
-- next to nothing (one summary per 128 pages) and lets "the last hour" skip the rest.
CREATE INDEX notification_events_at_brin ON notification_events USING brin (at) WITH (pages_per_range = 32);

-- W3C trace context of the request that created the notification, continued by dispatch.
ALTER TABLE notifications ADD COLUMN traceparent text;
