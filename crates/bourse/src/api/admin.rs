//! The HTTP admin API, `/admin/v1/...`: tenants, keys and the audit trail as JSON, over
//! [`Admin`]. Authentication (which admin key, hence the actor) is the caller's: [`handle`]
//! takes the actor it writes into audit rows.
//!
//! | method and path                        | does                                          |
//! |----------------------------------------|-----------------------------------------------|
//! | `GET /admin/v1/tenants`                | `{"data":[tenant...]}`                        |
//! | `POST /admin/v1/tenants`               | create (201)                                  |
//! | `GET/PATCH/DELETE /admin/v1/tenants/N` | read, change (absent: kept, null: cleared), delete |
//! | `GET /admin/v1/keys?tenant=N`          | `{"data":[key...]}`                           |
//! | `POST /admin/v1/keys`                  | create (201): the key plus `"key": secret`    |
//! | `GET /admin/v1/keys/ID`                | read                                          |
//! | `POST /admin/v1/keys/ID/revoke`        | revoke                                        |
//! | `POST /admin/v1/keys/ID/rotate`        | new secret: the key plus `"key": secret`      |
//! | `GET /admin/v1/audit?limit=N`          | newest first (default 100, at most 1000)      |
//!
//! Shapes are [`admin::tenant_json`] and [`admin::key_json`]. Budgets are USD as decimal
//! strings on output and strings or numbers on input (a number is read from its text, never
//! through a float); a key's validity is set with `"expires_in": "30d"`. Unknown fields are
//! refused. Errors have OpenAI's shape `{"error":{"message","type","param","code"}}` with
//! 400, 404, 405 or 409; they are built here rather than by `crate::error`, whose taxonomy is
//! the request path's and has no conflict.

use crate::admin::{self, Admin, AdminError, KeyInput, LimitsPatch, TenantInput, TenantPatch};
use crate::limit::Nanos;
use crate::tenancy::{self, Downgrade};
use crate::timespec::now_ms;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Routes one admin request (see the module doc) and answers it.
pub async fn handle(
    admin: &Admin,
    actor: &str,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Response {
    match route(admin, actor, method, path, query, &body).await {
        Ok((status, v)) => json_response(status, &v),
        Err(e) => e.response(),
    }
}

/// An answer that is not a success.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    param: Option<String>,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        let kind = if status.is_server_error() { "api_error" } else { "invalid_request_error" };
        Failure { status, kind, code, message: message.into(), param: None }
    }

    fn invalid(param: &str, message: impl Into<String>) -> Failure {
        Failure { param: Some(param.into()), ..Failure::new(StatusCode::BAD_REQUEST, "invalid_value", message) }
    }

    fn response(&self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        json_response(self.status, &body)
    }
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(m) => Failure::new(StatusCode::NOT_FOUND, "not_found", m),
            AdminError::Invalid(m, field) => Failure::invalid(&field, m),
            AdminError::Conflict(m) => Failure::new(StatusCode::CONFLICT, "conflict", m),
            AdminError::Store(e) => {
                tracing::error!(error = %e, "admin: store failed");
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the store failed; see the gateway's log",
                )
            }
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(axum::body::Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

type Answer = Result<(StatusCode, Value), Failure>;

async fn route(admin: &Admin, actor: &str, method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> Answer {
    let Some(rest) = path.strip_prefix("/admin/v1/") else {
        return Err(Failure::new(StatusCode::NOT_FOUND, "unknown_url", format!("no admin endpoint at {path}")));
    };
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let not_allowed = || {
        Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed on {path}"))
    };
    let now = now_ms();
    match parts.as_slice() {
        ["tenants"] => match *method {
            Method::GET => {
                let data: Vec<Value> = admin.list_tenants().await?.iter().map(admin::tenant_json).collect();
                Ok((StatusCode::OK, json!({"data": data})))
            }
            Method::POST => {
                let input = tenant_input(&object(body)?)?;
                Ok((StatusCode::CREATED, admin::tenant_json(&admin.create_tenant(actor, input).await?)))
            }
            _ => Err(not_allowed()),
        },
        ["tenants", name] => match *method {
            Method::GET => Ok((StatusCode::OK, admin::tenant_json(&admin.tenant(name).await?))),
            Method::PATCH => {
                let patch = tenant_patch(&object(body)?)?;
                Ok((StatusCode::OK, admin::tenant_json(&admin.set_tenant(actor, name, patch).await?)))
            }
            Method::DELETE => {
                admin.delete_tenant(actor, name).await?;
                Ok((StatusCode::OK, json!({"name": name, "deleted": true})))
            }
            _ => Err(not_allowed()),
        },
        ["keys"] => match *method {
            Method::GET => {
                let tenant = query_param(query, "tenant");
                let keys = admin.list_keys(tenant.as_deref()).await?;
                let data: Vec<Value> = keys.iter().map(|k| admin::key_json(k, now)).collect();
                Ok((StatusCode::OK, json!({"data": data})))
            }
            Method::POST => {
                let input = key_input(&object(body)?, now)?;
                let (key, secret) = admin.create_key(actor, input).await?;
                Ok((StatusCode::CREATED, with_secret(admin::key_json(&key, now), secret)))
            }
            _ => Err(not_allowed()),
        },
        ["keys", id] => match *method {
            Method::GET => Ok((StatusCode::OK, admin::key_json(&admin.key(id).await?, now))),
            _ => Err(not_allowed()),
        },
        ["keys", id, "revoke"] => match *method {
            Method::POST => Ok((StatusCode::OK, admin::key_json(&admin.revoke_key(actor, id).await?, now_ms()))),
            _ => Err(not_allowed()),
        },
        ["keys", id, "rotate"] => match *method {
            Method::POST => {
                let (key, secret) = admin.rotate_key(actor, id).await?;
                Ok((StatusCode::OK, with_secret(admin::key_json(&key, now), secret)))
            }
            _ => Err(not_allowed()),
        },
        ["audit"] => match *method {
            Method::GET => {
                let limit = match query_param(query, "limit") {
                    Some(l) => l.parse::<u32>().map_err(|_| Failure::invalid("limit", "must be a whole number"))?,
                    None => 100,
                };
                let data: Vec<Value> = admin.audit(limit.min(1000)).await?.iter().map(admin::audit_json).collect();
                Ok((StatusCode::OK, json!({"data": data})))
            }
            _ => Err(not_allowed()),
        },
        _ => Err(Failure::new(StatusCode::NOT_FOUND, "unknown_url", format!("no admin endpoint at {path}"))),
    }
}

fn with_secret(mut v: Value, secret: String) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("key".into(), Value::String(secret));
    }
    v
}

/// One `name=value` of a query string, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

fn object(body: &[u8]) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_value", "the body must be a JSON object")),
        Err(e) => Err(Failure::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON: {e}"))),
    }
}

const LIMIT_FIELDS: [&str; 6] = ["budget_day_usd", "budget_month_usd", "budget_total_usd", "rpm", "tpm", "concurrency"];
const TENANT_FIELDS: [&str; 3] = ["policy", "downgrade", "metadata"];
const KEY_FIELDS: [&str; 10] =
    ["tenant", "name", "routes", "models", "policy", "default_route", "cache", "metadata", "expires_in", "expires_at"];

fn refuse_unknown(o: &Map<String, Value>, known: &[&[&str]]) -> Result<(), Failure> {
    match o.keys().find(|k| !known.iter().any(|set| set.contains(&k.as_str()))) {
        Some(k) => Err(Failure::invalid(k, format!("unknown field \"{k}\""))),
        None => Ok(()),
    }
}

/// USD from a string or a number's own text; null: no limit.
fn usd(field: &str, v: &Value) -> Result<Option<Nanos>, Failure> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => tenancy::parse_usd(s).map(Some).map_err(|m| Failure::invalid(field, m)),
        Value::Number(n) => tenancy::parse_usd(&n.to_string()).map(Some).map_err(|m| Failure::invalid(field, m)),
        _ => Err(Failure::invalid(field, "must be USD as a string like \"5.00\", a number, or null")),
    }
}

fn count(field: &str, v: &Value) -> Result<Option<u64>, Failure> {
    match v {
        Value::Null => Ok(None),
        v => v.as_u64().map(Some).ok_or_else(|| Failure::invalid(field, "must be a whole number or null")),
    }
}

fn opt_string(field: &str, v: &Value) -> Result<Option<String>, Failure> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(Failure::invalid(field, "must be a string or null")),
    }
}

fn strings(field: &str, v: &Value) -> Result<Vec<String>, Failure> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(|| Failure::invalid(field, "must be a list of strings")))
            .collect(),
        _ => Err(Failure::invalid(field, "must be a list of strings")),
    }
}

fn metadata(v: &Value) -> Result<Map<String, Value>, Failure> {
    match v {
        Value::Null => Ok(Map::new()),
        Value::Object(o) => Ok(o.clone()),
        _ => Err(Failure::invalid("metadata", "must be an object")),
    }
}

fn downgrade(v: &Value) -> Result<Option<Downgrade>, Failure> {
    let text = |v: Option<&Value>, field: &str| match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(Failure::invalid(field, "is required (a string like \"20%\", or a tier name or number)")),
    };
    match v {
        Value::Null => Ok(None),
        Value::Object(o) => {
            refuse_unknown(o, &[&["below", "min_quality"]])?;
            let below = text(o.get("below"), "downgrade.below")?;
            let quality = text(o.get("min_quality"), "downgrade.min_quality")?;
            Ok(Some(admin::parse_downgrade(&below, &quality)?))
        }
        _ => Err(Failure::invalid("downgrade", "must be {\"below\": \"20%\", \"min_quality\": \"adequate\"} or null")),
    }
}

fn limits_patch(o: &Map<String, Value>) -> Result<LimitsPatch, Failure> {
    let budget = |f: &str| o.get(f).map(|v| usd(f, v)).transpose();
    let n = |f: &str| o.get(f).map(|v| count(f, v)).transpose();
    Ok(LimitsPatch {
        budget_day: budget("budget_day_usd")?,
        budget_month: budget("budget_month_usd")?,
        budget_total: budget("budget_total_usd")?,
        rpm: n("rpm")?,
        tpm: n("tpm")?,
        concurrency: n("concurrency")?,
    })
}

fn tenant_input(o: &Map<String, Value>) -> Result<TenantInput, Failure> {
    refuse_unknown(o, &[&["name"], &LIMIT_FIELDS, &TENANT_FIELDS])?;
    let name = match o.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(Failure::invalid("name", "is required (a string)")),
    };
    Ok(TenantInput {
        name,
        limits: limits_patch(o)?.to_limits(),
        policy: o.get("policy").map(|v| opt_string("policy", v)).transpose()?.flatten(),
        downgrade: o.get("downgrade").map(downgrade).transpose()?.flatten(),
        metadata: o.get("metadata").map(metadata).transpose()?.unwrap_or_default(),
    })
}

fn tenant_patch(o: &Map<String, Value>) -> Result<TenantPatch, Failure> {
    refuse_unknown(o, &[&LIMIT_FIELDS, &TENANT_FIELDS])?;
    Ok(TenantPatch {
        limits: limits_patch(o)?,
        policy: o.get("policy").map(|v| opt_string("policy", v)).transpose()?,
        downgrade: o.get("downgrade").map(downgrade).transpose()?,
        metadata: o.get("metadata").map(metadata).transpose()?,
    })
}

fn key_input(o: &Map<String, Value>, now: i64) -> Result<KeyInput, Failure> {
    refuse_unknown(o, &[&LIMIT_FIELDS, &KEY_FIELDS])?;
    if o.contains_key("expires_at") {
        return Err(Failure::invalid("expires_at", "set a key's validity with \"expires_in\": \"30d\""));
    }
    let tenant = match o.get("tenant") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(Failure::invalid("tenant", "is required (a tenant's name)")),
    };
    let get = |f: &str| o.get(f).unwrap_or(&Value::Null);
    let expires_ms = match opt_string("expires_in", get("expires_in"))? {
        Some(p) => Some(now + tenancy::parse_period_ms(&p).map_err(|m| Failure::invalid("expires_in", m))?),
        None => None,
    };
    Ok(KeyInput {
        tenant,
        name: opt_string("name", get("name"))?,
        limits: limits_patch(o)?.to_limits(),
        routes: strings("routes", get("routes"))?,
        models: strings("models", get("models"))?,
        policy: opt_string("policy", get("policy"))?,
        default_route: opt_string("default_route", get("default_route"))?,
        cache: match get("cache") {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            _ => return Err(Failure::invalid("cache", "must be true, false or null")),
        },
        metadata: metadata(get("metadata"))?,
        expires_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;
    use http_body_util::BodyExt as _;

    struct TempDb(std::path::PathBuf);

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    async fn setup() -> (TempDb, Admin) {
        let db = TempDb(std::env::temp_dir().join(format!(
            "bourse-api-admin-{}-{}.db",
            std::process::id(),
            fastrand::u64(..)
        )));
        let routing = crate::config::Config::from_toml(
            "[policies.eu]\ndeny_hosting = [\"US\"]\n[routes.cheap]\nmin_quality = \"basic\"\n",
            &|_| None,
        )
        .unwrap()
        .routing;
        let ledger = Ledger::open(&format!("sqlite:{}", db.0.display())).await.unwrap();
        (db, Admin::new(ledger, routing))
    }

    async fn call(admin: &Admin, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let body = if body.is_null() { Bytes::new() } else { Bytes::from(body.to_string()) };
        let r = handle(admin, "admin:test", &method, path, query, body).await;
        let status = r.status();
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn tenants_over_http() {
        let (_db, a) = setup().await;
        let t = json!({"name": "acme", "budget_day_usd": "5", "budget_month_usd": 100.5, "rpm": 60,
                       "policy": "eu", "downgrade": {"below": "20%", "min_quality": "adequate"},
                       "metadata": {"team": "search"}});
        let (s, v) = call(&a, Method::POST, "/admin/v1/tenants", t.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["budget_day_usd"], "5.00");
        assert_eq!(v["budget_month_usd"], "100.50");
        assert_eq!(v["downgrade"], json!({"below": "20%", "min_quality": "adequate"}));
        assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
        let (s, v) = call(&a, Method::POST, "/admin/v1/tenants", t).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));

        let patch = json!({"budget_day_usd": null, "tpm": 1000, "downgrade": {"below": 10, "min_quality": 1250}});
        let (s, v) = call(&a, Method::PATCH, "/admin/v1/tenants/acme", patch).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!((v["budget_day_usd"].clone(), v["budget_month_usd"].clone()), (Value::Null, json!("100.50")));
        assert_eq!((v["tpm"].clone(), v["downgrade"]["min_quality"].clone()), (json!(1000), json!(1250)));
        let (_, list) = call(&a, Method::GET, "/admin/v1/tenants", Value::Null).await;
        assert_eq!(list["data"].as_array().unwrap().len(), 1);

        for (body, param) in [
            (json!({"name": "b", "budget_day_usd": "-1"}), "budget_day_usd"),
            (json!({"name": "b", "budget_day_usd": 0.0000000001}), "budget_day_usd"),
            (json!({"name": "b", "policy": "nope"}), "policy"),
            (json!({"name": "b", "colour": "red"}), "colour"),
            (json!({"name": "b", "downgrade": {"below": "0%", "min_quality": "basic"}}), "downgrade.below"),
            (json!({"budget_day_usd": "1"}), "name"),
        ] {
            let (s, v) = call(&a, Method::POST, "/admin/v1/tenants", body).await;
            assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some(param)), "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
        let (s, _) = call(&a, Method::GET, "/admin/v1/tenants/nobody", Value::Null).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = call(&a, Method::PUT, "/admin/v1/tenants", Value::Null).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        let (s, v) = call(&a, Method::POST, "/admin/v1/tenants", Value::Null).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
        let (s, _) = call(&a, Method::DELETE, "/admin/v1/tenants/acme", Value::Null).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn keys_over_http() {
        let (_db, a) = setup().await;
        call(&a, Method::POST, "/admin/v1/tenants", json!({"name": "acme"})).await;
        let body = json!({"tenant": "acme", "name": "ci", "budget_total_usd": "5.00", "routes": ["cheap"],
                          "models": ["openai/*"], "default_route": "cheap", "expires_in": "30d"});
        let (s, created) = call(&a, Method::POST, "/admin/v1/keys", body).await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        let secret = created["key"].as_str().unwrap().to_string();
        assert!(secret.starts_with(tenancy::SECRET_PREFIX));
        assert_eq!((created["state"].as_str(), created["budget_total_usd"].as_str()), (Some("active"), Some("5.00")));
        let id = created["id"].as_str().unwrap().to_string();

        let (s, one) = call(&a, Method::GET, &format!("/admin/v1/keys/{id}"), Value::Null).await;
        assert_eq!(s, StatusCode::OK);
        assert!(one.get("key").is_none());
        let (_, list) = call(&a, Method::GET, "/admin/v1/keys?tenant=acme", Value::Null).await;
        assert_eq!(list["data"].as_array().unwrap().len(), 1);
        assert!(!list.to_string().contains(&secret));
        assert!(!list.to_string().contains(&tenancy::secret_sha256(&secret)));
        let (_, none) = call(&a, Method::GET, "/admin/v1/keys?tenant=other", Value::Null).await;
        assert_eq!(none["data"], json!([]));

        let (s, rotated) = call(&a, Method::POST, &format!("/admin/v1/keys/{id}/rotate"), Value::Null).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(rotated["id"].as_str(), Some(id.as_str()));
        assert_ne!(rotated["key"].as_str(), Some(secret.as_str()));
        let (s, revoked) = call(&a, Method::POST, &format!("/admin/v1/keys/{id}/revoke"), Value::Null).await;
        assert_eq!((s, revoked["state"].as_str()), (StatusCode::OK, Some("revoked")));
        assert!(revoked["revoked_at"].is_string());

        let (s, v) = call(&a, Method::POST, "/admin/v1/keys", json!({"tenant": "ghost"})).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        let (s, v) = call(&a, Method::POST, "/admin/v1/keys", json!({"tenant": "acme", "routes": ["nope"]})).await;
        assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("routes")));
        let (s, v) = call(&a, Method::POST, "/admin/v1/keys", json!({"tenant": "acme", "expires_in": "soon"})).await;
        assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("expires_in")));
        let (s, _) = call(&a, Method::DELETE, &format!("/admin/v1/keys/{id}"), Value::Null).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

        let (_, audit) = call(&a, Method::GET, "/admin/v1/audit?limit=2", Value::Null).await;
        let actions: Vec<&str> =
            audit["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["key.revoke", "key.rotate"]);
        assert_eq!(audit["data"][0]["actor"], "admin:test");
        let (s, _) = call(&a, Method::GET, "/admin/v1/nothing", Value::Null).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}
