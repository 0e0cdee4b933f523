//! Provider presets: every vendor endpoint Bourse knows, as data.
//!
//! A preset fills in what a user would otherwise have to look up: the wire dialect, the
//! base URL, how the key is sent, which environment variable holds it in a zero-config
//! start, where the provider processes requests, whose catalog prices apply, and the
//! quirks the shared client must handle for it. Adding a vendor endpoint that speaks a
//! known dialect (OpenAI, Anthropic Messages, Gemini) is a new row here, never a new
//! module. Base URLs and quirks come from the vendors' API documentation.

use crate::canonical::Dialect;

/// How the API key travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>` — every OpenAI-dialect vendor.
    Bearer,
    /// `x-api-key: <key>` — Anthropic and the Anthropic-compatible endpoints.
    XApiKey,
    /// `x-goog-api-key: <key>` — the Gemini API.
    GoogApiKey,
}

/// Vendor behaviours the shared client must handle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Reasoning arrives inside `content` wrapped in `<think>…</think>` (MiniMax M2.x).
    /// The gateway moves it to `reasoning_content` so clients see only the answer.
    pub think_tags_in_content: bool,
    /// HTTP statuses that mean "out of balance / quota exhausted" for this vendor, in
    /// addition to the universal 402 and vendor codes such as `insufficient_quota`.
    /// Such failures must not be retried on the same provider.
    pub exhausted_statuses: &'static [u16],
}

/// One preset row.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// The `kind` users write in config, and the provider id in a zero-config start.
    pub name: &'static str,
    /// The wire format the endpoint speaks.
    pub dialect: Dialect,
    /// Whose catalog entries price this endpoint's models: DeepSeek's Anthropic-compatible
    /// endpoint serves (and bills) the same models as its OpenAI one, so both are
    /// "deepseek".
    pub vendor: &'static str,
    /// None for self-hosted servers: the user must give `base_url`.
    pub base_url: Option<&'static str>,
    /// Environment variable read in a zero-config start.
    pub key_env: Option<&'static str>,
    pub auth: AuthStyle,
    /// Self-hosted servers run without keys.
    pub key_required: bool,
    /// Where this endpoint processes requests (ISO country or "EU"); None when it is the
    /// user's own machine or unknown.
    pub hosting: Option<&'static str>,
    pub quirks: Quirks,
}

const NONE: Quirks = Quirks { think_tags_in_content: false, exhausted_statuses: &[] };

const fn hosted(name: &'static str, base_url: &'static str, key_env: &'static str, hosting: &'static str) -> Preset {
    Preset {
        name,
        dialect: Dialect::OpenAi,
        vendor: name,
        base_url: Some(base_url),
        key_env: Some(key_env),
        auth: AuthStyle::Bearer,
        key_required: true,
        hosting: Some(hosting),
        quirks: NONE,
    }
}

const fn self_hosted(name: &'static str) -> Preset {
    Preset {
        name,
        dialect: Dialect::OpenAi,
        vendor: name,
        base_url: None,
        key_env: None,
        auth: AuthStyle::Bearer,
        key_required: false,
        hosting: None,
        quirks: NONE,
    }
}

const fn with_quirks(p: Preset, quirks: Quirks) -> Preset {
    Preset { quirks, ..p }
}

/// A vendor's Anthropic Messages endpoint. `base_url` is what Anthropic's SDKs call the
/// base (they append `/v1/messages`), so the same value works in `ANTHROPIC_BASE_URL`.
/// Its key is the vendor's usual one, and its models are priced as the vendor's.
const fn anthropic(
    name: &'static str,
    vendor: &'static str,
    base_url: &'static str,
    key_env: &'static str,
    hosting: &'static str,
) -> Preset {
    Preset { dialect: Dialect::Anthropic, vendor, auth: AuthStyle::XApiKey, ..hosted(name, base_url, key_env, hosting) }
}

/// Generic OpenAI-compatible endpoint: the user gives `base_url`, a key is optional.
pub const OPENAI_COMPATIBLE: &str = "openai-compatible";
/// Generic Anthropic-Messages-compatible endpoint (self-hosted or another gateway).
pub const ANTHROPIC_COMPATIBLE: &str = "anthropic-compatible";

pub static PRESETS: &[Preset] = &[
    hosted("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "US"),
    // DeepSeek answers "402 Insufficient Balance"; the surface is rooted at the bare host.
    with_quirks(
        hosted("deepseek", "https://api.deepseek.com", "DEEPSEEK_API_KEY", "CN"),
        Quirks { think_tags_in_content: false, exhausted_statuses: &[402] },
    ),
    // DashScope keys are tied to a region; 403 `Arrearage` means an overdue account.
    with_quirks(
        hosted("dashscope", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY", "SG"),
        Quirks { think_tags_in_content: false, exhausted_statuses: &[] },
    ),
    hosted("dashscope-cn", "https://dashscope.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_CN_API_KEY", "CN"),
    hosted("qianfan", "https://qianfan.baidubce.com/v2", "QIANFAN_API_KEY", "CN"),
    // Moonshot: 403 means insufficient balance; intl and CN keys are not interchangeable.
    with_quirks(
        hosted("moonshot", "https://api.moonshot.ai/v1", "MOONSHOT_API_KEY", "SG"),
        Quirks { think_tags_in_content: false, exhausted_statuses: &[403] },
    ),
    with_quirks(
        hosted("moonshot-cn", "https://api.moonshot.cn/v1", "MOONSHOT_CN_API_KEY", "CN"),
        Quirks { think_tags_in_content: false, exhausted_statuses: &[403] },
    ),
    hosted("zhipu", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY", "CN"),
    hosted("zai", "https://api.z.ai/api/paas/v4", "ZAI_API_KEY", "SG"),
    with_quirks(
        hosted("minimax", "https://api.minimax.io/v1", "MINIMAX_API_KEY", "SG"),
        Quirks { think_tags_in_content: true, exhausted_statuses: &[] },
    ),
    with_quirks(
        hosted("minimax-cn", "https://api.minimaxi.com/v1", "MINIMAX_CN_API_KEY", "CN"),
        Quirks { think_tags_in_content: true, exhausted_statuses: &[] },
    ),
    hosted("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", "EU"),
    hosted("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", "US"),
    hosted("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY", "US"),
    hosted("fireworks", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY", "US"),
    // DeepInfra's OpenAI surface is under /v1/openai; /v1 alone answers 404.
    hosted("deepinfra", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY", "US"),
    with_quirks(
        hosted("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "US"),
        Quirks { think_tags_in_content: false, exhausted_statuses: &[402] },
    ),
    hosted("xai", "https://api.x.ai/v1", "XAI_API_KEY", "US"),
    // Native dialects. Anthropic's base URL has no /v1 (its SDKs append /v1/messages);
    // Gemini's is the v1beta surface that `models/{m}:generateContent` hangs off.
    anthropic("anthropic", "anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY", "US"),
    Preset {
        dialect: Dialect::Gemini,
        auth: AuthStyle::GoogApiKey,
        ..hosted("gemini", "https://generativelanguage.googleapis.com/v1beta", "GEMINI_API_KEY", "US")
    },
    // The Anthropic-compatible endpoints Chinese vendors publish so Claude-built tools can
    // switch by base URL. Same keys and balances as their OpenAI-dialect endpoints, so the
    // same out-of-balance statuses.
    with_quirks(
        anthropic("deepseek-anthropic", "deepseek", "https://api.deepseek.com/anthropic", "DEEPSEEK_API_KEY", "CN"),
        Quirks { think_tags_in_content: false, exhausted_statuses: &[402] },
    ),
    with_quirks(
        anthropic("moonshot-anthropic", "moonshot", "https://api.moonshot.ai/anthropic", "MOONSHOT_API_KEY", "SG"),
        Quirks { think_tags_in_content: false, exhausted_statuses: &[403] },
    ),
    with_quirks(
        anthropic(
            "moonshot-cn-anthropic",
            "moonshot-cn",
            "https://api.moonshot.cn/anthropic",
            "MOONSHOT_CN_API_KEY",
            "CN",
        ),
        Quirks { think_tags_in_content: false, exhausted_statuses: &[403] },
    ),
    anthropic("zhipu-anthropic", "zhipu", "https://open.bigmodel.cn/api/anthropic", "ZHIPUAI_API_KEY", "CN"),
    anthropic("zai-anthropic", "zai", "https://api.z.ai/api/anthropic", "ZAI_API_KEY", "SG"),
    anthropic("minimax-anthropic", "minimax", "https://api.minimax.io/anthropic", "MINIMAX_API_KEY", "SG"),
    anthropic("minimax-cn-anthropic", "minimax-cn", "https://api.minimaxi.com/anthropic", "MINIMAX_CN_API_KEY", "CN"),
    self_hosted("ollama"),
    self_hosted("vllm"),
    self_hosted("llamacpp"),
    self_hosted("sglang"),
];

/// The preset for a config `kind`; `openai-compatible` is a self-hosted-like preset
/// whose key is optional.
pub fn find(kind: &str) -> Option<&'static Preset> {
    static GENERIC: Preset = self_hosted(OPENAI_COMPATIBLE);
    static GENERIC_ANTHROPIC: Preset =
        Preset { dialect: Dialect::Anthropic, auth: AuthStyle::XApiKey, ..self_hosted(ANTHROPIC_COMPATIBLE) };
    match kind {
        OPENAI_COMPATIBLE => Some(&GENERIC),
        ANTHROPIC_COMPATIBLE => Some(&GENERIC_ANTHROPIC),
        _ => PRESETS.iter().find(|p| p.name == kind),
    }
}

/// Every kind accepted in config, for error messages.
pub fn kinds() -> Vec<&'static str> {
    [OPENAI_COMPATIBLE, ANTHROPIC_COMPATIBLE].into_iter().chain(PRESETS.iter().map(|p| p.name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_names_are_unique_and_hosted_urls_are_https() {
        let mut names: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PRESETS.len());
        for p in PRESETS {
            if let Some(url) = p.base_url {
                assert!(url.starts_with("https://"), "{}: {url}", p.name);
                assert!(!url.ends_with('/'), "{}: trailing slash", p.name);
                assert!(p.key_required && p.key_env.is_some(), "{}", p.name);
            } else {
                assert!(!p.key_required, "{}", p.name);
            }
        }
    }

    #[test]
    fn issue_listed_vendors_all_have_presets() {
        for k in [
            "openai",
            "deepseek",
            "dashscope",
            "dashscope-cn",
            "qianfan",
            "moonshot",
            "moonshot-cn",
            "zhipu",
            "zai",
            "minimax",
            "mistral",
            "groq",
            "together",
            "fireworks",
            "deepinfra",
            "openrouter",
            "xai",
            "ollama",
            "vllm",
            "llamacpp",
            "sglang",
            "openai-compatible",
        ] {
            assert!(find(k).is_some(), "{k}");
        }
        assert!(find("minimax").unwrap().quirks.think_tags_in_content);
    }

    #[test]
    fn native_and_anthropic_compatible_presets() {
        let a = find("anthropic").unwrap();
        assert_eq!((a.dialect, a.auth, a.vendor), (Dialect::Anthropic, AuthStyle::XApiKey, "anthropic"));
        let g = find("gemini").unwrap();
        assert_eq!((g.dialect, g.auth), (Dialect::Gemini, AuthStyle::GoogApiKey));
        for (kind, vendor) in [
            ("deepseek-anthropic", "deepseek"),
            ("moonshot-anthropic", "moonshot"),
            ("zhipu-anthropic", "zhipu"),
            ("zai-anthropic", "zai"),
            ("minimax-anthropic", "minimax"),
        ] {
            let p = find(kind).unwrap();
            assert_eq!((p.dialect, p.vendor), (Dialect::Anthropic, vendor), "{kind}");
            // The vendor's prices exist under the vendor's OpenAI-dialect preset name.
            assert_eq!(find(vendor).unwrap().dialect, Dialect::OpenAi, "{kind}");
        }
        assert_eq!(find("anthropic-compatible").unwrap().dialect, Dialect::Anthropic);
        assert!(!find("anthropic-compatible").unwrap().key_required);
    }
}
