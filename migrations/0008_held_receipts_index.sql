-- Recording a send reads the receipts that may be waiting for it (`tracking::receipt`): the
-- held ones by this index, which holds only them (normally none), and the recent unmatched
-- ones by `receipts_unmatched_idx`.
CREATE INDEX receipts_held_idx ON receipts (notification_id) WHERE held;
