-- What the read model had to reflect for an event's transaction to be visible: the command's
-- read-model targets (`key:<id>:<version>`, `api_key:<id>:<version>`, comma-separated), written
-- with its events. The relay passes them on as a header, and the projector skips its Postgres
-- version check for an event whose targets Redis already holds (the worker wrote them before it
-- replied). NULL: not known (events of reactions and sweeps), so the projector checks Postgres.
ALTER TABLE outbox ADD COLUMN read_model_targets text;
