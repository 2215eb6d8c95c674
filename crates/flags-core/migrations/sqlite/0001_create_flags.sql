-- SQLite twin of migrations/postgres/0001: same tables, constraints and indexes.
-- Timestamps are RFC 3339 text in UTC (sqlx's chrono encoding), which sorts chronologically.
CREATE TABLE feature_flags (
    id                 BLOB PRIMARY KEY NOT NULL,
    flag_key           TEXT    NOT NULL CHECK (length(flag_key) BETWEEN 1 AND 100),
    environment        TEXT    NOT NULL CHECK (length(environment) BETWEEN 1 AND 20),
    enabled            INTEGER NOT NULL DEFAULT 0 CHECK (enabled IN (0, 1)),
    rollout_percentage INTEGER NOT NULL DEFAULT 0
        CHECK (rollout_percentage BETWEEN 0 AND 100),
    description        TEXT CHECK (length(description) <= 500),
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    CONSTRAINT feature_flags_flag_key_environment_key UNIQUE (flag_key, environment)
);

CREATE TABLE feature_flag_user_overrides (
    id            BLOB PRIMARY KEY NOT NULL,
    flag_id       BLOB NOT NULL REFERENCES feature_flags (id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL CHECK (length(user_id) BETWEEN 1 AND 255),
    override_type TEXT NOT NULL CHECK (override_type IN ('include', 'exclude')),
    reason        TEXT CHECK (length(reason) <= 500),
    created_by    TEXT,
    created_at    TEXT NOT NULL,
    CONSTRAINT feature_flag_user_overrides_flag_id_user_id_key UNIQUE (flag_id, user_id)
);

CREATE INDEX feature_flag_user_overrides_flag_created_idx
    ON feature_flag_user_overrides (flag_id, created_at DESC);
CREATE INDEX feature_flag_user_overrides_user_idx
    ON feature_flag_user_overrides (user_id);
