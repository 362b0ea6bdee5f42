//! AI providers, called straight from the device with the person's own key, through their
//! real APIs: OpenAI-style chat completions (which Ollama and LM Studio also serve), Anthropic
//! messages, Gemini generateContent.

use anyhow::Context;
use secrecy::SecretString;

use serde_json::{Value, json};

use crate::egress::{Egress, Purpose, Request};
use crate::store::{Settings, Workflow};
use crate::telemetry::Telemetry;

pub use crate::provider::Provider;

/// The calling half of a provider: its identity and rules are in `provider`.
impl Provider {
    /// The request for one prompt. `base` is the local runtime's URL for local providers.
    pub fn chat(self, base: &str, model: &str, prompt: &str, key: Option<SecretString>) -> Request {
        let (url, body, key, headers) = match self {
            Provider::Openai | Provider::Ollama | Provider::Lmstudio => {
                let url = match self {
                    Provider::Openai => "https://api.openai.com/v1/chat/completions".to_owned(),
                    _ => format!("{}/v1/chat/completions", base.trim_end_matches('/')),
                };
                let body =
                    json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
                let key = key.map(|k| {
                    (
                        "authorization",
                        SecretString::from(format!(
                            "Bearer {}",
                            secrecy::ExposeSecret::expose_secret(&k)
                        )),
                    )
                });
                (url, body, key, vec![])
            }
            Provider::Anthropic => (
                "https://api.anthropic.com/v1/messages".to_owned(),
                json!({"model": model, "max_tokens": 1024, "messages": [{"role": "user", "content": prompt}]}),
                key.map(|k| ("x-api-key", k)),
                vec![("anthropic-version", "2023-06-01".to_owned())],
            ),
            Provider::Google => (
                format!(
                    "https://generativelanguage.googleapis.com/v1beta/models/{model}:generateContent"
                ),
                json!({"contents": [{"parts": [{"text": prompt}]}]}),
                key.map(|k| ("x-goog-api-key", k)),
                vec![],
            ),
        };
        Request {
            purpose: Purpose::Provider(self),
            method: "POST",
            url,
            content_type: Some("application/json"),
            body: body.to_string().into_bytes(),
            key,
            headers,
        }
    }

    /// The text of a reply.
    pub fn reply_text(self, body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let text = match self {
            Provider::Openai | Provider::Ollama | Provider::Lmstudio => {
                v["choices"][0]["message"]["content"].as_str()
            }
            Provider::Anthropic => v["content"][0]["text"].as_str(),
            Provider::Google => v["candidates"][0]["content"]["parts"][0]["text"].as_str(),
        };
        text.map(str::to_owned)
    }
}

/// Runs one workflow, for the window and the command line alike: its provider's key from
/// `key` (asked only for a cloud provider), one request through egress, the reply's text. Once a request was attempted, the run
/// and the model are recorded through the telemetry gate, whatever the outcome.
pub fn run_workflow(
    w: &Workflow,
    settings: &Settings,
    key: impl FnOnce(&str) -> anyhow::Result<SecretString>,
    egress: &Egress,
    telemetry: &Telemetry,
) -> anyhow::Result<String> {
    let key = match w.provider.is_local() {
        true => None,
        false => Some(key(w.provider.name())?),
    };
    let base = match w.provider {
        Provider::Lmstudio => &settings.lmstudio_url,
        _ => &settings.ollama_url,
    };
    let reply = egress
        .send(w.provider.chat(base, &w.model, &w.prompt, key))
        .map_err(anyhow::Error::from)
        .and_then(|res| {
            anyhow::ensure!(
                (200..300).contains(&res.status),
                "the provider answered {}",
                res.status
            );
            w.provider
                .reply_text(&res.body)
                .context("an unexpected reply")
        });
    let target = if w.provider.is_local() {
        "local"
    } else {
        "cloud"
    };
    let outcome = if reply.is_ok() { "ok" } else { "error" };
    let event = |name, props: Value| {
        if let Value::Object(props) = props {
            telemetry.record(name, props);
        }
    };
    event(
        "workflow.run",
        json!({"nodes": "1", "outcome": outcome, "target": target}),
    );
    event(
        "model.used",
        json!({"kind": target, "provider": w.provider.name()}),
    );
    reply
}
