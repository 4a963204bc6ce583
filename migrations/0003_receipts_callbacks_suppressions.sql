-- Suppressions: recipients a tenant must not send to. Added by hand (API) or automatically
-- (hard bounces, complaints, opt-outs, dead push tokens); a send to one becomes `suppressed`.
CREATE TABLE suppressions (
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    channel    text        NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    recipient  text        NOT NULL,        -- notifications.recipient_key
    reason     text        NOT NULL,
    source     text        NOT NULL,        -- 'api', or the provider that reported it
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel, recipient)
);

-- The receipts inbox: every distinct provider receipt once (providers deliver at least once),
-- kept even when it matches no notification, so nothing a provider said is lost.
CREATE TABLE receipts (
    provider            text        NOT NULL,   -- the configured provider name
    dedupe_key          text        NOT NULL,   -- the provider's event id, or a hash of the receipt
    notification_id     uuid,                   -- NULL: unmatched
    provider_message_id text,
    provider_status     text        NOT NULL,
    payload             jsonb       NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, dedupe_key)
);
CREATE INDEX receipts_unmatched_idx ON receipts (received_at) WHERE notification_id IS NULL;

-- Status callbacks travel through the same durable queue as sends: `kind = 'callback'` jobs
-- on their own lane, with the event in `payload`. A notification still has at most one send job.
ALTER TABLE jobs ADD COLUMN kind text NOT NULL DEFAULT 'send' CHECK (kind IN ('send', 'callback'));
ALTER TABLE jobs ADD COLUMN payload jsonb;
ALTER TABLE jobs DROP CONSTRAINT jobs_notification_id_key;
CREATE UNIQUE INDEX jobs_send_notification_uq ON jobs (notification_id) WHERE kind = 'send';
CREATE INDEX jobs_notification_idx ON jobs (notification_id);
