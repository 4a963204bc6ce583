-- Mailgun signs only `timestamp + token`, not the event: a captured signature could be
-- replayed within the replay window with forged event data (a `complained` that suppresses a
-- recipient). Each signed token is bound here to the first event it came with; the same token
-- with another event is refused. Kept well past any replay window, then pruned by retention.
CREATE TABLE receipt_tokens (
    provider   text        NOT NULL,   -- the configured provider name
    token      text        NOT NULL,
    dedupe_key text        NOT NULL,   -- the receipt the token was first seen with
    seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, token)
);
CREATE INDEX receipt_tokens_seen_idx ON receipt_tokens (seen_at);
