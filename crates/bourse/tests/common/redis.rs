//! A throwaway `redis-server` for tests: one per test, on a free 127.0.0.1 port, with no
//! persistence and its working dir in a fresh temp dir; killed and the dir removed when the
//! handle drops (a panicking test unwinds through that too). `stop` and `start` let a test
//! take the server away and bring it back on the same port.
//! Only Debian's `/usr/bin/redis-server` is used; `scripts/redis` installs it.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/bin/redis-server";

pub struct RedisServer {
    pub port: u16,
    pub url: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server (panics when redis-server is not installed: a test must not pass
    /// without the store it checks).
    pub fn start() -> RedisServer {
        assert!(
            std::path::Path::new(BIN).is_file(),
            "{BIN} is not installed: run ./scripts/redis (it installs Debian's redis-server)"
        );
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "bourse-redis-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // The port is free when probed but could be taken before redis binds it: retry on
        // another. One handle across the tries: dropping one removes the dir the next needs.
        let mut server = RedisServer { port: 0, url: String::new(), dir: dir.clone(), child: None };
        for _ in 0..5 {
            server.port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            server.url = format!("redis://127.0.0.1:{}/", server.port);
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start; log:\n{}", std::fs::read_to_string(dir.join("log")).unwrap_or_default());
    }

    /// Starts the server again on its port (after [`RedisServer::stop`]), empty.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        assert!(self.spawn(), "redis-server did not restart on port {}", self.port);
    }

    /// Kills the server (SIGKILL: as if its machine went away).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("log")).unwrap();
        let mut child = Command::new(BIN)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // exited: most likely the port was taken
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
