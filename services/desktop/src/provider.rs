//! Which AI provider a workflow calls, and the rules that follow from it: where its key may
//! go, whether it runs on this device. A value with no dependencies, so that `egress` can
//! enforce the rules without knowing how a provider is called (that is `providers`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Openai,
    Anthropic,
    Google,
    Ollama,
    Lmstudio,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::Openai,
        Provider::Anthropic,
        Provider::Google,
        Provider::Ollama,
        Provider::Lmstudio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Google => "google",
            Provider::Ollama => "ollama",
            Provider::Lmstudio => "lmstudio",
        }
    }

    /// Runs on this device: nothing leaves it.
    pub fn is_local(self) -> bool {
        matches!(self, Provider::Ollama | Provider::Lmstudio)
    }

    /// The one host a cloud provider's key may be sent to.
    pub fn host(self) -> Option<&'static str> {
        match self {
            Provider::Openai => Some("api.openai.com"),
            Provider::Anthropic => Some("api.anthropic.com"),
            Provider::Google => Some("generativelanguage.googleapis.com"),
            Provider::Ollama | Provider::Lmstudio => None,
        }
    }

    /// Where a run goes, for the badge next to it.
    pub fn destination(self) -> String {
        match self.host() {
            None => "stays on this device".to_owned(),
            Some(host) => format!("goes to {host}"),
        }
    }
}
