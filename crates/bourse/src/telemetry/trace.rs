//! Traces: one span per request and one child span per upstream attempt, sent as OTLP/HTTP
//! (protobuf) to `[telemetry] otlp_endpoint` by the OpenTelemetry SDK's batch processor on
//! the tokio runtime. Off unless configured: then nothing here runs on the request path.
//!
//! Exports go out through the gateway's own HTTP/1.1 client ([`crate::provider::http`]: TLS,
//! and the proxy variables as for upstreams), not the exporter's hyper client: that one
//! builds hyper with HTTP/2, which changes how the server's hyper code is compiled and costs
//! every request instructions even with traces off (bench/RESULTS.md).
//!
//! Attributes follow the OpenTelemetry GenAI semantic conventions (`gen_ai.operation.name`,
//! `gen_ai.provider.name` (the configured provider's id), `gen_ai.request.model`,
//! `gen_ai.response.*`, `gen_ai.usage.*`, `error.type`) plus Bourse's own `bourse.*`. Prompt
//! and completion text go on spans only with `[telemetry] capture_content = true`. A request
//! that carries a W3C `traceparent` continues the caller's trace.

use crate::provider::http::Client;
use axum::http::{header, HeaderMap, HeaderValue, Request, Response, Uri};
use bytes::Bytes;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How long one export may take, connecting included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a collector's answer that is read (its body is only logged at debug).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The exporter and the tracer the gateway's spans come from.
#[derive(Debug)]
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracer {
    /// Start exporting to `endpoint` (the full traces URL). Needs a tokio runtime.
    pub fn start(endpoint: &str) -> Result<Tracer, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let uri: Uri = endpoint.parse().map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let transport = Transport { endpoint: uri, client: Mutex::new(None) };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(transport)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        let resource = opentelemetry_sdk::Resource::builder().with_service_name("bourse").build();
        let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
        let tracer = opentelemetry::trace::TracerProvider::tracer_with_scope(
            &provider,
            opentelemetry::InstrumentationScope::builder("bourse").with_version(env!("CARGO_PKG_VERSION")).build(),
        );
        Ok(Tracer { provider, tracer })
    }

    /// Send what is batched and stop. The SDK waits for its export task, which runs on the
    /// runtime: the wait happens on a blocking thread, never on a worker.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "traces: flush failed");
            }
            let _ = provider.shutdown();
        })
        .await;
    }

    /// Send what is batched now.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }

    /// A request's span: `{operation} {model}` as the client named it, a child of the caller's
    /// `traceparent` if it sent one.
    pub fn request(&self, operation: &'static str, model: &str, headers: Option<&HeaderMap>) -> RequestSpan {
        let parent = match headers {
            Some(h) if h.contains_key("traceparent") => TraceContextPropagator::new().extract(&Headers(h)),
            _ => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(format!("{operation} {model}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("gen_ai.operation.name", operation),
                KeyValue::new("gen_ai.request.model", model.to_string()),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestSpan { cx: parent.with_span(span) }
    }

    /// An upstream attempt's span, a child of its request's.
    pub fn attempt(&self, parent: &RequestSpan, a: &AttemptStart<'_>) -> Span {
        self.tracer
            .span_builder(format!("{} {}", a.operation, a.model))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("gen_ai.operation.name", a.operation),
                KeyValue::new("gen_ai.provider.name", a.provider.to_string()),
                KeyValue::new("gen_ai.request.model", a.model.to_string()),
                KeyValue::new("bourse.attempt", i64::from(a.number)),
            ])
            .start_with_context(&self.tracer, &parent.cx)
    }
}

/// What an attempt's span starts with.
pub struct AttemptStart<'a> {
    pub operation: &'static str,
    pub provider: &'a str,
    pub model: &'a str,
    pub number: u32,
}

/// A request's span, live until the request ends (a stream's end, for a stream).
#[derive(Debug)]
pub struct RequestSpan {
    cx: Context,
}

/// What ended an attempt or a request, for its span.
#[derive(Debug, Default)]
pub struct Outcome<'a> {
    pub provider: Option<&'a str>,
    pub response_model: Option<&'a str>,
    pub response_id: Option<&'a str>,
    pub finish_reasons: Vec<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_nanos: Option<i64>,
    pub status: u16,
    /// The error label, if it failed.
    pub error: Option<&'a str>,
    pub route_reason: Option<&'a str>,
    pub input_messages: Option<String>,
    pub output_messages: Option<String>,
}

fn outcome_attributes(o: Outcome<'_>) -> (Vec<KeyValue>, Option<String>) {
    let mut kv = Vec::with_capacity(12);
    let mut push = |k: &'static str, v: Option<opentelemetry::Value>| {
        if let Some(v) = v {
            kv.push(KeyValue::new(k, v));
        }
    };
    push("gen_ai.provider.name", o.provider.map(|s| s.to_string().into()));
    push("gen_ai.response.model", o.response_model.map(|s| s.to_string().into()));
    push("gen_ai.response.id", o.response_id.map(|s| s.to_string().into()));
    if !o.finish_reasons.is_empty() {
        let list: Vec<opentelemetry::StringValue> = o.finish_reasons.into_iter().map(Into::into).collect();
        push("gen_ai.response.finish_reasons", Some(opentelemetry::Value::Array(list.into())));
    }
    push("gen_ai.usage.input_tokens", o.input_tokens.map(|t| (t as i64).into()));
    push("gen_ai.usage.output_tokens", o.output_tokens.map(|t| (t as i64).into()));
    push("bourse.cost_usd", o.cost_nanos.map(|c| (c as f64 / 1e9).into()));
    push("http.response.status_code", Some(i64::from(o.status).into()));
    push("bourse.route.reason", o.route_reason.map(|s| s.to_string().into()));
    push("error.type", o.error.map(|s| s.to_string().into()));
    push("bourse.error.kind", o.error.map(|s| s.to_string().into()));
    push("gen_ai.input.messages", o.input_messages.map(Into::into));
    push("gen_ai.output.messages", o.output_messages.map(Into::into));
    (kv, o.error.map(str::to_string))
}

impl RequestSpan {
    /// Set one attribute now.
    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// End the request's span with its outcome.
    pub fn end(self, o: Outcome<'_>) {
        let (kv, error) = outcome_attributes(o);
        let span = self.cx.span();
        span.set_attributes(kv);
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end();
    }
}

/// End an attempt's span with its outcome.
pub fn end_attempt(mut span: Span, o: Outcome<'_>) {
    let (kv, error) = outcome_attributes(o);
    span.set_attributes(kv);
    if let Some(e) = error {
        span.set_status(Status::error(e));
    }
    span.end();
}

/// Request headers as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The exporter's HTTP client: each export is a POST on a pooled connection of the gateway's
/// own client, within [`EXPORT_TIMEOUT`].
#[derive(Debug)]
struct Transport {
    endpoint: Uri,
    /// A client for the headers the exporter sends (content type, and any from
    /// `OTEL_EXPORTER_OTLP_HEADERS`): the same on every export, so made once, on the first.
    client: Mutex<Option<(HeaderMap, Client)>>,
}

impl Transport {
    fn client(&self, headers: &HeaderMap) -> Result<Client, String> {
        let mut kept = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((h, client)) = &*kept {
            if h == headers {
                return Ok(client.clone());
            }
        }
        let client = Client::new(&self.endpoint, headers, EXPORT_TIMEOUT)?;
        *kept = Some((headers.clone(), client.clone()));
        Ok(client)
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let (mut parts, body) = request.into_parts();
        // The client writes these itself.
        parts.headers.remove(header::HOST);
        parts.headers.remove(header::CONTENT_LENGTH);
        let client = self.client(&parts.headers)?;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let exchange = async {
            let answer = client.post(path, None, &body).await?;
            let retry_after = answer.header("retry-after").and_then(|v| HeaderValue::from_str(v).ok());
            let status = answer.status;
            Ok::<_, crate::provider::http::HttpError>((status, retry_after, answer.body.bytes(MAX_ANSWER_BYTES).await?))
        };
        let (status, retry_after, body) = tokio::time::timeout(EXPORT_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer from the collector within {EXPORT_TIMEOUT:?}"))??;
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        if let Some(v) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        Ok(resp)
    }
}

impl opentelemetry_http::HttpClient for Transport {
    // The trait is declared with `async_trait`: this is the signature that expands to.
    fn send_bytes<'s, 'f>(
        &'s self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, opentelemetry_http::HttpError>> + Send + 'f>>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(self.send(request))
    }
}
