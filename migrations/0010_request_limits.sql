-- Request rate limits per tenant (off unless configured): `limits.requests_per_second` by
-- default, a tenant's own `requests_per_second` when set (0: no limit for that tenant).
ALTER TABLE tenants ADD COLUMN requests_per_second integer CHECK (requests_per_second >= 0);

-- Requests per tenant per second, shared by every replica. Counts that matter for a second
-- only: UNLOGGED (no WAL; a crash empties it, which at worst lets one second through).
CREATE UNLOGGED TABLE api_request_windows (
    tenant_id uuid        NOT NULL,
    second    timestamptz NOT NULL,
    requests  integer     NOT NULL,
    PRIMARY KEY (tenant_id, second)
);
