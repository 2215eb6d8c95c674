//! The routes of contract §2: one Lambda function each, and the local server's router.

use http::Method;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    GetFlags,
    GetFlag,
    Health,
    AdminListFlags,
    AdminCreateFlag,
    AdminUpdateFlag,
    AdminDeleteFlag,
    AdminUpsertOverride,
    AdminDeleteOverride,
    AdminListOverrides,
    AdminInvalidateCache,
    AdminAudit,
    AdminCreateSchedule,
    AdminListSchedules,
    AdminCancelSchedule,
    OfrepEvaluateFlag,
    OfrepEvaluateFlags,
    OpenApi,
}

impl Route {
    pub const ALL: [Route; 18] = [
        Route::GetFlags,
        Route::GetFlag,
        Route::Health,
        Route::AdminListFlags,
        Route::AdminCreateFlag,
        Route::AdminUpdateFlag,
        Route::AdminDeleteFlag,
        Route::AdminUpsertOverride,
        Route::AdminDeleteOverride,
        Route::AdminListOverrides,
        Route::AdminInvalidateCache,
        Route::AdminAudit,
        Route::AdminCreateSchedule,
        Route::AdminListSchedules,
        Route::AdminCancelSchedule,
        Route::OfrepEvaluateFlag,
        Route::OfrepEvaluateFlags,
        Route::OpenApi,
    ];

    /// Method and path template as API Gateway routes them.
    pub fn spec(self) -> (Method, &'static str) {
        match self {
            Self::GetFlags => (Method::GET, "/config/flags"),
            Self::GetFlag => (Method::GET, "/config/flags/{flagKey}"),
            Self::Health => (Method::GET, "/health"),
            Self::AdminListFlags => (Method::GET, "/admin/flags"),
            Self::AdminCreateFlag => (Method::POST, "/admin/flags"),
            Self::AdminUpdateFlag => (Method::POST, "/admin/flags/{flagKey}"),
            Self::AdminDeleteFlag => (Method::DELETE, "/admin/flags/{flagKey}"),
            Self::AdminUpsertOverride => (Method::POST, "/admin/flags/{flagKey}/users"),
            Self::AdminDeleteOverride => (Method::DELETE, "/admin/flags/{flagKey}/users/{userId}"),
            Self::AdminListOverrides => (Method::GET, "/admin/flags/{flagKey}/users"),
            Self::AdminInvalidateCache => (Method::POST, "/admin/cache/invalidate"),
            Self::AdminAudit => (Method::GET, "/admin/audit"),
            Self::AdminCreateSchedule => (Method::POST, "/admin/flags/{flagKey}/schedule"),
            Self::AdminListSchedules => (Method::GET, "/admin/flags/{flagKey}/schedule"),
            Self::AdminCancelSchedule => (
                Method::DELETE,
                "/admin/flags/{flagKey}/schedule/{scheduleId}",
            ),
            Self::OfrepEvaluateFlag => (Method::POST, "/ofrep/v1/evaluate/flags/{key}"),
            Self::OfrepEvaluateFlags => (Method::POST, "/ofrep/v1/evaluate/flags"),
            Self::OpenApi => (Method::GET, "/openapi.json"),
        }
    }

    /// The Lambda binary (and SAM `Binary`) name of the route's function.
    pub fn function_name(self) -> &'static str {
        match self {
            Self::GetFlags => "get-flags",
            Self::GetFlag => "get-flag",
            Self::Health => "health",
            Self::AdminListFlags => "admin-list-flags",
            Self::AdminCreateFlag => "admin-create-flag",
            Self::AdminUpdateFlag => "admin-update-flag",
            Self::AdminDeleteFlag => "admin-delete-flag",
            Self::AdminUpsertOverride => "admin-upsert-override",
            Self::AdminDeleteOverride => "admin-delete-override",
            Self::AdminListOverrides => "admin-list-overrides",
            Self::AdminInvalidateCache => "admin-invalidate-cache",
            Self::AdminAudit => "admin-audit",
            Self::AdminCreateSchedule => "admin-create-schedule",
            Self::AdminListSchedules => "admin-list-schedules",
            Self::AdminCancelSchedule => "admin-cancel-schedule",
            Self::OfrepEvaluateFlag => "ofrep-evaluate-flag",
            Self::OfrepEvaluateFlags => "ofrep-evaluate-flags",
            Self::OpenApi => "openapi",
        }
    }

    pub fn is_admin(self) -> bool {
        self.spec().1.starts_with("/admin/")
    }

    /// Whether answering needs the database (and so can fail with a 500); `/health` reports a
    /// database outage as its own 503, and the OpenAPI document is built in.
    pub fn uses_database(self) -> bool {
        !matches!(self, Self::Health | Self::OpenApi)
    }

    /// Finds the route for a method and a path whose segments are already percent-decoded,
    /// with the path parameters it captured.
    pub fn match_path(
        method: &Method,
        segments: &[String],
    ) -> Option<(Route, HashMap<String, String>)> {
        Self::ALL.into_iter().find_map(|route| {
            let (route_method, template) = route.spec();
            if route_method != method {
                return None;
            }
            let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            if parts.len() != segments.len() {
                return None;
            }
            let mut params = HashMap::new();
            for (part, segment) in parts.iter().zip(segments) {
                match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(name) => {
                        params.insert(name.to_owned(), segment.clone());
                    }
                    None if part == segment => {}
                    None => return None,
                }
            }
            Some((route, params))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &str) -> Vec<String> {
        path.trim_start_matches('/')
            .split('/')
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_route_matches_its_own_template() {
        for route in Route::ALL {
            let (method, template) = route.spec();
            let concrete = template
                .replace("{flagKey}", "my-flag")
                .replace("{userId}", "user-1")
                .replace("{scheduleId}", "3f2b1c1e-0000-4000-8000-000000000001")
                .replace("{key}", "my-flag");
            let (found, params) = Route::match_path(&method, &segments(&concrete)).unwrap();
            assert_eq!(found, route, "{template}");
            if template.contains("{flagKey}") {
                assert_eq!(params["flagKey"], "my-flag");
            }
        }
    }

    #[test]
    fn unknown_paths_and_methods_do_not_match() {
        assert!(Route::match_path(&Method::GET, &segments("/nope")).is_none());
        assert!(Route::match_path(&Method::PUT, &segments("/admin/flags/x")).is_none());
        assert!(Route::match_path(&Method::GET, &segments("/config/flags/a/b")).is_none());
        assert_eq!(Route::ALL.iter().filter(|r| r.is_admin()).count(), 12);
    }
}
