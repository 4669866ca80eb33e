//! `GET /2d/presets` and the tenant defaults `GET/PUT/DELETE /2d/config`: any API key may read
//! its tenant's config; changing it also needs the admin token (`X-Admin-Token`), as in the
//! Python API (missing 401, wrong 403).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::auth::AdminRefusal;
use super::error::ApiError;
use super::handlers::tenant;
use super::presets::presets_json;
use super::tenant_config::TenantConfig;
use super::ApiState;

type Shared = State<Arc<ApiState>>;

fn admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers.get("x-admin-token").and_then(|v| v.to_str().ok());
    state.admin_token.check(presented).map_err(|r| match r {
        AdminRefusal::Missing => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Missing admin token: provide the X-Admin-Token header",
        ),
        AdminRefusal::Invalid => {
            ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", "Invalid admin token")
        }
        AdminRefusal::NotConfigured => ApiError::new(
            StatusCode::FORBIDDEN,
            "ADMIN_TOKEN_NOT_CONFIGURED",
            "tenant configs cannot be changed: this API has no ADMIN_TOKEN configured",
        ),
    })
}

pub(super) fn redis_down(e: redis::RedisError) -> ApiError {
    tracing::warn!(error = %e, "tenant config store unavailable");
    ApiError::unavailable("the tenant config store is unavailable; retry later")
}

fn answer(tenant_id: String, config: &TenantConfig) -> Json<Value> {
    Json(json!({"tenant_id": tenant_id, "config": config}))
}

/// `GET /api/v1/dedup/2d/presets`
pub async fn presets(State(state): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    tenant(&state, &headers)?;
    Ok(Json(presets_json()))
}

/// `GET /api/v1/dedup/2d/config`
pub async fn get_config(State(state): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let tenant_id = tenant(&state, &headers)?;
    let config = state
        .tenant_configs
        .get(&tenant_id)
        .await
        .map_err(redis_down)?;
    Ok(answer(tenant_id, &config))
}

/// `PUT /api/v1/dedup/2d/config` (JSON body): validated whole before anything is stored.
pub async fn put_config(
    State(state): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant_id = tenant(&state, &headers)?;
    admin(&state, &headers)?;
    let config = serde_json::from_slice::<TenantConfig>(&body)
        .map_err(|e| ApiError::bad_request("INVALID_CONFIG", format!("invalid config body: {e}")))?
        .validated()
        .map_err(|e| ApiError::bad_request("INVALID_CONFIG", e.to_string()))?;
    state
        .tenant_configs
        .set(&tenant_id, &config)
        .await
        .map_err(redis_down)?;
    tracing::info!(tenant_id, "tenant config stored");
    Ok(answer(tenant_id, &config))
}

/// `DELETE /api/v1/dedup/2d/config`
pub async fn delete_config(
    State(state): Shared,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant_id = tenant(&state, &headers)?;
    admin(&state, &headers)?;
    state
        .tenant_configs
        .delete(&tenant_id)
        .await
        .map_err(redis_down)?;
    Ok(answer(tenant_id, &TenantConfig::default()))
}
