//! Store tests against both backends. `both_stores!(a, b)` turns each `async fn NAME(url:
//! &str)` of the including file into `sqlite::NAME` (a SQLite file in a fresh temp dir, at a
//! nested path so opening also proves the parent dir gets created; the dir is removed after)
//! and `postgres::NAME` (a fresh database on the test cluster, dropped after: see `pg.rs`).
//!
//! Include it with `#[macro_use] #[path = "common/stores.rs"] mod stores;`: it brings the
//! `pg` module along (`stores::pg`).

#![allow(dead_code)]

#[path = "pg.rs"]
pub mod pg;

use std::path::PathBuf;

/// A fresh temp dir for one test's SQLite file, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("bourse-store-{}-{tag}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// `sqlite:` and a file under a directory that does not exist yet.
    pub fn url(&self) -> String {
        format!("sqlite:{}", self.0.join("data/ledger.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = crate::stores::TempDir::new(stringify!($name));
                    super::$name(&dir.url()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::stores::pg::Database::create(stringify!($name)).await;
                    super::$name(&db.url).await;
                    db.drop().await;
                }
            )*
        }
    };
}
