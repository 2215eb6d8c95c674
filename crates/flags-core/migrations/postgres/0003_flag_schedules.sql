-- Scheduled flag changes (contract §2.6). A schedule belongs to one flag and is deleted with it
-- by the flag's delete transaction. There is deliberately no foreign key: a flag removed by
-- anything else (another service sharing this database during a migration) must fail its
-- schedules visibly, with an error message, instead of making them vanish.
CREATE TABLE flag_schedules (
    id            uuid PRIMARY KEY,
    flag_id       uuid         NOT NULL,
    environment   varchar(20)  NOT NULL,
    flag_key      varchar(100) NOT NULL,
    scheduled_at  timestamptz  NOT NULL,
    status        varchar(16)  NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'applied', 'failed', 'cancelled')),
    -- {"enabled"?, "rolloutPercentage"?}, at least one of them.
    updates       text         NOT NULL,
    retry_count   integer      NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    max_retries   integer      NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    next_retry_at timestamptz,
    last_error    text,
    applied_at    timestamptz,
    created_by    text,
    created_at    timestamptz  NOT NULL,
    cancelled_by  text,
    cancelled_at  timestamptz
);

-- A flag's schedules by time (the admin listing, the flag's delete).
CREATE INDEX flag_schedules_flag_idx ON flag_schedules (flag_id, scheduled_at);
-- The applier's claim: only pending rows, by the time they are due.
CREATE INDEX flag_schedules_due_idx ON flag_schedules (COALESCE(next_retry_at, scheduled_at))
    WHERE status = 'pending';
