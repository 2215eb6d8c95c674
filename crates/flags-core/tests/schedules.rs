//! Schedules (contract §2.6) on real PostgreSQL and SQLite: create, list, cancel; the applier's
//! claim-and-apply transaction; retries at computed times (asserted, never slept); and two
//! appliers racing over the same due schedules on PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::bool_assert_comparison
)]
mod common;

use chrono::TimeDelta;
use common::service::service_with_memory;
use common::{key, new_flag, postgres_schema_url, postgres_store, sqlite_store, unique_env};
use flags_core::domain::{
    Actor, ApplyOutcome, AuditFilter, Environment, Flag, NewSchedule, Rollout, Schedule,
    ScheduleStatus, ScheduleUpdates, Timestamp,
};
use flags_core::store::{FlagStore, PostgresStore, ScheduleClaim, StoreError};
use serde_json::{Value, json};
use sqlx::{PgPool, SqlitePool};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// A store and a raw connection to the same database, for what no route does: breaking flag
/// updates with a trigger, or removing a flag behind the service's back.
struct Backend {
    store: Arc<dyn FlagStore>,
    raw: Raw,
}

enum Raw {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

async fn postgres() -> Backend {
    let store = postgres_store().await;
    Backend {
        raw: Raw::Postgres(store.pool().clone()),
        store,
    }
}

async fn sqlite() -> Backend {
    let store = sqlite_store().await;
    Backend {
        raw: Raw::Sqlite(store.pool().clone()),
        store,
    }
}

impl Backend {
    /// Every flag update fails with "forced failure" until [`Self::heal_flag_updates`].
    async fn break_flag_updates(&self) {
        match &self.raw {
            Raw::Postgres(pool) => {
                sqlx::raw_sql(
                    "CREATE FUNCTION forced_failure() RETURNS trigger LANGUAGE plpgsql AS \
                       $$ BEGIN RAISE EXCEPTION 'forced failure'; END $$; \
                     CREATE TRIGGER forced_failure BEFORE UPDATE ON feature_flags \
                       FOR EACH ROW EXECUTE FUNCTION forced_failure();",
                )
                .execute(pool)
                .await
                .unwrap();
            }
            Raw::Sqlite(pool) => {
                sqlx::raw_sql(
                    "CREATE TRIGGER forced_failure BEFORE UPDATE ON feature_flags \
                     BEGIN SELECT RAISE(ABORT, 'forced failure'); END;",
                )
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    async fn heal_flag_updates(&self) {
        match &self.raw {
            Raw::Postgres(pool) => {
                sqlx::raw_sql("DROP TRIGGER forced_failure ON feature_flags")
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Raw::Sqlite(pool) => {
                sqlx::raw_sql("DROP TRIGGER forced_failure")
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    }

    /// Removes the flag row only, as another service sharing the database would.
    async fn remove_flag_row(&self, id: Uuid) {
        let sql = "DELETE FROM feature_flags WHERE id = $1";
        match &self.raw {
            Raw::Postgres(pool) => {
                sqlx::query(sql).bind(id).execute(pool).await.unwrap();
            }
            Raw::Sqlite(pool) => {
                sqlx::query(sql).bind(id).execute(pool).await.unwrap();
            }
        }
    }

    async fn flag(&self, env: &Environment, name: &str) -> Flag {
        self.store.get_flag(env, &key(name)).await.unwrap().unwrap()
    }

    async fn create_flag(&self, env: &Environment, name: &str) -> Flag {
        self.store
            .create_flag(env, &new_flag(name, false, 0), None)
            .await
            .unwrap()
            .value
    }

    async fn schedule(
        &self,
        env: &Environment,
        name: &str,
        at: Timestamp,
        updates: ScheduleUpdates,
        actor: Option<&Actor>,
    ) -> Schedule {
        self.store
            .create_schedule(env, &key(name), &new_schedule(at, updates, 3), actor)
            .await
            .unwrap()
    }

    /// The audit actions of an environment, oldest first.
    async fn audit_actions(&self, env: &Environment) -> Vec<String> {
        let filter = AuditFilter {
            environment: Some(env.as_str().to_owned()),
            flag_key: None,
        };
        let page = self.store.list_audit(&filter, 500, 0).await.unwrap();
        page.entries.into_iter().rev().map(|e| e.action).collect()
    }

    /// One applier step at `now` with a fixed 7 s jitter.
    async fn apply_at(&self, now: Timestamp) -> ScheduleClaim {
        self.store
            .apply_next_schedule(now, JITTER, &[])
            .await
            .unwrap()
    }
}

const JITTER: TimeDelta = TimeDelta::seconds(7);

fn new_schedule(at: Timestamp, updates: ScheduleUpdates, max_retries: u32) -> NewSchedule {
    NewSchedule {
        scheduled_at: at,
        updates,
        max_retries,
    }
}

fn rollout(value: i64) -> ScheduleUpdates {
    ScheduleUpdates {
        enabled: None,
        rollout: Rollout::new(value),
    }
}

fn turn_on() -> ScheduleUpdates {
    ScheduleUpdates {
        enabled: Some(true),
        rollout: None,
    }
}

fn later(base: Timestamp, delta: TimeDelta) -> Timestamp {
    Timestamp::from_datetime(base.as_datetime() + delta)
}

fn actor(sub: &str) -> Actor {
    Actor {
        sub: sub.into(),
        email: Some(format!("{sub}@example.com")),
    }
}

fn outcome(claim: ScheduleClaim) -> ApplyOutcome {
    match claim {
        ScheduleClaim::Attempted { outcome, .. } => *outcome,
        other => panic!("expected an attempt, got {other:?}"),
    }
}

async fn schedules_are_created_listed_and_cancelled(b: Backend) {
    let (env, other) = (unique_env(), unique_env());
    b.create_flag(&env, "wishlist").await;
    b.create_flag(&other, "wishlist").await;
    let now = Timestamp::now();
    let alice = actor("alice");
    let late = b
        .schedule(
            &env,
            "wishlist",
            later(now, TimeDelta::hours(2)),
            rollout(50),
            Some(&alice),
        )
        .await;
    let early = b
        .schedule(
            &env,
            "wishlist",
            later(now, TimeDelta::hours(1)),
            turn_on(),
            Some(&alice),
        )
        .await;

    let listed = b
        .store
        .list_schedules(&env, &key("wishlist"))
        .await
        .unwrap();
    assert_eq!(listed, [early.clone(), late.clone()], "by scheduledAt");
    assert!(
        b.store
            .list_schedules(&other, &key("wishlist"))
            .await
            .unwrap()
            .is_empty()
    );
    let body = serde_json::to_value(&late).unwrap();
    assert_eq!(body["status"], "pending");
    assert_eq!(body["updates"], json!({"rolloutPercentage": 50}));
    assert_eq!(body["flagKey"], "wishlist");
    assert_eq!(body["createdBy"], "alice");
    assert_eq!(
        (&body["appliedAt"], &body["errorMessage"]),
        (&Value::Null, &Value::Null)
    );
    let fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "appliedAt",
            "createdAt",
            "createdBy",
            "errorMessage",
            "flagKey",
            "id",
            "scheduledAt",
            "status",
            "updates"
        ],
        "cancelledBy and cancelledAt are omitted while null"
    );

    let missing = key("no-such-flag");
    let cancel = |env: Environment, flag: flags_core::domain::FlagKey, id: Uuid, who: &str| {
        let store = b.store.clone();
        let who = actor(who);
        async move { store.cancel_schedule(&env, &flag, id, Some(&who)).await }
    };
    assert!(
        matches!(
            cancel(other.clone(), key("wishlist"), early.id, "bob").await,
            Err(StoreError::ScheduleNotFound)
        ),
        "another environment's flag"
    );
    assert!(matches!(
        cancel(env.clone(), missing.clone(), early.id, "bob").await,
        Err(StoreError::FlagNotFound)
    ));
    assert!(matches!(
        cancel(env.clone(), key("wishlist"), Uuid::new_v4(), "bob").await,
        Err(StoreError::ScheduleNotFound)
    ));
    let cancelled = cancel(env.clone(), key("wishlist"), early.id, "bob")
        .await
        .unwrap();
    assert_eq!(cancelled.status, ScheduleStatus::Cancelled);
    assert_eq!(cancelled.cancelled_by.as_deref(), Some("bob"));
    assert!(cancelled.cancelled_at.is_some());
    let again = cancel(env.clone(), key("wishlist"), early.id, "carol")
        .await
        .unwrap();
    assert_eq!(
        again, cancelled,
        "re-cancelling is allowed and changes nothing"
    );

    let nothing = new_schedule(later(now, TimeDelta::hours(1)), turn_on(), 3);
    assert!(matches!(
        b.store
            .create_schedule(&env, &missing, &nothing, None)
            .await,
        Err(StoreError::FlagNotFound)
    ));
    assert!(matches!(
        b.store.list_schedules(&env, &missing).await,
        Err(StoreError::FlagNotFound)
    ));
    assert_eq!(
        b.audit_actions(&env).await,
        [
            "flag.created",
            "schedule.created",
            "schedule.created",
            "schedule.cancelled"
        ]
    );

    // The cancelled one is never applied; the other is, once due.
    let applied = outcome(b.apply_at(later(now, TimeDelta::hours(3))).await);
    assert!(matches!(&applied, ApplyOutcome::Applied { schedule } if schedule.id == late.id));
    assert_eq!(
        b.apply_at(later(now, TimeDelta::hours(3))).await,
        ScheduleClaim::NothingDue
    );
    assert!(matches!(
        cancel(env.clone(), key("wishlist"), late.id, "bob").await,
        Err(StoreError::ScheduleNotCancellable)
    ));

    // Schedules are deleted with their flag, and only that flag's.
    b.store
        .delete_flag(&env, &key("wishlist"), None)
        .await
        .unwrap();
    b.create_flag(&env, "wishlist").await;
    assert!(
        b.store
            .list_schedules(&env, &key("wishlist"))
            .await
            .unwrap()
            .is_empty()
    );
    b.schedule(
        &other,
        "wishlist",
        later(now, TimeDelta::hours(1)),
        turn_on(),
        None,
    )
    .await;
    assert_eq!(
        b.store
            .list_schedules(&other, &key("wishlist"))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn a_due_schedule_is_applied_once_through_the_write_path(b: Backend) {
    let env = unique_env();
    b.create_flag(&env, "checkout").await;
    let due = later(Timestamp::now(), TimeDelta::minutes(1));
    let updates = ScheduleUpdates {
        enabled: Some(true),
        rollout: Rollout::new(50),
    };
    let schedule = b.schedule(&env, "checkout", due, updates, None).await;
    b.schedule(
        &env,
        "checkout",
        later(due, TimeDelta::minutes(10)),
        rollout(0),
        None,
    )
    .await;

    assert_eq!(
        b.apply_at(later(due, TimeDelta::milliseconds(-1))).await,
        ScheduleClaim::NothingDue
    );
    let ScheduleClaim::Attempted { outcome, pending } = b.apply_at(due).await else {
        panic!("the schedule is due")
    };
    let ApplyOutcome::Applied { schedule: applied } = *outcome else {
        panic!("applied")
    };
    assert_eq!(applied.id, schedule.id);
    assert_eq!(applied.status, ScheduleStatus::Applied);
    assert_eq!(applied.applied_at, Some(due));
    assert!(
        pending.is_some(),
        "the change owes the cache an invalidation"
    );
    let flag = b.flag(&env, "checkout").await;
    assert_eq!((flag.enabled, flag.rollout_percentage), (true, 50));
    assert_eq!(
        b.apply_at(due).await,
        ScheduleClaim::NothingDue,
        "applied once"
    );

    assert_eq!(
        b.audit_actions(&env).await,
        [
            "flag.created",
            "schedule.created",
            "schedule.created",
            "flag.updated",
            "schedule.applied"
        ]
    );
    let filter = AuditFilter {
        environment: Some(env.as_str().to_owned()),
        flag_key: None,
    };
    let entries = b.store.list_audit(&filter, 2, 0).await.unwrap().entries;
    assert!(
        entries.iter().all(|e| e.actor.is_none()),
        "the scheduler is no actor"
    );
    assert_eq!(entries[1].after.as_ref().unwrap()["rolloutPercentage"], 50);
    let pending_envs: Vec<String> = b
        .store
        .pending_invalidations(100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.environment)
        .collect();
    assert!(pending_envs.contains(&env.as_str().to_owned()));
}

async fn failed_attempts_retry_after_two_four_eight_minutes_then_fail(b: Backend) {
    let env = unique_env();
    b.create_flag(&env, "search").await;
    let due = later(Timestamp::now(), TimeDelta::minutes(1));
    let schedule = b.schedule(&env, "search", due, turn_on(), None).await;
    b.break_flag_updates().await;

    let mut now = due;
    for (attempt, backoff_minutes) in [(1, 2), (2, 4), (3, 8)] {
        let ApplyOutcome::RetryScheduled {
            schedule: waiting,
            next_attempt,
        } = outcome(b.apply_at(now).await)
        else {
            panic!("attempt {attempt} schedules a retry")
        };
        assert_eq!(
            next_attempt,
            later(now, TimeDelta::minutes(backoff_minutes) + JITTER),
            "attempt {attempt}"
        );
        assert_eq!(waiting.id, schedule.id);
        assert_eq!(waiting.status, ScheduleStatus::Pending);
        assert_eq!(waiting.retry_count, attempt);
        assert_eq!(waiting.next_retry_at, Some(next_attempt));
        assert_eq!(waiting.error_message.as_deref(), Some("forced failure"));
        let just_before = later(next_attempt, TimeDelta::milliseconds(-1));
        assert_eq!(b.apply_at(just_before).await, ScheduleClaim::NothingDue);
        now = next_attempt;
    }
    let ApplyOutcome::Failed { schedule: failed } = outcome(b.apply_at(now).await) else {
        panic!("the fourth attempt is the last")
    };
    assert_eq!(failed.status, ScheduleStatus::Failed);
    assert_eq!(failed.retry_count, 4);
    assert_eq!(failed.error_message.as_deref(), Some("forced failure"));
    assert_eq!(failed.next_retry_at, None);
    b.heal_flag_updates().await;
    assert_eq!(
        b.apply_at(later(now, TimeDelta::days(1))).await,
        ScheduleClaim::NothingDue
    );
    assert_eq!(b.flag(&env, "search").await.enabled, false);
    assert_eq!(
        b.audit_actions(&env).await,
        ["flag.created", "schedule.created", "schedule.failed"]
    );
}

async fn a_custom_retry_budget_is_honoured(b: Backend) {
    let env = unique_env();
    b.create_flag(&env, "budget").await;
    let due = later(Timestamp::now(), TimeDelta::minutes(1));
    let no_retry = new_schedule(due, turn_on(), 0);
    let one_retry = new_schedule(later(due, TimeDelta::seconds(1)), rollout(10), 1);
    let none = b
        .store
        .create_schedule(&env, &key("budget"), &no_retry, None)
        .await
        .unwrap();
    let one = b
        .store
        .create_schedule(&env, &key("budget"), &one_retry, None)
        .await
        .unwrap();
    b.break_flag_updates().await;

    let now = later(due, TimeDelta::seconds(1));
    assert!(matches!(outcome(b.apply_at(now).await),
        ApplyOutcome::Failed { schedule } if schedule.id == none.id && schedule.retry_count == 1));
    let ApplyOutcome::RetryScheduled { next_attempt, .. } = outcome(b.apply_at(now).await) else {
        panic!("one retry is left")
    };
    assert!(matches!(outcome(b.apply_at(next_attempt).await),
        ApplyOutcome::Failed { schedule } if schedule.id == one.id && schedule.retry_count == 2));
}

async fn a_deleted_flag_fails_its_schedule_at_once(b: Backend) {
    let env = unique_env();
    let flag = b.create_flag(&env, "gone").await;
    let due = later(Timestamp::now(), TimeDelta::minutes(1));
    b.schedule(&env, "gone", due, turn_on(), None).await;
    b.remove_flag_row(flag.id).await;

    let ApplyOutcome::Failed { schedule } = outcome(b.apply_at(due).await) else {
        panic!("a missing flag is no reason to retry")
    };
    assert_eq!(
        schedule.error_message.as_deref(),
        Some("Flag 'gone' not found")
    );
    assert_eq!(schedule.next_retry_at, None);
    assert_eq!(
        b.apply_at(later(due, TimeDelta::hours(1))).await,
        ScheduleClaim::NothingDue
    );
}

async fn a_schedule_waiting_for_a_retry_can_be_cancelled(b: Backend) {
    let env = unique_env();
    b.create_flag(&env, "patience").await;
    let due = later(Timestamp::now(), TimeDelta::minutes(1));
    let schedule = b.schedule(&env, "patience", due, turn_on(), None).await;
    b.break_flag_updates().await;
    let ApplyOutcome::RetryScheduled { next_attempt, .. } = outcome(b.apply_at(due).await) else {
        panic!("retry")
    };
    b.heal_flag_updates().await;

    let cancelled = b
        .store
        .cancel_schedule(&env, &key("patience"), schedule.id, Some(&actor("bob")))
        .await
        .unwrap();
    assert_eq!(cancelled.status, ScheduleStatus::Cancelled);
    assert_eq!(
        cancelled.error_message.as_deref(),
        Some("forced failure"),
        "its history stays"
    );
    assert_eq!(b.apply_at(next_attempt).await, ScheduleClaim::NothingDue);
    assert_eq!(b.flag(&env, "patience").await.enabled, false);
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::sqlite().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    schedules_are_created_listed_and_cancelled,
    a_due_schedule_is_applied_once_through_the_write_path,
    failed_attempts_retry_after_two_four_eight_minutes_then_fail,
    a_custom_retry_budget_is_honoured,
    a_deleted_flag_fails_its_schedule_at_once,
    a_schedule_waiting_for_a_retry_can_be_cancelled,
);

const RACE_ROUNDS: usize = 50;
const RACE_SCHEDULES: i64 = 200;
/// Fewer flags than schedules, so the two appliers also meet on the same flag's lock.
const RACE_FLAGS: i64 = 20;

/// Two appliers with their own connection pools start together over 200 due schedules, 50
/// times: every schedule is applied exactly once and audited exactly once.
#[tokio::test]
async fn two_appliers_never_apply_a_schedule_twice() {
    let url = postgres_schema_url().await;
    let store_a = Arc::new(PostgresStore::connect_lazy(&url, 4).unwrap());
    let store_b = Arc::new(PostgresStore::connect_lazy(&url, 4).unwrap());
    let pool = store_a.pool().clone();
    let applier_a = service_with_memory(store_a.clone());
    let applier_b = service_with_memory(store_b);
    let env = unique_env();
    for i in 0..RACE_FLAGS {
        store_a
            .create_flag(&env, &new_flag(&format!("race-{i}"), false, 0), None)
            .await
            .unwrap();
    }

    for round in 0..RACE_ROUNDS {
        let now = Timestamp::now();
        sqlx::query(
            "INSERT INTO flag_schedules (id, flag_id, environment, flag_key, scheduled_at, status, \
               updates, retry_count, max_retries, created_at) \
             SELECT gen_random_uuid(), f.id, f.environment, f.flag_key, \
               $1 - g * interval '1 millisecond', 'pending', \
               '{\"rolloutPercentage\":' || (g % 101) || '}', 0, 3, $1 \
             FROM generate_series(1, $2) AS g \
             JOIN feature_flags f ON f.flag_key = 'race-' || (g % $3) AND f.environment = $4",
        )
        .bind(now.as_datetime())
        .bind(RACE_SCHEDULES)
        .bind(RACE_FLAGS)
        .bind(env.as_str())
        .execute(&pool)
        .await
        .unwrap();

        // A schedule whose flag the other applier held is left for a later pass: run passes
        // (both appliers at once) until nothing is due.
        let mut applied = 0;
        loop {
            let (a, b) = tokio::join!(
                applier_a.apply_due_schedules_at(now, TimeDelta::zero),
                applier_b.apply_due_schedules_at(now, TimeDelta::zero),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!((a.failed, b.failed), (0, 0), "round {round}");
            applied += a.applied + b.applied;
            if a.processed + b.processed == 0
                && applier_a.due_schedules(now).await.unwrap().is_empty()
            {
                break;
            }
        }
        assert_eq!(
            applied, RACE_SCHEDULES as u64,
            "round {round}: every schedule applied once"
        );
    }

    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM flag_schedules GROUP BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    let total = RACE_SCHEDULES * RACE_ROUNDS as i64;
    assert_eq!(statuses, [("applied".to_owned(), total)]);
    let audited: Vec<String> =
        sqlx::query_scalar("SELECT after FROM flag_audit_log WHERE action = 'schedule.applied'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut per_schedule: BTreeMap<String, u32> = BTreeMap::new();
    for after in &audited {
        let value: Value = serde_json::from_str(after).unwrap();
        *per_schedule
            .entry(value["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_schedule.len() as i64, total, "every schedule audited");
    assert!(per_schedule.values().all(|&n| n == 1), "and exactly once");
    let flag_updates: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM flag_audit_log WHERE action = 'flag.updated' AND environment = $1",
    )
    .bind(env.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(flag_updates, total, "one flag update per schedule");
}
