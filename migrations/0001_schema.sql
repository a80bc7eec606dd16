-- The whole CLS schema: every module's tables live in one database (SPEC §4), each module writes
-- only its own tables. Constraints here make illegal states unrepresentable; the application
-- checks the same rules first to answer with precise problem codes, and these constraints are the
-- last line when two replicas race.

-- ---------------------------------------------------------------------------------------------
-- brands module
-- ---------------------------------------------------------------------------------------------

CREATE TABLE brands (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL CHECK (slug ~ '^[a-z0-9-]{2,40}$'),
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    key_prefix  text NOT NULL CHECK (key_prefix ~ '^[A-Z0-9]{2,8}$'),
    created_at  timestamptz NOT NULL,
    CONSTRAINT brands_slug_key UNIQUE (slug),
    CONSTRAINT brands_key_prefix_key UNIQUE (key_prefix)
);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    brand_id        uuid NOT NULL REFERENCES brands (id),
    name            text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    -- SHA-256 (hex) of the secret; the secret itself is never stored.
    key_hash        text NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    display_prefix  text NOT NULL CHECK (char_length(display_prefix) BETWEEN 1 AND 8),
    scopes          text[] NOT NULL CHECK (
                        cardinality(scopes) >= 1
                        AND scopes <@ ARRAY['licenses:read', 'licenses:write', 'ecosystem:read']
                    ),
    created_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    -- +1 on every change (revocation), so read-model writes can compare-and-set.
    version         bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash),
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);
CREATE INDEX api_keys_by_brand ON api_keys (brand_id, id);

CREATE TABLE products (
    id                     uuid PRIMARY KEY,
    brand_id               uuid NOT NULL REFERENCES brands (id),
    code                   text NOT NULL CHECK (code ~ '^[a-z0-9-]{1,64}$'),
    name                   text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    -- NULL = unlimited seats.
    default_seat_limit     integer CHECK (default_seat_limit >= 1),
    -- NULL = perpetual.
    default_duration_days  integer CHECK (default_duration_days >= 1),
    created_at             timestamptz NOT NULL,
    CONSTRAINT products_brand_code_key UNIQUE (brand_id, code),
    -- Lets licenses reference (product, brand) so a license can never point at another brand's product.
    CONSTRAINT products_id_brand_key UNIQUE (id, brand_id)
);
CREATE INDEX products_by_brand ON products (brand_id, id);

-- ---------------------------------------------------------------------------------------------
-- licenses module
-- ---------------------------------------------------------------------------------------------

CREATE TABLE license_keys (
    id              uuid PRIMARY KEY,
    brand_id        uuid NOT NULL REFERENCES brands (id),
    -- Normalized (trimmed, lower-cased) by the domain before it gets here.
    customer_email  text NOT NULL CHECK (
                        customer_email = lower(customer_email)
                        AND char_length(customer_email) BETWEEN 3 AND 254
                        AND customer_email LIKE '%_@_%.%'
                    ),
    -- SHA-256 (hex) of the normalized key; globally unique across brands.
    key_hash        text NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    key_hint        text NOT NULL,
    imported        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    CONSTRAINT license_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT license_keys_id_brand_key UNIQUE (id, brand_id)
);
-- "the brand's most recent key for that email" and the per-brand email listing.
CREATE INDEX license_keys_by_brand_email ON license_keys (brand_id, customer_email, created_at DESC);
-- US6: every key of an email across all brands.
CREATE INDEX license_keys_by_email ON license_keys (customer_email);

CREATE TABLE licenses (
    id              uuid PRIMARY KEY,
    brand_id        uuid NOT NULL,
    license_key_id  uuid NOT NULL,
    product_id      uuid NOT NULL,
    status          text NOT NULL CHECK (status IN ('valid', 'suspended', 'cancelled', 'expired')),
    -- NULL = perpetual.
    expires_at      timestamptz,
    -- NULL = unlimited seats.
    seat_limit      integer CHECK (seat_limit >= 1),
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    -- +1 on every change of the license or of its activations (SPEC §2).
    version         bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    -- A key never holds licenses of two brands, and a license never grants another brand's product.
    FOREIGN KEY (license_key_id, brand_id) REFERENCES license_keys (id, brand_id),
    FOREIGN KEY (product_id, brand_id) REFERENCES products (id, brand_id),
    CHECK (updated_at >= created_at)
);
-- A key holds at most one non-cancelled license per product.
CREATE UNIQUE INDEX licenses_one_live_per_product ON licenses (license_key_id, product_id)
    WHERE status <> 'cancelled';
CREATE INDEX licenses_by_brand ON licenses (brand_id, id);
CREATE INDEX licenses_by_key ON licenses (license_key_id);
-- The expiry sweeper's scan.
CREATE INDEX licenses_due ON licenses (expires_at) WHERE status = 'valid' AND expires_at IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- activations module
-- ---------------------------------------------------------------------------------------------

CREATE TABLE activations (
    id              uuid PRIMARY KEY,
    license_id      uuid NOT NULL REFERENCES licenses (id),
    -- Normalized by the domain (trimmed; URLs canonicalized).
    instance_id     text NOT NULL CHECK (char_length(instance_id) BETWEEN 1 AND 255),
    instance_name   text CHECK (instance_name IS NULL OR char_length(instance_name) <= 255),
    metadata        jsonb CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object'),
    activated_at    timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,
    -- NULL while the activation holds a seat.
    deactivated_at  timestamptz,
    deactivated_by  text CHECK (deactivated_by IN ('product', 'brand', 'license_cancelled')),
    CHECK (last_seen_at >= activated_at),
    CHECK (deactivated_at IS NULL OR deactivated_at >= activated_at),
    CHECK ((deactivated_at IS NULL) = (deactivated_by IS NULL))
);
-- An instance is active at most once per license.
CREATE UNIQUE INDEX activations_one_active_per_instance ON activations (license_id, instance_id)
    WHERE deactivated_at IS NULL;
-- The seat count.
CREATE INDEX activations_active_by_license ON activations (license_id) WHERE deactivated_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- audit: one row per applied change, written in the change's transaction, never edited
-- ---------------------------------------------------------------------------------------------

CREATE TABLE audit_entries (
    id            uuid PRIMARY KEY,
    brand_id      uuid REFERENCES brands (id),
    actor_kind    text NOT NULL CHECK (actor_kind IN ('api_key', 'admin', 'license_key', 'system')),
    -- The API key id, or the system actor's name (e.g. 'expiry-sweeper'); NULL for admin / license key.
    actor_id      text,
    action        text NOT NULL,
    target_type   text NOT NULL,
    target_id     uuid NOT NULL,
    request_id    text,
    command_id    uuid,
    status_before text,
    status_after  text,
    reason        text,
    at            timestamptz NOT NULL
);
CREATE INDEX audit_entries_by_target ON audit_entries (target_id, id DESC);

CREATE FUNCTION audit_entries_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are never edited';
END $$;
CREATE TRIGGER audit_entries_immutable BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_immutable();

-- ---------------------------------------------------------------------------------------------
-- messaging: the command inbox, the event outbox, the event-consumer inbox
-- ---------------------------------------------------------------------------------------------

-- One row per command a worker has taken on; the row is inserted first in the command's
-- transaction, so a concurrent duplicate delivery waits on it and then reads the stored outcome.
CREATE TABLE inbox (
    command_id        uuid PRIMARY KEY,
    module            text NOT NULL CHECK (module IN ('brands', 'licenses', 'activations')),
    command_type      text NOT NULL,
    -- Who may read the operation: 'admin', 'brand:<uuid>' or 'license_key:<hash>'.
    principal         text NOT NULL,
    -- SHA-256 of the request (method, path, normalized body): same key + other body = 422.
    request_hash      text NOT NULL,
    request_id        text,
    state             text NOT NULL CHECK (state IN ('processing', 'succeeded', 'failed')),
    response_status   smallint CHECK (response_status BETWEEN 100 AND 599),
    -- The response body (JSON), sealed with CLS_SECRET_KEY when it holds a secret.
    response_body     bytea,
    response_sealed   boolean NOT NULL DEFAULT false,
    failure           text,
    received_at       timestamptz NOT NULL,
    completed_at      timestamptz,
    CHECK (state <> 'succeeded' OR (response_status IS NOT NULL AND response_body IS NOT NULL))
);
-- Retention purge.
CREATE INDEX inbox_by_completed_at ON inbox (completed_at);

CREATE TABLE outbox (
    id                 bigserial PRIMARY KEY,
    event_id           uuid NOT NULL,
    event_type         text NOT NULL,
    aggregate_id       uuid NOT NULL,
    aggregate_version  bigint NOT NULL,
    -- The whole MessagePack event envelope, exactly as it is published.
    payload            bytea NOT NULL,
    correlation_id     text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    published_at       timestamptz,
    attempts           integer NOT NULL DEFAULT 0,
    last_error         text,
    CONSTRAINT outbox_event_id_key UNIQUE (event_id)
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_by_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wakes the relays at commit; one notification per statement, the payload is empty (relays read the table).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cls_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Event consumers (e.g. the activations module reacting to license.cancelled) record what they handled.
CREATE TABLE processed_events (
    consumer      text NOT NULL,
    event_id      uuid NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
