//! Local development for the feature-flag service: the local HTTP server (same handlers as the
//! Lambda functions) and configuration with embedded defaults. The `flagctl` binary is the
//! command line over it, the local token issuer (`flags_api::local_keys`) and the demo data
//! (`flags_core::seed`).

pub mod cors;
pub mod server;
pub mod settings;

use flags_api::AppContext;
use flags_api::local_keys::LocalKeys;
use flags_core::seed;
use std::sync::Arc;

/// Builds the handler context for a local run: migrations applied (the embedded SQLite
/// database creates itself), demo flags seeded when empty, local token keys ready. Tokens are
/// verified against the local key pair unless the settings name a Cognito pool or JWKS file.
pub async fn local_context(
    settings: &settings::LocalSettings,
) -> Result<(Arc<AppContext>, LocalKeys), String> {
    settings
        .prepare_data_dir()
        .map_err(|e| format!("cannot create {}: {e}", settings.data_dir.display()))?;
    let keys =
        LocalKeys::load_or_create(&settings.keys_dir()).map_err(|e| format!("local keys: {e}"))?;
    let auth = settings.auth.clone().unwrap_or_else(|| keys.auth_config());
    let context = AppContext::new(&settings.config, &auth)
        .await
        .map_err(|e| e.to_string())?;
    context
        .service
        .store()
        .migrate()
        .await
        .map_err(|e| format!("migrations: {e}"))?;
    let seeded = seed::seed_if_empty(&context.service)
        .await
        .map_err(|e| format!("seeding: {e}"))?;
    if seeded > 0 {
        tracing::info!(flags = seeded, "seeded the demo flags");
    }
    Ok((Arc::new(context), keys))
}
