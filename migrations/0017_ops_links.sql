-- Sign-in links to the dashboard (`herald ops-link`): one-time, short-lived, signed with a key
-- the server keeps, and carrying no API key.
--
-- * `signing_keys`: secrets the server makes for itself, one per purpose, kept here so that
--   every replica signs and checks with the same one. Made on first use.
-- * `ops_links`: one row per link. A link names its row and carries an HMAC (with the
--   `ops-link` key) over the row's id, tenant and expiry; using it sets `used_at` in the
--   same statement that checks it is unused and unexpired, so it works once.
-- * A used link gives the browser a short-lived key of its own with the `read` scope:
--   `api_keys.expires_at`, after which the key is refused as a revoked one is.

CREATE TABLE signing_keys (
    purpose    text        PRIMARY KEY,
    key        bytea       NOT NULL CHECK (length(key) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ops_links (
    id         uuid        PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Retention prunes links and session keys a day after they expire, walking these.
CREATE INDEX ops_links_expires_idx ON ops_links (expires_at);

ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
CREATE INDEX api_keys_expires_idx ON api_keys (expires_at) WHERE expires_at IS NOT NULL;
