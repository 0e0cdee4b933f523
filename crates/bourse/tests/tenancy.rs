//! The tenancy store against both backends: every test below is one `async fn(url)` run by
//! `sqlite::<name>` (a temp file) and `postgres::<name>` (a fresh database; see
//! `common/pg.rs`).

#[macro_use]
#[path = "common/stores.rs"]
mod stores;

use bourse::ledger::{Ledger, LedgerError};
use bourse::limit::Limits;
use bourse::tenancy::{self, AuditEntry, Downgrade, Key, Tenant};
use serde_json::json;

both_stores!(tenants_round_trip, keys_round_trip, duplicates_conflict, deleting_a_tenant_waits_for_its_keys);

fn audit(action: &str, target: &str) -> AuditEntry {
    AuditEntry { ts_ms: 1_000, actor: "test".into(), action: action.into(), target: target.into(), detail: json!({}) }
}

fn tenant(name: &str) -> Tenant {
    let mut metadata = serde_json::Map::new();
    metadata.insert("team".into(), json!("search"));
    Tenant {
        name: name.into(),
        limits: Limits { budget_day: Some(450_000_000), rpm: Some(60), ..Limits::default() },
        policy: Some("default".into()),
        downgrade: Some(Downgrade { below_percent: 20, min_quality: 1300 }),
        metadata,
        created_ms: 1_000,
        updated_ms: 1_000,
    }
}

fn key(id: &str, tenant: &str) -> Key {
    Key {
        id: id.into(),
        tenant: tenant.into(),
        name: Some("ci".into()),
        secret_sha256: tenancy::secret_sha256(id),
        limits: Limits { budget_total: Some(5_000_000_000), concurrency: Some(2), ..Limits::default() },
        routes: vec!["cheap*".into()],
        models: vec!["openai/*".into()],
        policy: None,
        default_route: Some("auto".into()),
        cache: None,
        metadata: serde_json::Map::new(),
        created_ms: 2_000,
        expires_ms: Some(9_000),
        revoked_ms: None,
    }
}

async fn tenants_round_trip(url: &str) {
    let ledger = Ledger::open(url).await.unwrap();
    assert_eq!(ledger.directory_version().await.unwrap(), 0);
    let t = tenant("acme");
    ledger.put_tenant(&t, &audit("tenant.create", "acme"), true).await.unwrap();
    assert_eq!(ledger.tenant("acme").await.unwrap(), Some(t.clone()));
    assert_eq!(ledger.tenant("other").await.unwrap(), None);
    let changed = Tenant { limits: Limits::default(), downgrade: None, updated_ms: 5_000, ..t.clone() };
    ledger.put_tenant(&changed, &audit("tenant.set", "acme"), false).await.unwrap();
    assert_eq!(ledger.tenants().await.unwrap(), [changed]);
    assert_eq!(ledger.directory_version().await.unwrap(), 2);
    let trail = ledger.audit(10).await.unwrap();
    assert_eq!(trail.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(), ["tenant.set", "tenant.create"]);
    let missing = ledger.put_tenant(&tenant("ghost"), &audit("tenant.set", "ghost"), false).await.unwrap_err();
    assert!(matches!(missing, LedgerError::NotFound(_)), "{missing}");
    assert_eq!(ledger.directory_version().await.unwrap(), 2, "a refused change leaves no trace");
    assert_eq!(ledger.audit(10).await.unwrap().len(), 2);
}

async fn keys_round_trip(url: &str) {
    let ledger = Ledger::open(url).await.unwrap();
    ledger.put_tenant(&tenant("a"), &audit("tenant.create", "a"), true).await.unwrap();
    ledger.put_tenant(&tenant("b"), &audit("tenant.create", "b"), true).await.unwrap();
    let k1 = key("key_1", "a");
    let k2 = key("key_2", "b");
    ledger.put_key(&k1, &audit("key.create", "key_1"), true).await.unwrap();
    ledger.put_key(&k2, &audit("key.create", "key_2"), true).await.unwrap();
    assert_eq!(ledger.keys(None).await.unwrap(), [k1.clone(), k2.clone()]);
    assert_eq!(ledger.keys(Some("b")).await.unwrap(), std::slice::from_ref(&k2));
    assert_eq!(ledger.key("key_1").await.unwrap(), Some(k1.clone()));
    let revoked = Key { revoked_ms: Some(3_000), secret_sha256: tenancy::secret_sha256("new"), ..k1 };
    ledger.put_key(&revoked, &audit("key.revoke", "key_1"), false).await.unwrap();
    assert_eq!(ledger.key("key_1").await.unwrap(), Some(revoked));
    let (version, tenants, keys) = ledger.directory().await.unwrap();
    assert_eq!((version, tenants.len(), keys.len()), (5, 2, 2));
    let orphan = ledger.put_key(&key("key_3", "nobody"), &audit("key.create", "key_3"), true).await.unwrap_err();
    assert!(matches!(orphan, LedgerError::NotFound(_)), "{orphan}");
    let missing = ledger.put_key(&key("key_9", "a"), &audit("key.revoke", "key_9"), false).await.unwrap_err();
    assert!(matches!(missing, LedgerError::NotFound(_)), "{missing}");
}

async fn duplicates_conflict(url: &str) {
    let ledger = Ledger::open(url).await.unwrap();
    ledger.put_tenant(&tenant("a"), &audit("tenant.create", "a"), true).await.unwrap();
    let again = ledger.put_tenant(&tenant("a"), &audit("tenant.create", "a"), true).await.unwrap_err();
    assert!(matches!(again, LedgerError::Conflict(_)), "{again}");
    ledger.put_key(&key("key_1", "a"), &audit("key.create", "key_1"), true).await.unwrap();
    let same_id = ledger.put_key(&key("key_1", "a"), &audit("key.create", "key_1"), true).await.unwrap_err();
    assert!(matches!(same_id, LedgerError::Conflict(_)), "{same_id}");
    let same_secret = Key { secret_sha256: tenancy::secret_sha256("key_1"), ..key("key_2", "a") };
    let err = ledger.put_key(&same_secret, &audit("key.create", "key_2"), true).await.unwrap_err();
    assert!(matches!(err, LedgerError::Conflict(_)), "{err}");
    assert_eq!(ledger.directory_version().await.unwrap(), 2);
}

async fn deleting_a_tenant_waits_for_its_keys(url: &str) {
    let ledger = Ledger::open(url).await.unwrap();
    ledger.put_tenant(&tenant("a"), &audit("tenant.create", "a"), true).await.unwrap();
    let k = key("key_1", "a");
    ledger.put_key(&k, &audit("key.create", "key_1"), true).await.unwrap();
    let refused = ledger.delete_tenant("a", &audit("tenant.delete", "a")).await.unwrap_err();
    assert!(matches!(refused, LedgerError::Conflict(_)), "{refused}");
    ledger.put_key(&Key { revoked_ms: Some(5), ..k }, &audit("key.revoke", "key_1"), false).await.unwrap();
    ledger.delete_tenant("a", &audit("tenant.delete", "a")).await.unwrap();
    assert!(ledger.tenants().await.unwrap().is_empty());
    assert!(ledger.keys(None).await.unwrap().is_empty());
    let gone = ledger.delete_tenant("a", &audit("tenant.delete", "a")).await.unwrap_err();
    assert!(matches!(gone, LedgerError::NotFound(_)), "{gone}");
    assert_eq!(ledger.directory_version().await.unwrap(), 4);
    assert_eq!(ledger.audit(2).await.unwrap()[0].action, "tenant.delete");
}
