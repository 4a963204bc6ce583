-- A send job whose notification took its slot in the send limits' windows (issue 15): set in
-- the transaction that counts it, so a job put back, deferred by pacing, or rescued after its
-- worker died is never counted twice, nor sent uncounted. A column with a constant default is
-- added without rewriting the table.
ALTER TABLE jobs ADD COLUMN slot_taken boolean NOT NULL DEFAULT false;
