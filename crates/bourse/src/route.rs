//! Addressing: which provider and upstream model serve the model a client named.
//!
//! `provider/model` picks that provider (the rest, slashes and all, is the upstream model
//! name, so `together/meta-llama/Llama-3.3-70B` works). A bare name goes to a provider that
//! lists it in its `models`. This is the seam where price-based routing across models
//! will plug in: it returns a [`Target`], and later a ranked list of them.

use crate::error::{Error, ErrorKind, Result};
use crate::provider::Provider;
use std::sync::Arc;

/// Where one attempt goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub upstream_model: String,
}

/// The configured providers, in config order.
#[derive(Debug, Default)]
pub struct Providers {
    list: Vec<Arc<Provider>>,
}

impl Providers {
    pub fn new(list: Vec<Arc<Provider>>) -> Self {
        Providers { list }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Provider>> {
        self.list.iter().find(|p| p.id == id)
    }

    /// Resolve a client's model name to a target.
    pub fn resolve(&self, model: &str) -> Result<Target> {
        if let Some((prefix, rest)) = model.split_once('/') {
            if let Some(p) = self.get(prefix) {
                if rest.is_empty() {
                    return Err(Error {
                        param: Some("model".into()),
                        ..Error::new(
                            ErrorKind::ModelNotFound,
                            format!("model '{model}' names provider '{prefix}' but no model"),
                        )
                    });
                }
                return Ok(Target { provider: p.clone(), upstream_model: rest.to_string() });
            }
        }
        if let Some(p) = self.list.iter().find(|p| p.models.iter().any(|m| m == model)) {
            return Ok(Target { provider: p.clone(), upstream_model: model.to_string() });
        }
        Err(Error {
            param: Some("model".into()),
            ..Error::new(ErrorKind::ModelNotFound, self.not_found_message(model))
        })
    }

    fn not_found_message(&self, model: &str) -> String {
        if self.list.is_empty() {
            return format!(
                "model '{model}' not found: no providers are configured (set a provider key such as OPENAI_API_KEY, or add [providers.*] to the config)"
            );
        }
        let looked: Vec<String> = self
            .list
            .iter()
            .map(|p| {
                if p.models.is_empty() {
                    format!("{} (no models listed)", p.id)
                } else {
                    format!("{} ({})", p.id, p.models.join(", "))
                }
            })
            .collect();
        format!(
            "model '{model}' not found. Name it as 'provider/model' with one of the providers [{}], or list it under a provider's `models`. Looked in: {}",
            self.list.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", "),
            looked.join("; ")
        )
    }
}
