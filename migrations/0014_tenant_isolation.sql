-- Isolation between tenants (issue 21).
--
-- * `jobs.tenant_id`: a claim shares each lane between the tenants that have due work in it
--   (round robin), callbacks are capped per tenant, and a tenant's stats count its own queue,
--   all through the claim index, which now leads with the lane and then the tenant. The
--   previous claim index (lane, run_at) is replaced rather than kept beside it: every job
--   insert and claim maintains the indexes of `jobs`.
-- * `notifications.size_bytes`: the bytes of its content and metadata as JSON, counted at
--   acceptance, so that a worker's claim and a list page can be bounded in bytes without
--   reading (and decompressing) the content first. NULL for rows accepted before this.
ALTER TABLE jobs ADD COLUMN tenant_id uuid;
UPDATE jobs j SET tenant_id = n.tenant_id FROM notifications n WHERE n.id = j.notification_id;
-- A job whose notification is gone is deleted by the next claim or rescue anyway.
DELETE FROM jobs WHERE tenant_id IS NULL;
ALTER TABLE jobs ALTER COLUMN tenant_id SET NOT NULL;

DROP INDEX jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON jobs (queue, priority, tenant_id, run_at, id) WHERE state = 'available';

ALTER TABLE notifications ADD COLUMN size_bytes integer;

-- The email domains a tenant's `from` may use (`herald tenants set T --sender-domains`); NULL:
-- `channels.email.sender_domains` applies.
ALTER TABLE tenants ADD COLUMN sender_domains text[];
