-- A writer skips its NOTIFY while a relay is in the middle of its work (it will look again before
-- it sleeps): a NOTIFY makes every commit that sends one wait for a lock held across the commit of
-- every other (PostgreSQL's notification queue keeps commit order), and wakes the relay for
-- nothing it would not do anyway.
--
-- Advisory locks (two-int keys, apart from the services' bigint ones):
--   (1869903970, 1) "busy": a relay holds it, session-level and exclusive, while it relays;
--   (1869903970, 2) "skipped": a writer that skips its NOTIFY holds it, shared, until it commits.
-- A relay that stops being busy takes "skipped" exclusively before it lets "busy" go, so it has
-- waited for every writer that skipped, and then looks for pending rows (outbox_relay_rest); a
-- writer that meets a relay on its way out waits for it on "skipped", then finds no relay busy
-- and notifies. No wake-up is lost, and a relay that dies lets its locks go with its connection.

-- True when no relay is busy: "busy" is free (probed, not kept).
CREATE FUNCTION outbox_relay_idle() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF pg_try_advisory_lock_shared(1869903970, 1) THEN
        PERFORM pg_advisory_unlock_shared(1869903970, 1);
        RETURN true;
    END IF;
    RETURN false;
END $$;

CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF outbox_relay_idle() THEN
        PERFORM pg_notify('outbox', '');
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1869903970, 2);
    IF outbox_relay_idle() THEN  -- the relay left while this waited for it
        PERFORM pg_notify('outbox', '');
    END IF;
    RETURN NULL;
END $$;

-- The busy relay's way out, on the connection that holds "busy": wait for the writers that
-- skipped their NOTIFY, let "busy" go, and say whether rows are pending (read after the wait:
-- a VOLATILE function's query takes a snapshot of its own).
CREATE FUNCTION outbox_relay_rest() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_lock(1869903970, 2);
    PERFORM pg_advisory_unlock(1869903970, 1);
    PERFORM pg_advisory_unlock(1869903970, 2);
    RETURN EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL);
END $$;
