-- A relay never waits on its way out. With 003 and 004, outbox_relay_rest() waited for "skipped"
-- exclusively, that is for every writer's transaction that had skipped its NOTIFY, however long it
-- stayed open: a transaction held open (a slow request, a consumer batch waiting on a row lock, a
-- session left in a transaction) stopped the relay, and the rows other writers committed meanwhile
-- waited with it (CI saw a held transaction stall the relay for 15 s).
-- Now the relay only tries. When writers that skipped are still open it stays busy and returns
-- NULL: it relays what commits meanwhile and tries again shortly, so it never sleeps while a
-- skipped row may still commit (no wake-up is lost) and never stands still behind one.
CREATE OR REPLACE FUNCTION outbox_relay_rest() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_lock(1869903970, 2) THEN
        RETURN NULL;  -- a writer that skipped its NOTIFY is still open: still busy
    END IF;
    PERFORM pg_advisory_unlock(1869903970, 1);
    PERFORM pg_advisory_unlock(1869903970, 2);
    RETURN EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL);
END $$;
