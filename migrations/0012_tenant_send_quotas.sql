-- A tenant's own send quotas (`herald tenants set T --quota sms.per_day=1000`), each replacing
-- `channels.X.tenant_per_minute` or `tenant_per_day` for that tenant: {"sms.per_day": 1000, …};
-- 0 means no quota for that tenant. Dispatchers read the tenants that have any every few seconds.
ALTER TABLE tenants ADD COLUMN send_quotas jsonb NOT NULL DEFAULT '{}';
