//! A headless Chromium driven over the DevTools protocol, for the dashboard tests.
//!
//! Chromium is started with `--remote-debugging-pipe`: it reads commands from its fd 3 and
//! writes answers and events to its fd 4, each message one JSON text ended by a NUL byte. So
//! no port, no websocket and no client library: two pipes, set up in the child between
//! `fork` and `exec`. A reader thread splits what arrives into messages; [`Browser::call`]
//! sends a command and returns its result, keeping the events that arrive meanwhile for
//! [`Browser::events`]. Every call has a deadline, so a hung browser fails the test instead
//! of stalling it. The browser runs with a throwaway profile and without the background
//! services that would make requests of their own; it is killed on drop.
//!
//! The binary is `BOURSE_CHROMIUM` or Debian's `/usr/bin/chromium` (`scripts/chromium`
//! installs it); `crates/bourse/build.rs` sets `cfg(chromium)` when it exists, and the tests
//! that need it are ignored (with that reason) when it does not.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long one command (or one awaited event) may take.
const DEADLINE: Duration = Duration::from_secs(30);

pub fn binary() -> PathBuf {
    std::env::var_os("BOURSE_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

pub struct Browser {
    child: Child,
    to_browser: std::fs::File,
    from_browser: Receiver<Value>,
    next_id: u64,
    /// Events received and not yet taken, in arrival order.
    pending: Vec<Value>,
    /// Every event received, for the checks at the end (console errors, requests).
    log: Vec<Value>,
    profile: PathBuf,
}

/// A pipe whose two ends close on `exec` (so no other child started meanwhile inherits them).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    pub fn launch() -> Browser {
        let profile =
            std::env::temp_dir().join(format!("bourse-chromium-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&profile).unwrap();
        let (browser_reads, we_write) = pipe();
        let (we_read, browser_writes) = pipe();
        let (r, w) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut cmd = Command::new(binary());
        cmd.args([
            "--headless",
            // Containers (and root) have no user namespaces for the sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--hide-scrollbars",
            "--mute-audio",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) on
        // descriptors that are open in the child. The ends are first copied above 10 so that
        // neither already sits on 3 or 4 (dup2 onto itself would keep its close-on-exec
        // flag); dup2 then gives 3 and 4 without it, so exactly these two reach Chromium.
        unsafe {
            cmd.pre_exec(move || {
                let a = libc::fcntl(r, libc::F_DUPFD, 10);
                let b = libc::fcntl(w, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
        drop((browser_reads, browser_writes));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut reader = std::fs::File::from(we_read);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|b| *b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    let Ok(v) = serde_json::from_slice::<Value>(&msg[..end]) else { continue };
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Browser {
            child,
            to_browser: std::fs::File::from(we_write),
            from_browser: rx,
            next_id: 1,
            pending: Vec::new(),
            log: Vec::new(),
            profile,
        }
    }

    fn recv(&mut self, until: Instant) -> Option<Value> {
        let left = until.saturating_duration_since(Instant::now());
        match self.from_browser.recv_timeout(left) {
            Ok(v) => Some(v),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("chromium closed the DevTools pipe (it exited)"),
        }
    }

    /// Sends `method` (to the page `session`, or the browser) and returns its result; a
    /// protocol error fails the test.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).expect("write to chromium");
        let until = Instant::now() + DEADLINE;
        loop {
            let Some(v) = self.recv(until) else { panic!("{method}: no answer within {DEADLINE:?}") };
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            self.log.push(v.clone());
            self.pending.push(v);
        }
    }

    /// Waits for the event `method` on `session` (one already received counts), consuming it.
    pub fn wait_event(&mut self, session: &str, method: &str) -> Value {
        let matches = |v: &Value| v["method"] == method && v["sessionId"] == session;
        if let Some(i) = self.pending.iter().position(matches) {
            return self.pending.remove(i);
        }
        let until = Instant::now() + DEADLINE;
        loop {
            let Some(v) = self.recv(until) else { panic!("no {method} within {DEADLINE:?}") };
            self.log.push(v.clone());
            if matches(&v) {
                return v;
            }
            self.pending.push(v);
        }
    }

    /// Drops the events received so far from the pending list (they stay in the log).
    pub fn forget_pending(&mut self) {
        self.pending.clear();
    }

    /// Every event received so far, with those still arriving collected for `settle`.
    pub fn events(&mut self, settle: Duration) -> &[Value] {
        let until = Instant::now() + settle;
        while let Some(v) = self.recv(until) {
            self.log.push(v.clone());
            self.pending.push(v);
        }
        &self.log
    }

    /// A new page, attached with its own session, with the domains the checks read enabled.
    pub fn page(&mut self) -> String {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = self.call(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        let session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable", "Network.enable"] {
            self.call(Some(&session), domain, json!({}));
        }
        self.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        session
    }

    /// Loads `url` and waits for its load event.
    pub fn navigate(&mut self, session: &str, url: &str) {
        self.pending.retain(|v| v["method"] != "Page.loadEventFired");
        let r = self.call(Some(session), "Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigate {url}: {r}");
        self.wait_event(session, "Page.loadEventFired");
    }

    /// Runs `expression` in the page and returns its value (promises awaited).
    pub fn eval(&mut self, session: &str, expression: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Runs `expression` (which navigates: a form submission) and waits for the next page.
    pub fn eval_and_wait_load(&mut self, session: &str, expression: &str) {
        self.pending.retain(|v| v["method"] != "Page.loadEventFired");
        self.eval(session, expression);
        self.wait_event(session, "Page.loadEventFired");
    }

    /// A PNG of the whole page.
    pub fn screenshot(&mut self, session: &str) -> Vec<u8> {
        use base64::Engine as _;
        let metrics = self.call(Some(session), "Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let (w, h) = (size["width"].as_f64().unwrap_or(1280.0), size["height"].as_f64().unwrap_or(900.0));
        let shot = self.call(
            Some(session),
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}),
        );
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
