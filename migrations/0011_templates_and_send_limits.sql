-- Templates (issue 15). A template is a name per tenant with immutable versions; `latest`
-- is bumped under the row lock of an upsert, so concurrent PUTs get consecutive versions
-- without retry loops.
CREATE TABLE templates (
    tenant_id  uuid        NOT NULL,
    name       text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$'),
    latest     integer     NOT NULL CHECK (latest > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE template_versions (
    tenant_id  uuid        NOT NULL,
    name       text        NOT NULL,
    version    integer     NOT NULL CHECK (version > 0),
    body       jsonb       NOT NULL,     -- the PUT body as checked: default parts, locales
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, version),
    FOREIGN KEY (tenant_id, name) REFERENCES templates (tenant_id, name)
);

-- Where a notification's content came from: {"name", "version", "locale"}; NULL when the
-- caller sent content. The rendered content is in `content`, so later versions change nothing.
ALTER TABLE notifications ADD COLUMN template jsonb;

-- Send limits that defer (per-recipient throttles, per-tenant quotas; off unless configured):
-- sends counted per fixed window, shared by every replica. Logged, unlike the request
-- windows: a crash must not forget sends and let a recipient get more than its limit.
-- `subject` is the recipient key for throttles and '' for quotas. `sends` may exceed the limit:
-- the excess is the queue of deferred sends, which spreads them over later windows.
CREATE TABLE send_windows (
    scope        text        NOT NULL CHECK (scope IN ('recipient', 'quota_minute', 'quota_day')),
    tenant_id    uuid        NOT NULL,
    channel      text        NOT NULL,
    subject      text        NOT NULL,
    window_start timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,   -- past it the row counts nothing: retention drops it
    sends        integer     NOT NULL,
    PRIMARY KEY (scope, tenant_id, channel, subject, window_start)
);
CREATE INDEX send_windows_ends_idx ON send_windows (ends_at);
