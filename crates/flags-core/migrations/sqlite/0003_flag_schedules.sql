-- SQLite twin of migrations/postgres/0003: same table, constraints and indexes. No foreign key
-- on purpose (see the PostgreSQL file): the flag's delete removes its schedules itself.
CREATE TABLE flag_schedules (
    id            BLOB PRIMARY KEY NOT NULL,
    flag_id       BLOB    NOT NULL,
    environment   TEXT    NOT NULL CHECK (length(environment) BETWEEN 1 AND 20),
    flag_key      TEXT    NOT NULL CHECK (length(flag_key) BETWEEN 1 AND 100),
    scheduled_at  TEXT    NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'applied', 'failed', 'cancelled')),
    updates       TEXT    NOT NULL,
    retry_count   INTEGER NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    max_retries   INTEGER NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    next_retry_at TEXT,
    last_error    TEXT,
    applied_at    TEXT,
    created_by    TEXT,
    created_at    TEXT    NOT NULL,
    cancelled_by  TEXT,
    cancelled_at  TEXT
);

CREATE INDEX flag_schedules_flag_idx ON flag_schedules (flag_id, scheduled_at);
CREATE INDEX flag_schedules_due_idx ON flag_schedules (COALESCE(next_retry_at, scheduled_at))
    WHERE status = 'pending';
