-- The Redis read model (SPEC §4) is written by compare-and-set on a version. A license key's
-- read-model documents (the key by hash, each of its licenses by id) are versioned together by
-- `license_keys.rm_version`, drawn from one global sequence whenever the key, one of its licenses
-- or one of their activations changes. Drawing from a global sequence (not +1) keeps versions
-- comparable across keys: a key hash that was retired and is later imported again starts above
-- the tombstone it left.
CREATE SEQUENCE read_model_version AS bigint;

ALTER TABLE license_keys ADD COLUMN rm_version bigint NOT NULL DEFAULT 0 CHECK (rm_version >= 0);

-- Hashes a key had before a rotation: the read model keeps a tombstone for each (the old key
-- must answer LICENSE_KEY_NOT_FOUND at once, and no late write may bring it back).
CREATE TABLE retired_key_hashes (
    key_hash        text PRIMARY KEY CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    license_key_id  uuid NOT NULL REFERENCES license_keys (id),
    rm_version      bigint NOT NULL,
    retired_at      timestamptz NOT NULL
);
CREATE INDEX retired_key_hashes_by_key ON retired_key_hashes (license_key_id);

-- What a command made visible in the read model: `key:<license_key_id>:<rm_version>` or
-- `api_key:<api_key_id>:<version>`. A worker writes these through the read model before it
-- answers 2xx; if it cannot, it answers 202 and the operation reads `pending` until they are.
ALTER TABLE inbox ADD COLUMN read_model_targets text[] NOT NULL DEFAULT '{}';
