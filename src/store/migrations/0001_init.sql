-- Ids are UUID strings; timestamps are RFC 3339 UTC strings; money is integer micro-credits;
-- prices are integers in units of 1e-9 micro-credit per token (see ledger/price.rs).

CREATE TABLE institutions (
    id          TEXT PRIMARY KEY,
    alias       TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE institution_public_keys (
    id              TEXT PRIMARY KEY,
    institution_id  TEXT NOT NULL REFERENCES institutions(id),
    kid             TEXT,
    public_key      BLOB NOT NULL,          -- raw 32-byte Ed25519 key
    active          INTEGER NOT NULL DEFAULT 1,
    created_at      TEXT NOT NULL
);
CREATE INDEX institution_public_keys_by_institution ON institution_public_keys(institution_id);

CREATE TABLE license_types (
    id                     TEXT PRIMARY KEY,
    institution_id         TEXT NOT NULL REFERENCES institutions(id),
    alias                  TEXT NOT NULL UNIQUE,
    name                   TEXT NOT NULL,
    default_micro_credits  INTEGER CHECK (default_micro_credits IS NULL OR default_micro_credits >= 0),
    created_at             TEXT NOT NULL
);

CREATE TABLE models (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    kind                TEXT NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat', 'embedding')),
    context_window      INTEGER,
    max_output_tokens   INTEGER,
    input_price         INTEGER NOT NULL CHECK (input_price >= 0),
    output_price        INTEGER NOT NULL CHECK (output_price >= 0),
    active              INTEGER NOT NULL DEFAULT 1,
    input_modality      TEXT NOT NULL,      -- JSON {text, image, audio, video}
    output_modality     TEXT NOT NULL,
    description         TEXT,
    model_author        TEXT,
    supported_features  TEXT NOT NULL DEFAULT '[]',
    updated_at          TEXT NOT NULL
);

CREATE TABLE model_routes (
    model_id        TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    provider        TEXT NOT NULL,
    upstream_model  TEXT NOT NULL,
    PRIMARY KEY (model_id, position)
);

CREATE TABLE model_prices (
    license_type_id  TEXT NOT NULL REFERENCES license_types(id),
    model_id         TEXT NOT NULL REFERENCES models(id),
    input_price      INTEGER NOT NULL CHECK (input_price >= 0),
    output_price     INTEGER NOT NULL CHECK (output_price >= 0),
    PRIMARY KEY (license_type_id, model_id)
);

CREATE TABLE tool_prices (
    license_type_id  TEXT NOT NULL REFERENCES license_types(id),
    tool             TEXT NOT NULL CHECK (tool IN ('web-search', 'fetch')),
    micro_credits    INTEGER NOT NULL CHECK (micro_credits >= 0),
    PRIMARY KEY (license_type_id, tool)
);

CREATE TABLE licenses (
    id                       TEXT PRIMARY KEY,
    institution_id           TEXT NOT NULL REFERENCES institutions(id),
    license_type_id          TEXT NOT NULL REFERENCES license_types(id),
    unique_id                TEXT,
    user_id                  TEXT,
    available_micro_credits  INTEGER CHECK (available_micro_credits IS NULL OR available_micro_credits >= 0),
    used_micro_credits       INTEGER NOT NULL DEFAULT 0,
    active                   INTEGER NOT NULL DEFAULT 1,
    created_at               TEXT NOT NULL
);
CREATE INDEX licenses_by_owner ON licenses(institution_id, license_type_id, unique_id);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    license_id    TEXT NOT NULL REFERENCES licenses(id),
    key_hash      BLOB NOT NULL UNIQUE,     -- SHA-256 of the whole key
    prefix        TEXT NOT NULL,            -- first characters, to tell keys apart in lists
    name          TEXT,
    active        INTEGER NOT NULL DEFAULT 1,
    expires_at    TEXT,
    ephemeral     INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT
);
CREATE INDEX api_keys_by_license ON api_keys(license_id);

CREATE TABLE jwt_identities (
    institution_id   TEXT NOT NULL REFERENCES institutions(id),
    license_type_id  TEXT NOT NULL REFERENCES license_types(id),
    identity         TEXT NOT NULL,         -- unique_id, else user_id, else SHA-256 of the token
    license_id       TEXT NOT NULL REFERENCES licenses(id),
    created_at       TEXT NOT NULL,
    PRIMARY KEY (institution_id, license_type_id, identity)
);

CREATE TABLE usage (
    id                 INTEGER PRIMARY KEY,
    request_id         TEXT NOT NULL UNIQUE,
    license_id         TEXT NOT NULL REFERENCES licenses(id),
    api_key_id         TEXT,
    created_at         TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    model              TEXT,
    provider           TEXT,
    stream             INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    micro_credits      INTEGER NOT NULL,
    status             TEXT NOT NULL
);
CREATE INDEX usage_by_license ON usage(license_id, id);

-- Append-only: a license's balance always equals the sum of its entries.
CREATE TABLE ledger_entries (
    id             INTEGER PRIMARY KEY,
    license_id     TEXT NOT NULL REFERENCES licenses(id),
    created_at     TEXT NOT NULL,
    micro_credits  INTEGER NOT NULL,        -- positive = grant, negative = debit
    kind           TEXT NOT NULL CHECK (kind IN ('grant', 'debit', 'adjustment')),
    request_id     TEXT,
    note           TEXT
);
CREATE INDEX ledger_entries_by_license ON ledger_entries(license_id);
CREATE TRIGGER ledger_entries_append_only_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TRIGGER ledger_entries_append_only_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
