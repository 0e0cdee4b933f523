//! `/dashboard`: spend, savings, the model mix, budgets, routing and the price–quality market,
//! as server-rendered pages for operators holding an admin key.
//!
//! Pages: `overview`, `models`, `tenants`, `market`, `routing` (`/dashboard/<page>?window=1h|
//! 24h|7d|30d`, the market also `&policy=<name>`). Each is one HTML document with its charts
//! as inline SVG drawn here ([`chart`]) and a table behind every chart; its stylesheet and a
//! few lines of script (the light/dark toggle) are served from `/dashboard/static/`, so a page
//! loads nothing from anywhere else and works offline. Pages reload themselves every
//! `[dashboard] refresh` (the same URL, so the window stays). Every read goes through
//! [`data`]; every string from the ledger, the catalog or the config is escaped
//! ([`html::esc`]).
//!
//! Access: only `server.admin_keys`. `GET /dashboard/login` shows a form that `POST`s the key;
//! a match (compared in constant time with every admin key) starts a session ([`session`]) and
//! sets its cookie (`HttpOnly; SameSite=Strict; Path=/dashboard`, and `Secure` when the
//! request came through HTTPS — `x-forwarded-proto: https` — or `[dashboard] secure_cookie`
//! says so). Client keys (config or virtual) are refused like any other wrong key. Without a
//! session a page answers `303` to the login form. The only state-changing requests are
//! logging in and out: both must come from the dashboard's own pages (`Sec-Fetch-Site:
//! same-origin`, or without that header an `Origin` naming the request's `Host`), so another
//! site cannot post them (the session cookie being `SameSite=Strict` already keeps it off
//! cross-site requests). With no admin key configured the dashboard is off: every page
//! answers `403` saying so, as `/admin/v1` does.
//!
//! The dashboard sits below [`crate::state`]: the server hands it a [`View`] of what it may
//! read, and the sessions live in the [`Dashboard`] the state holds.

mod chart;
pub mod data;
mod html;
pub mod market;
mod pages;
mod session;

use crate::catalog::Catalog;
use crate::config::{DashboardConfig, Secret};
use crate::ledger::Ledger;
use crate::route::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use session::Sessions;
use std::time::Duration;

/// The dashboard's own state: its sessions and settings.
#[derive(Debug)]
pub struct Dashboard {
    sessions: Sessions,
    settings: DashboardConfig,
}

impl Dashboard {
    pub fn new(settings: DashboardConfig) -> Dashboard {
        Dashboard { sessions: Sessions::default(), settings }
    }

    /// Live sessions (for tests and logs).
    pub fn sessions(&self) -> usize {
        self.sessions.count()
    }
}

/// What the dashboard reads: the ledger (None when it is off), the catalog and the savings
/// reference, the router (routes, policies, circuits) and the admin keys.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub ledger: Option<&'a Ledger>,
    pub catalog: &'a Catalog,
    /// `provider/model` of the savings reference.
    pub reference: &'a str,
    pub router: &'a Router,
    pub admin_keys: &'a [Secret],
    /// Their ids (same order), for the session's actor.
    pub admin_key_ids: &'a [std::sync::Arc<str>],
}

/// Largest login form accepted (a key and a page name).
const MAX_FORM_BYTES: usize = 4096;
/// How long a login form's body may take to arrive.
const FORM_TIMEOUT: Duration = Duration::from_secs(10);

const CSS: &str = include_str!("dashboard/assets/app.css");
const JS: &str = include_str!("dashboard/assets/app.js");

/// Every page's headers: no caching, no framing, no sniffing, no referrer, and a policy that
/// lets the page load only the dashboard's own stylesheet and script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn html(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

fn redirect(to: &str) -> Response {
    let mut resp = html(StatusCode::SEE_OTHER, String::new());
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A short page for errors: what went wrong, and a way back.
fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!("<p>{}</p><p><a href=\"/dashboard/overview\">Back to the dashboard</a></p>", html::esc(text));
    html(status, html::bare(title, &body))
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut resp =
        message(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", &format!("This address takes {allow}."));
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Serves everything under `/dashboard`.
pub async fn handle(dash: &Dashboard, view: View<'_>, req: Request) -> Response {
    let rest = req.uri().path().strip_prefix("/dashboard").unwrap_or("").to_string();
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    match rest.as_str() {
        "/static/app.css" if get => return asset("text/css; charset=utf-8", CSS),
        "/static/app.js" if get => return asset("text/javascript; charset=utf-8", JS),
        "/static/app.css" | "/static/app.js" => return method_not_allowed("GET, HEAD"),
        _ => {}
    }
    if view.admin_keys.is_empty() {
        return message(
            StatusCode::FORBIDDEN,
            "Dashboard disabled",
            "The dashboard is off: set server.admin_keys in the config to turn it on.",
        );
    }
    let now = crate::timespec::now_ms();
    let session = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::from_cookie)
        .map(str::to_string);
    let actor = session.as_deref().and_then(|id| dash.sessions.check(id, now));
    match rest.as_str() {
        "/login" if get => match actor {
            Some(_) => redirect("/dashboard/overview"),
            None => html(StatusCode::OK, pages::login(None, next_page(req.uri().query()))),
        },
        "/login" if method == Method::POST => login(dash, view, req, now).await,
        "/logout" if method == Method::POST => logout(dash, req.headers(), session.as_deref()),
        "/login" => method_not_allowed("GET, HEAD, POST"),
        "/logout" => method_not_allowed("POST"),
        "" | "/" if get => redirect(if actor.is_some() { "/dashboard/overview" } else { "/dashboard/login" }),
        page if html::PAGES.iter().any(|(p, _)| page.strip_prefix('/') == Some(*p)) => {
            if !get {
                return method_not_allowed("GET, HEAD");
            }
            let page = &page[1..];
            if actor.is_none() {
                return redirect(&format!("/dashboard/login?next={page}"));
            }
            let query = axum::extract::Query::<pages::PageQuery>::try_from_uri(req.uri());
            let Ok(axum::extract::Query(query)) = query else {
                return message(StatusCode::BAD_REQUEST, "Bad request", "The query string could not be read.");
            };
            match pages::render(page, &view, &dash.settings, &query, now).await {
                Ok(body) => html(StatusCode::OK, body),
                Err(pages::PageError::BadInput(m)) => message(StatusCode::BAD_REQUEST, "Bad request", &m),
                Err(pages::PageError::Ledger(e)) => {
                    tracing::warn!(error = %e, page, "dashboard: ledger read failed");
                    message(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Ledger unavailable",
                        &format!("The ledger could not be read: {e}"),
                    )
                }
            }
        }
        _ => message(StatusCode::NOT_FOUND, "Not found", "There is no dashboard page here."),
    }
}

/// `next=<page>` from the login form's query, if it names a page.
fn next_page(query: Option<&str>) -> Option<&'static str> {
    let next = query?.split('&').find_map(|kv| kv.strip_prefix("next="))?;
    html::PAGES.iter().map(|(p, _)| *p).find(|p| *p == next)
}

/// The request came from the dashboard's own pages: `Sec-Fetch-Site: same-origin`, or (from
/// a browser that does not send it) an `Origin` whose host and port are the request's `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// The cookie's attributes; `Secure` over HTTPS or when configured.
fn cookie(value: &str, max_age_secs: u64, headers: &HeaderMap, settings: &DashboardConfig) -> HeaderValue {
    let https = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if settings.secure_cookie || https { "; Secure" } else { "" };
    let text = format!(
        "{}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}",
        session::COOKIE
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("bourse_session=; Max-Age=0"))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    key: String,
    #[serde(default)]
    next: Option<String>,
}

async fn login(dash: &Dashboard, view: View<'_>, req: Request, now: i64) -> Response {
    use http_body_util::BodyExt as _;
    if !same_origin(req.headers()) {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "A login must come from the dashboard's own login form (this request came from another site).",
        );
    }
    let form_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    if !form_type {
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported form",
            "Send the login form as application/x-www-form-urlencoded.",
        );
    }
    let headers = req.headers().clone();
    let body = http_body_util::Limited::new(req.into_body(), MAX_FORM_BYTES);
    let bytes = match tokio::time::timeout(FORM_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return message(StatusCode::PAYLOAD_TOO_LARGE, "Form too large", "The login form is larger than a key.")
        }
        Err(_) => return message(StatusCode::REQUEST_TIMEOUT, "Too slow", "The login form did not arrive in time."),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&bytes) else {
        return html(StatusCode::BAD_REQUEST, pages::login(Some("The form needs a key."), None));
    };
    let next = html::PAGES.iter().map(|(p, _)| *p).find(|p| form.next.as_deref() == Some(*p));
    let presented = form.key.trim().as_bytes();
    let mut matched = None;
    // Every key is compared, so the time taken does not say which one nearly matched.
    for (i, k) in view.admin_keys.iter().enumerate() {
        if session::ct_eq(presented, k.expose().as_bytes()) {
            matched = Some(i);
        }
    }
    let Some(i) = matched else {
        tracing::warn!("dashboard: login refused (not an admin key)");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(
                Some(
                    "That is not an admin key. The dashboard takes one of server.admin_keys; client keys are refused.",
                ),
                next,
            ),
        );
    };
    let actor = format!("admin:{}", view.admin_key_ids[i]);
    let ttl = i64::try_from(dash.settings.session_ttl.as_millis()).unwrap_or(i64::MAX);
    let Ok(id) = dash.sessions.create(&actor, now, ttl) else {
        return message(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "The system's random number generator failed.");
    };
    tracing::info!(actor, "dashboard: login");
    let mut resp = redirect(&format!("/dashboard/{}", next.unwrap_or("overview")));
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&id, dash.settings.session_ttl.as_secs(), &headers, &dash.settings));
    resp
}

fn logout(dash: &Dashboard, headers: &HeaderMap, session: Option<&str>) -> Response {
    if !same_origin(headers) {
        return message(StatusCode::FORBIDDEN, "Refused", "A log-out must come from the dashboard's own pages.");
    }
    if let Some(actor) = session.and_then(|id| dash.sessions.end(id)) {
        tracing::info!(actor, "dashboard: logout");
    }
    let mut resp = redirect("/dashboard/login");
    resp.headers_mut().insert(header::SET_COOKIE, cookie("", 0, headers, &dash.settings));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_same_origin_posts_pass() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site"), ("origin", "http://a:1"), ("host", "a:1")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(same_origin(&headers(&[("origin", "http://127.0.0.1:4545"), ("host", "127.0.0.1:4545")])));
        assert!(same_origin(&headers(&[("origin", "https://Bourse.example"), ("host", "bourse.example")])));
        assert!(!same_origin(&headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:4545")])));
        assert!(!same_origin(&headers(&[("origin", "null"), ("host", "127.0.0.1:4545")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:4545")])), "neither header: refused");
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_https() {
        let plain = DashboardConfig::default();
        let c = cookie("abc", 60, &HeaderMap::new(), &plain);
        assert_eq!(c, "bourse_session=abc; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=60");
        let c = cookie("abc", 60, &headers(&[("x-forwarded-proto", "https")]), &plain);
        assert!(c.to_str().unwrap().ends_with("; Secure"));
        let c = cookie("abc", 60, &HeaderMap::new(), &DashboardConfig { secure_cookie: true, ..plain });
        assert!(c.to_str().unwrap().ends_with("; Secure"));
        assert_eq!(next_page(Some("next=market")), Some("market"));
        assert_eq!(next_page(Some("next=//evil.example")), None);
    }
}
