-- Flags and per-user overrides. Migrations are never edited once applied: add a new file.
CREATE TABLE feature_flags (
    id                 uuid PRIMARY KEY,
    flag_key           varchar(100) NOT NULL,
    environment        varchar(20)  NOT NULL,
    enabled            boolean      NOT NULL DEFAULT false,
    rollout_percentage integer      NOT NULL DEFAULT 0
        CHECK (rollout_percentage BETWEEN 0 AND 100),
    description        text CHECK (char_length(description) <= 500),
    created_at         timestamptz  NOT NULL DEFAULT now(),
    updated_at         timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT feature_flags_flag_key_environment_key UNIQUE (flag_key, environment)
);

CREATE TABLE feature_flag_user_overrides (
    id            uuid PRIMARY KEY,
    flag_id       uuid         NOT NULL REFERENCES feature_flags (id) ON DELETE CASCADE,
    user_id       varchar(255) NOT NULL,
    override_type varchar(7)   NOT NULL CHECK (override_type IN ('include', 'exclude')),
    reason        text CHECK (char_length(reason) <= 500),
    created_by    text,
    created_at    timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT feature_flag_user_overrides_flag_id_user_id_key UNIQUE (flag_id, user_id)
);

-- A flag's overrides page (newest first) and one user's overrides across flags.
CREATE INDEX feature_flag_user_overrides_flag_created_idx
    ON feature_flag_user_overrides (flag_id, created_at DESC);
CREATE INDEX feature_flag_user_overrides_user_idx
    ON feature_flag_user_overrides (user_id);
