-- The outbox relays are woken in-process by the consumers that commit the events
-- (cls_worker::relay), with a one-second poll for the rest. The trigger's NOTIFY woke the relay
-- of every worker process on every commit: three claim transactions per write, two of which
-- found nothing, and a notification queue entry per statement.
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
