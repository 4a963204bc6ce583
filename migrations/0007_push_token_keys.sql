-- One recipient key everywhere (issue 10): APNs device tokens (hex) are compared in lower
-- case. Notifications always stored them so; suppressions added through the API kept the case
-- they were given in, and so never matched. Lower-case them, keeping one row where both forms
-- exist.
DELETE FROM suppressions s
WHERE s.channel = 'push' AND s.recipient ~ '^[0-9A-Fa-f]{64,}$' AND s.recipient <> lower(s.recipient)
  AND EXISTS (SELECT 1 FROM suppressions d
              WHERE d.tenant_id = s.tenant_id AND d.channel = 'push' AND d.recipient = lower(s.recipient));
UPDATE suppressions SET recipient = lower(recipient)
WHERE channel = 'push' AND recipient ~ '^[0-9A-Fa-f]{64,}$' AND recipient <> lower(recipient);
