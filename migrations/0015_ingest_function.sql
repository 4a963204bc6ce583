-- The write behind every accepted notification (store::ingest::insert), as a function.
--
-- Through a transaction-mode pooler (database.transaction_pooler) no prepared statement
-- outlives its transaction, so a statement sent from Herald is parsed and planned on every
-- execution: for this one, a dozen CTEs, about 1.8 ms of PostgreSQL's CPU each time against
-- 0.1 ms for its cached plan (measured on PostgreSQL 15), which halved the single-POST rate
-- behind PgBouncer. PL/pgSQL caches the plans of the statements in a function in each server
-- connection, whichever client the pooler lends it to, so from here the statement is planned
-- once per server connection; Herald sends `SELECT * FROM herald_ingest(...)`, cheap to parse.
--
-- Parameters, each an array with one element per notification unless said:
--   $1 id, $2 tenant_id, $3 channel, $4 recipient, $5 recipient_key, $6 content, $7 status,
--   $8 priority, $9 tags (a JSON array), $10 metadata, $11 callback_url, $12 send_at,
--   $13 expires_at, $14 created_at, $15 lane, $16 max_attempts; $17 the wake-up channel (one
--   text) and $18 whether to notify it (one bool); $19 the statuses announced to status
--   callbacks; $20 traceparent, $21 template, $22 size_bytes.
-- The status-callback CTE `cb` is store::tracking::QUEUE_CALLBACK with $19.
CREATE FUNCTION herald_ingest(
    uuid[], uuid[], text[], jsonb[], text[], jsonb[], text[], text[], jsonb[], jsonb[], text[],
    timestamptz[], timestamptz[], timestamptz[], smallint[], int[], text, bool, text[], text[],
    jsonb[], int[]
) RETURNS TABLE (id uuid, status text, reason text, woke bigint)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::text[], $6::jsonb[],
                             $7::text[], $8::text[], $9::jsonb[], $10::jsonb[], $11::text[],
                             $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::smallint[],
                             $16::int[], $20::text[], $21::jsonb[], $22::int[])
            AS i(id, tenant_id, channel, recipient, recipient_key, content, status, priority, tags,
                 metadata, callback_url, send_at, expires_at, created_at, lane, max_attempts, traceparent,
                 template, size_bytes)
    ), sup AS MATERIALIZED (
        SELECT i.id, s.reason FROM input i
        JOIN suppressions s ON s.tenant_id = i.tenant_id AND s.channel = i.channel
                           AND s.recipient = i.recipient_key
    ), n AS (
        INSERT INTO notifications (id, tenant_id, channel, recipient, recipient_key, content, status,
                                   priority, tags, metadata, callback_url, send_at, expires_at,
                                   created_at, updated_at, traceparent, template, size_bytes)
        SELECT i.id, i.tenant_id, i.channel, i.recipient, i.recipient_key, i.content,
               CASE WHEN sup.id IS NULL THEN i.status ELSE 'suppressed' END, i.priority,
               CASE WHEN i.tags = '[]' THEN '{}'::text[]
                    ELSE ARRAY(SELECT jsonb_array_elements_text(i.tags)) END,
               i.metadata, i.callback_url, i.send_at, i.expires_at, i.created_at, i.created_at,
               i.traceparent, i.template, i.size_bytes
        FROM input i LEFT JOIN sup ON sup.id = i.id
        RETURNING id, tenant_id, status, callback_url
    ), ev AS (
        INSERT INTO notification_events (notification_id, at, type, status, detail)
        SELECT i.id, i.created_at, 'suppressed', 'suppressed', jsonb_build_object('reason', sup.reason)
        FROM sup JOIN input i ON i.id = sup.id
    ), j AS (
        INSERT INTO jobs (notification_id, tenant_id, queue, priority, run_at, max_attempts)
        SELECT i.id, i.tenant_id, i.channel, i.lane, coalesce(i.send_at, i.created_at), i.max_attempts
        FROM input i WHERE NOT EXISTS (SELECT 1 FROM sup WHERE sup.id = i.id)
        RETURNING run_at
    ), upd AS (
        SELECT id, tenant_id, status, callback_url FROM n WHERE status = 'suppressed'
    ), cb AS (
        INSERT INTO jobs (notification_id, tenant_id, kind, queue, priority, run_at, max_attempts, payload)
        SELECT u.id, u.tenant_id, 'callback', 'callback', 1, now(), 0,
               jsonb_build_object('type', 'notification.' || u.status, 'status', u.status,
                                  'at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        FROM upd u JOIN tenants t ON t.id = u.tenant_id
        WHERE coalesce(u.callback_url, t.callback_url) IS NOT NULL
          AND u.status = ANY($19::text[])
    ), wake AS (
        SELECT pg_notify($17, '') WHERE $18 AND EXISTS (SELECT 1 FROM j WHERE run_at <= now())
    )
    SELECT n.id, n.status, sup.reason, (SELECT count(*) FROM wake) AS woke
    FROM n LEFT JOIN sup ON sup.id = n.id;
END
$fn$;
