//! Presets and per-tenant defaults through the real `dedup2d api` and a real redis-server: the
//! presets listing, what a search puts into the job's `request_params` (preset, tenant config,
//! explicit query values, in the Python API's order), the admin token on changes, validation
//! that stores nothing, and the Redis key the Python API reads.

use crate::support::api::{ApiProcess, KEY_A, KEY_B};
use crate::support::redis::RedisServer;
use dedup2d::api::auth::tenant_id;
use dedup2d::contract::keys::Keys;
use redis::AsyncCommands;
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";

struct Setup {
    redis: RedisServer,
    _dir: tempfile::TempDir,
    api: ApiProcess,
}

impl Setup {
    fn new() -> Self {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let api = ApiProcess::start(&redis.url(), dir.path(), &[("ADMIN_TOKEN", ADMIN)]);
        Setup {
            redis,
            _dir: dir,
            api,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        admin: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = reqwest::Client::new()
            .request(method, self.api.url(path))
            .header("X-API-Key", key);
        if let Some(a) = admin {
            req = req.header("X-Admin-Token", a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    /// Submits a search and returns the `request_params` the job's payload carries.
    async fn search(&self, key: &str, query: &str) -> Result<Value, (StatusCode, Value)> {
        let form = Form::new().part("file", Part::bytes(b"drawing".to_vec()).file_name("p.png"));
        let resp = reqwest::Client::new()
            .post(
                self.api
                    .url(&format!("/api/v1/dedup/2d/search?async=true&{query}")),
            )
            .header("X-API-Key", key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        if status != StatusCode::OK {
            return Err((status, body));
        }
        let mut c = self.redis.manager().await;
        let raw: String = c
            .get(Keys::new("dedup2d").payload(body["job_id"].as_str().unwrap()))
            .await
            .unwrap();
        let payload: Value = serde_json::from_str(&raw).unwrap();
        Ok(payload["request_params"].clone())
    }

    async fn active_jobs(&self) -> usize {
        let mut c = self.redis.manager().await;
        c.scard(Keys::new("dedup2d").active()).await.unwrap()
    }
}

fn pick(params: &Value, keys: &[&str]) -> Value {
    Value::Object(
        keys.iter()
            .map(|k| (k.to_string(), params[*k].clone()))
            .collect(),
    )
}

const PRESET_KEYS: [&str; 8] = [
    "mode",
    "precision_profile",
    "precision_top_n",
    "duplicate_threshold",
    "similar_threshold",
    "precision_visual_weight",
    "precision_geom_weight",
    "version_gate",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_are_listed_and_expanded_unless_given_explicitly() {
    let s = Setup::new();
    let (status, body) = s
        .call(Method::GET, "/api/v1/dedup/2d/presets", KEY_A, None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // The Python API's values (src/api/v1/dedup.py _SEARCH_PRESETS).
    let expected = json!({
        "strict": {"mode": "balanced", "precision_profile": "strict", "precision_top_n": 20,
                   "duplicate_threshold": 0.95, "similar_threshold": 0.80,
                   "precision_visual_weight": 0.3, "precision_geom_weight": 0.7, "version_gate": "off"},
        "version": {"mode": "balanced", "precision_profile": "version", "precision_top_n": 50,
                    "duplicate_threshold": 0.95, "similar_threshold": 0.70,
                    "precision_visual_weight": 0.5, "precision_geom_weight": 0.5, "version_gate": "auto"},
        "loose": {"mode": "balanced", "precision_profile": "version", "precision_top_n": 50,
                  "duplicate_threshold": 0.90, "similar_threshold": 0.50,
                  "precision_visual_weight": 0.6, "precision_geom_weight": 0.4, "version_gate": "off"}
    });
    assert_eq!(body["presets"], expected);

    for name in ["strict", "version", "loose"] {
        let p = s.search(KEY_A, &format!("preset={name}")).await.unwrap();
        assert_eq!(pick(&p, &PRESET_KEYS), expected[name], "{name}");
        assert!(
            p.get("preset").is_none(),
            "the Python API does not pass the preset on"
        );
    }
    // An explicit value wins; the rest comes from the preset (case-insensitive name).
    let p = s
        .search(
            KEY_A,
            "preset=LOOSE&similar_threshold=0.6&mode=fast&max_results=7",
        )
        .await
        .unwrap();
    assert_eq!(p["similar_threshold"], json!(0.6));
    assert_eq!(p["mode"], json!("fast"));
    assert_eq!(p["duplicate_threshold"], json!(0.90));
    assert_eq!(p["max_results"], json!(7));
    // No preset: the API defaults, precision_profile/version_gate unset.
    let p = s.search(KEY_A, "").await.unwrap();
    assert_eq!(p["similar_threshold"], json!(0.8));
    assert_eq!(p["precision_profile"], Value::Null);

    let before = s.active_jobs().await;
    let (status, err) = s.search(KEY_A, "preset=fuzzy").await.unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], json!("UNKNOWN_PRESET"));
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("fuzzy") && msg.contains("strict, version, loose"),
        "{msg}"
    );
    // An explicit threshold that crosses the preset's: 400.
    let (status, err) = s
        .search(KEY_A, "preset=loose&similar_threshold=0.93")
        .await
        .unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("similar_threshold"));
    let (status, _) = s.search(KEY_A, "version_gate=sometimes").await.unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.active_jobs().await,
        before,
        "a refused search stores no job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_defaults_are_admin_protected_validated_stored_and_applied() {
    let s = Setup::new();
    let path = "/api/v1/dedup/2d/config";
    let cfg = json!({"preset": "Version", "similar_threshold": 0.75, "precision_top_n": 30});

    // Changes need the admin token: missing 401, wrong 403.
    let (st, e) = s
        .call(Method::PUT, path, KEY_A, None, Some(cfg.clone()))
        .await;
    assert_eq!(
        (st, e["error"].clone()),
        (StatusCode::UNAUTHORIZED, json!("UNAUTHORIZED"))
    );
    let (st, _) = s
        .call(Method::PUT, path, KEY_A, Some("guess"), Some(cfg.clone()))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s.call(Method::DELETE, path, KEY_A, None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let (st, body) = s
        .call(Method::PUT, path, KEY_A, Some(ADMIN), Some(cfg))
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let tenant = tenant_id(KEY_A);
    let stored_json =
        json!({"preset": "version", "similar_threshold": 0.75, "precision_top_n": 30});
    assert_eq!(body, json!({"tenant_id": tenant, "config": stored_json}));
    // Where and how the Python API keeps it.
    let mut c = s.redis.manager().await;
    let raw: String = c
        .get(format!("dedup2d:tenant_config:{tenant}"))
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&raw).unwrap(), stored_json);

    // Bad values: 400 {error, message}, nothing stored.
    for (bad, needle) in [
        (json!({"mode": "turbo"}), "Invalid mode"),
        (
            json!({"precision_profile": "loose"}),
            "Invalid precision_profile",
        ),
        (
            json!({"duplicate_threshold": 0.5, "similar_threshold": 0.6}),
            "similar_threshold",
        ),
        (json!({"similar_threshold": 1.5}), "similar_threshold"),
        (json!({"preset": "fuzzy"}), "Unknown preset"),
        (json!({"version_gate": "never"}), "Invalid version_gate"),
    ] {
        let (st, e) = s
            .call(Method::PUT, path, KEY_A, Some(ADMIN), Some(bad.clone()))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(e["error"], json!("INVALID_CONFIG"));
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{bad}: {e}"
        );
    }
    let (st, got) = s.call(Method::GET, path, KEY_A, None, None).await;
    assert_eq!(
        (st, got["config"].clone()),
        (StatusCode::OK, stored_json.clone())
    );
    // Another tenant sees none of it.
    let (_, other) = s.call(Method::GET, path, KEY_B, None, None).await;
    assert_eq!(other["config"], json!({}));
    assert_eq!(other["tenant_id"], json!(tenant_id(KEY_B)));

    // Applied at search time: the tenant's preset, then its own values; explicit query wins.
    let p = s.search(KEY_A, "").await.unwrap();
    assert_eq!(p["similar_threshold"], json!(0.75));
    assert_eq!(p["precision_top_n"], json!(30));
    assert_eq!(p["version_gate"], json!("auto"));
    let p = s.search(KEY_A, "precision_top_n=5").await.unwrap();
    assert_eq!(
        (p["precision_top_n"].clone(), p["similar_threshold"].clone()),
        (json!(5), json!(0.75))
    );
    // A preset in the query overrides the tenant's values.
    let p = s.search(KEY_A, "preset=strict").await.unwrap();
    assert_eq!(
        (p["similar_threshold"].clone(), p["precision_top_n"].clone()),
        (json!(0.8), json!(20))
    );
    let p = s.search(KEY_B, "").await.unwrap();
    assert_eq!(p["similar_threshold"], json!(0.8));

    // A config the Python API wrote (its own JSON layout, a field unknown here) is read.
    let _: () = c
        .set(
            format!("dedup2d:tenant_config:{}", tenant_id(KEY_B)),
            r#"{"mode": "fast", "duplicate_threshold": 0.9, "some_new_field": true}"#,
        )
        .await
        .unwrap();
    let p = s.search(KEY_B, "").await.unwrap();
    assert_eq!(
        (p["mode"].clone(), p["duplicate_threshold"].clone()),
        (json!("fast"), json!(0.9))
    );

    let (st, body) = s.call(Method::DELETE, path, KEY_A, Some(ADMIN), None).await;
    assert_eq!((st, body["config"].clone()), (StatusCode::OK, json!({})));
    let gone: Option<String> = c
        .get(format!("dedup2d:tenant_config:{tenant}"))
        .await
        .unwrap();
    assert_eq!(gone, None);
    let p = s.search(KEY_A, "").await.unwrap();
    assert_eq!(p["similar_threshold"], json!(0.8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_configured_changes_are_refused() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(&redis.url(), dir.path(), &[]);
    let resp = reqwest::Client::new()
        .put(api.url("/api/v1/dedup/2d/config"))
        .header("X-API-Key", KEY_A)
        .header("X-Admin-Token", "test")
        .json(&json!({"mode": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], json!("ADMIN_TOKEN_NOT_CONFIGURED"));
    let mut c = redis.manager().await;
    let stored: Option<String> = c
        .get(format!("dedup2d:tenant_config:{}", tenant_id(KEY_A)))
        .await
        .unwrap();
    assert_eq!(stored, None);
}
