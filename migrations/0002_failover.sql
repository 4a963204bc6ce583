-- Failover: which provider of the channel's list the next attempt starts from. A transient
-- failure moves it to the next provider; the dispatcher then skips providers whose circuit is
-- open. Kept on the job (not the notification) because it only matters while work is live.
ALTER TABLE jobs ADD COLUMN route_index integer NOT NULL DEFAULT 0;
