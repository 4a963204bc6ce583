-- Categories (issue 26): a notification may say what kind of message it is (`category`; none:
-- transactional), and a suppression may block one category only. `suppressions.category` is ''
-- for a suppression of every category (all of them until now), so that it can be part of the
-- primary key: a recipient may be suppressed for everything and for some categories besides.
ALTER TABLE notifications ADD COLUMN category text;
ALTER TABLE suppressions ADD COLUMN category text NOT NULL DEFAULT '';
ALTER TABLE suppressions DROP CONSTRAINT suppressions_pkey;
ALTER TABLE suppressions ADD PRIMARY KEY (tenant_id, channel, recipient, category);

-- Lists by category: a tenant's newest first, as lists read.
CREATE INDEX notifications_tenant_category ON notifications (tenant_id, category, id DESC)
    WHERE category IS NOT NULL;

-- herald_ingest (migration 0015) with a 23rd parameter, each notification's category, and
-- category suppressions honoured. A second function by its argument list: replicas still
-- running the build before this one keep calling the first until they are replaced.
CREATE FUNCTION herald_ingest(
    uuid[], uuid[], text[], jsonb[], text[], jsonb[], text[], text[], jsonb[], jsonb[], text[],
    timestamptz[], timestamptz[], timestamptz[], smallint[], int[], text, bool, text[], text[],
    jsonb[], int[], text[]
) RETURNS TABLE (id uuid, status text, reason text, woke bigint)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::text[], $6::jsonb[],
                             $7::text[], $8::text[], $9::jsonb[], $10::jsonb[], $11::text[],
                             $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::smallint[],
                             $16::int[], $20::text[], $21::jsonb[], $22::int[], $23::text[])
            AS i(id, tenant_id, channel, recipient, recipient_key, content, status, priority, tags,
                 metadata, callback_url, send_at, expires_at, created_at, lane, max_attempts, traceparent,
                 template, size_bytes, category)
    ), sup AS MATERIALIZED (
        -- One suppression per notification: one of every category first, else its category's.
        SELECT DISTINCT ON (i.id) i.id, s.reason FROM input i
        JOIN suppressions s ON s.tenant_id = i.tenant_id AND s.channel = i.channel
                           AND s.recipient = i.recipient_key
                           AND (s.category = '' OR s.category = i.category)
        ORDER BY i.id, s.category
    ), n AS (
        INSERT INTO notifications (id, tenant_id, channel, recipient, recipient_key, content, status,
                                   priority, tags, metadata, callback_url, send_at, expires_at,
                                   created_at, updated_at, traceparent, template, size_bytes, category)
        SELECT i.id, i.tenant_id, i.channel, i.recipient, i.recipient_key, i.content,
               CASE WHEN sup.id IS NULL THEN i.status ELSE 'suppressed' END, i.priority,
               CASE WHEN i.tags = '[]' THEN '{}'::text[]
                    ELSE ARRAY(SELECT jsonb_array_elements_text(i.tags)) END,
               i.metadata, i.callback_url, i.send_at, i.expires_at, i.created_at, i.created_at,
               i.traceparent, i.template, i.size_bytes, i.category
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
