//! `flagctl`: run the local server, mint local tokens, migrate and seed a database.

use clap::{Parser, Subcommand};
use flags_api::local_keys::LocalKeys;
use flags_core::domain::{Schedule, Timestamp};
use flags_core::telemetry::{self, LogFormat};
use flags_local::settings::LocalSettings;
use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flagctl",
    about = "Feature-flag service: local server and tools",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every route on 127.0.0.1:$PORT (default 3000), also under /api.
    Serve,
    /// Print an access token signed with the local key (the local server accepts it).
    Token {
        /// The user id (the token's `sub`, used for rollouts and overrides).
        #[arg(long)]
        sub: String,
        /// A Cognito group to put in `cognito:groups`; repeat for several (`admin` for admin routes).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 8 * 3600)]
        ttl: i64,
    },
    /// Apply the database migrations to $DATABASE_URL (PostgreSQL or SQLite).
    Migrate,
    /// Create the demo flags (production and development) that do not exist yet.
    Seed,
    /// Print the OpenAPI 3.1 document that `GET /openapi.json` serves (`make openapi`).
    Openapi,
    /// Scheduled flag changes: what is due, and applying it.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
}

#[derive(Subcommand)]
enum SchedulesCommand {
    /// Run one applier pass (what the server does every second) and print its result as JSON.
    Apply,
    /// List the schedules that are due now, in the order the applier takes them.
    List,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init(LogFormat::Pretty);
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("flagctl: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    if let Command::Openapi = command {
        print!("{}", flags_api::openapi::document_pretty());
        return Ok(());
    }
    let settings = LocalSettings::load().map_err(|e| e.to_string())?;
    match command {
        Command::Token { sub, groups, ttl } => {
            let keys =
                LocalKeys::load_or_create(&settings.keys_dir()).map_err(|e| e.to_string())?;
            println!(
                "{}",
                keys.mint(&sub, &groups, ttl).map_err(|e| e.to_string())?
            );
        }
        Command::Migrate => {
            settings.prepare_data_dir().map_err(|e| e.to_string())?;
            let store = flags_core::wiring::open_store(settings.config.database_url.expose(), 1)
                .map_err(|e| e.to_string())?;
            store.migrate().await.map_err(|e| e.to_string())?;
            println!("migrations applied ({})", store.backend());
        }
        Command::Seed => {
            let (context, _) = flags_local::local_context(&settings).await?;
            let created = flags_core::seed::seed(&context.service)
                .await
                .map_err(|e| e.to_string())?;
            println!("{created} demo flags created");
        }
        Command::Serve => serve(settings).await?,
        Command::Openapi => unreachable!("answered before the settings are read"),
        Command::Schedules(command) => {
            let (context, _) = flags_local::local_context(&settings).await?;
            match command {
                SchedulesCommand::Apply => {
                    let report = context
                        .service
                        .apply_due_schedules()
                        .await
                        .map_err(|e| e.to_string())?;
                    println!("{}", serde_json::json!(report));
                }
                SchedulesCommand::List => {
                    let due = context
                        .service
                        .due_schedules(Timestamp::now())
                        .await
                        .map_err(|e| e.to_string())?;
                    print_due(&due);
                }
            }
        }
    }
    Ok(())
}

fn print_due(due: &[Schedule]) {
    if due.is_empty() {
        println!("no schedule is due");
        return;
    }
    println!(
        "{:<36}  {:<12}  {:<24}  {:<24}  {:<7}  updates",
        "id", "environment", "flag", "due at", "retries"
    );
    for schedule in due {
        println!(
            "{:<36}  {:<12}  {:<24}  {:<24}  {:<7}  {}",
            schedule.id,
            schedule.environment,
            schedule.flag_key,
            schedule.due_at(),
            schedule.retry_count,
            schedule.updates.to_json()
        );
    }
}

async fn serve(settings: LocalSettings) -> Result<(), String> {
    let (context, _keys) = flags_local::local_context(&settings).await?;
    let address = SocketAddr::from(([127, 0, 0, 1], settings.port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let (database, cache) = settings.describe_stores();
    println!();
    println!("  Feature flags running at http://{address}  (also under /api)");
    println!("  database: {database}");
    println!("  cache:    {cache}");
    println!("  tokens:   {}", settings.describe_auth());
    println!();
    println!("  curl http://{address}/config/flags");
    println!(
        "  TOKEN=$(cargo run -q -p flags-local --bin flagctl -- token --sub alice --group admin)"
    );
    println!("  curl -H \"Authorization: Bearer $TOKEN\" http://{address}/admin/flags");
    println!();
    println!("  Ctrl-C stops the server.");
    let background =
        flags_local::server::spawn_background_work(context.service.clone(), settings.poll_interval);
    let cors = settings.cors_allowed_origins.clone();
    flags_local::server::serve(listener, context.clone(), cors, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    background.abort();
    if let Some(redis) = &context.redis {
        redis.quit().await;
    }
    println!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = terminate => {} }
}
