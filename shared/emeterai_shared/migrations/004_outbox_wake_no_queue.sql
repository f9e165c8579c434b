-- A writer never queues behind a relay on its way out. With 003, a writer that met a busy relay
-- asked for "skipped" (shared) and waited: while the relay waited in outbox_relay_rest() for
-- "skipped" exclusively (for a writer's transaction still open, a consumer's batch say), every new
-- writer's shared request queued behind the relay's exclusive one, so all writers stood still until
-- that one transaction ended (and one that waited for a writer behind it never ended).
-- Now the writer only tries: if "skipped" is not free for it, the relay is on its way out (waiting
-- for it or holding it), and the writer notifies instead, which wakes the relay once it rests.
-- Either the writer holds "skipped" (the relay's rest waits for its commit, then sees its row), or
-- it sends a NOTIFY (delivered at its commit: the relay, listening all along, wakes), as before.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF outbox_relay_idle() THEN
        PERFORM pg_notify('outbox', '');
        RETURN NULL;
    END IF;
    IF NOT pg_try_advisory_xact_lock_shared(1869903970, 2) THEN  -- the relay is on its way out
        PERFORM pg_notify('outbox', '');
        RETURN NULL;
    END IF;
    IF outbox_relay_idle() THEN  -- the relay left between the two looks
        PERFORM pg_notify('outbox', '');
    END IF;
    RETURN NULL;
END $$;
