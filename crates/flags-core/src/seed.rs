//! The demo flags of the original service, seeded into an empty local database.

use crate::FlagService;
use crate::domain::{Environment, FlagKey, NewFlag, Rollout};
use crate::service::ServiceError;

/// (key, enabled, rollout %, description) in production; development has every flag fully on.
const DEMO_FLAGS: [(&str, bool, i64, &str); 5] = [
    (
        "wishlist-gallery",
        true,
        100,
        "Gallery view of the wishlist",
    ),
    ("wishlist-add-item", true, 100, "Add items to the wishlist"),
    (
        "wishlist-edit-item",
        true,
        50,
        "Edit wishlist items (rolling out)",
    ),
    ("wishlist-got-it", false, 0, "Mark an item as received"),
    (
        "wishlist-reorder",
        true,
        25,
        "Drag-and-drop reordering (rolling out)",
    ),
];
const ENVIRONMENTS: [(&str, bool); 2] = [("production", false), ("development", true)];

fn environment(name: &str) -> Environment {
    Environment::parse(name).expect("demo environment names are valid")
}

/// Seeds when no demo environment has any flag; returns how many flags were created.
pub async fn seed_if_empty(service: &FlagService) -> Result<usize, ServiceError> {
    for (name, _) in ENVIRONMENTS {
        if !service.list_flags(&environment(name)).await?.is_empty() {
            return Ok(0);
        }
    }
    seed(service).await
}

/// Creates every demo flag that does not exist yet (safe to run again).
pub async fn seed(service: &FlagService) -> Result<usize, ServiceError> {
    let mut created = 0;
    for (name, everything_on) in ENVIRONMENTS {
        for (key, enabled, rollout, description) in DEMO_FLAGS {
            let new = NewFlag {
                flag_key: FlagKey::parse(key).expect("demo flag keys are valid"),
                enabled: enabled || everything_on,
                rollout: Rollout::new(if everything_on { 100 } else { rollout }).expect("0..=100"),
                description: Some(description.to_owned()),
            };
            match service.create_flag(&environment(name), new, None).await {
                Ok(_) => created += 1,
                Err(ServiceError::AlreadyExists(_)) => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(created)
}
