-- The ephemeral API key behind a JWT identity (gateway-design.md §0): one per (license,
-- user_id, salt), so a token with a new `salt` gives the same user a new key on the same
-- license. `identity` encodes the pair unambiguously (an absent user_id is not an empty one);
-- `user_id` and `salt` repeat it in plain form for operators.
CREATE TABLE jwt_ephemeral_keys (
    license_id  TEXT NOT NULL REFERENCES licenses(id),
    identity    TEXT NOT NULL,
    user_id     TEXT,
    salt        TEXT,
    api_key_id  TEXT NOT NULL REFERENCES api_keys(id),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (license_id, identity)
);
