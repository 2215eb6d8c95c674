-- SQLite twin of migrations/postgres/0002. AUTOINCREMENT: an id is never handed out twice, so a
-- writer clearing its own pending invalidation can never clear a newer writer's record.
CREATE TABLE flag_audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    action      TEXT NOT NULL CHECK (length(action) <= 32),
    environment TEXT CHECK (length(environment) <= 20),
    flag_key    TEXT CHECK (length(flag_key) <= 100),
    actor_sub   TEXT,
    actor_email TEXT,
    before      TEXT,
    after       TEXT
);

CREATE INDEX flag_audit_log_environment_idx ON flag_audit_log (environment, id DESC);
CREATE INDEX flag_audit_log_flag_action_at_idx ON flag_audit_log (environment, flag_key, action, at);

CREATE TABLE pending_invalidations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    environment TEXT NOT NULL CHECK (length(environment) BETWEEN 1 AND 20),
    created_at  TEXT NOT NULL
);
