//! Start-up configuration from environment variables and an optional `.env` file.
//!
//! Every setting has a default, so `comfyui-gateway` starts with no configuration at all. A bad
//! value stops start-up with one line naming the variable, the value and what was expected,
//! e.g. `PROGRESS_INTERVAL_MS="fast": expected a whole number of milliseconds, at least 10`.
//! Secrets (`SUPABASE_KEY`, `API_KEYS`, `WEBHOOK_SECRET`) are shown as `<redacted>` in errors and in `Debug`
//! output, so a configuration can be logged safely.
//!
//! Values are trimmed, and a variable set to an empty string counts as unset. Parsing is done by
//! [`Config::from_lookup`], a pure function of a lookup closure, so tests need not touch the
//! process environment; [`Config::from_env`] feeds it the real environment layered over `.env`.

use crate::warmup::WarmupSpec;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::image::PngMetadata;
use crate::webhook::{AllowedHosts, SECRET_FORMAT, SigningKey, WebhookUrl};

/// The file [`Config::from_env`] reads, relative to the working directory.
const DOTENV_FILE: &str = ".env";

/// Shown instead of a secret's value.
const REDACTED: &str = "<redacted>";

/// Shown as the value of a variable that is required but not set.
const UNSET: &str = "<unset>";

/// Everything the gateway needs to start, validated. See the README's configuration table.
#[derive(Clone)]
pub struct Config {
    /// `LISTEN_ADDR`: `HOST:PORT` to listen on (default `127.0.0.1:8000`). Port 0 asks the
    /// operating system for a free port.
    pub listen_addr: String,
    /// `COMFYUI_URL`: one or more ComfyUI base URLs, without trailing slashes (default
    /// `http://127.0.0.1:8188`). Never empty.
    pub comfyui_urls: Vec<String>,
    /// `WORKFLOWS_DIR`: the directory of `NAME.json` templates (default `./workflows`). It
    /// existed and was a directory when the configuration was read.
    pub workflows_dir: PathBuf,
    /// `DEFAULT_WORKFLOW`: the template used when a request names none (default `txt2img`).
    /// A bare name: letters, digits, `_`, `-` and `.`, not starting with `.`, no `.json`.
    pub default_workflow: String,
    /// `SUPABASE_*`: `Some` when both `SUPABASE_URL` and `SUPABASE_KEY` are set; `None` means
    /// images and metadata stay on local disk.
    pub supabase: Option<SupabaseConfig>,
    /// `DATA_DIR`: local images, `generations.jsonl` and the upload spool (default `./data`).
    pub data_dir: PathBuf,
    /// `PUBLIC_BASE_URL`: base of local image URLs, without a trailing slash (default
    /// `http://` followed by `LISTEN_ADDR`).
    pub public_base_url: String,
    /// `PROGRESS_INTERVAL_MS`: how often progress events are sent (default 1 s, at least 10 ms).
    pub progress_interval: Duration,
    /// `JOB_TIMEOUT_SECS`: how long a job may run before it fails with `timeout` (default
    /// 600 s, between 1 s and 30 days).
    pub job_timeout: Duration,
    /// `JOB_RETENTION_SECS`: how long a finished job stays readable through `GET /jobs/{id}`
    /// (default an hour).
    pub job_retention: Duration,
    /// `MAX_QUEUED_JOBS` (alias `MAX_ACTIVE_JOBS`): jobs waiting in the gateway's queue at most
    /// (default 10,000, at least 1); beyond it, 429.
    pub max_queued_jobs: usize,
    /// `QUEUE_AHEAD`: prompts each ComfyUI holds beyond the one it runs (default 1, at most
    /// `MAX_QUEUED_JOBS`), so its GPU never idles between jobs.
    pub queue_ahead: usize,
    /// `QUEUE_TIMEOUT_SECS`: how long a job may wait before ComfyUI starts it (unset: as long
    /// as it takes).
    pub queue_timeout: Option<Duration>,
    /// `LOST_RETRIES`: how many times a job whose prompt a ComfyUI started and then lost (it
    /// crashed or restarted) is sent again, from the front of the queue, before it ends with
    /// `comfyui_lost` (default 1, 0 to 10; 0: never).
    pub lost_retries: u32,
    /// `BACKEND_GRACE_SECS`: while no backend answers, submissions are still queued if one
    /// answered within this long (default 300 s, 0 to 1 day; 0: refuse at once with 503).
    pub backend_grace: Duration,
    /// `MAX_BODY_BYTES`: the largest request body accepted (default 20 MiB, at least 1024).
    pub max_body_bytes: u64,
    /// `MAX_UPLOAD_BYTES`: the largest Comfy API v2 asset upload, which is streamed to disk
    /// rather than read into memory (default 100 MiB, at least 1024).
    pub max_upload_bytes: u64,
    /// `API_KEYS`: bearer keys accepted by every endpoint but `/health`; empty means no
    /// authentication. Each key is non-empty and free of whitespace.
    pub api_keys: Vec<String>,
    /// `OUTPUT_METADATA` (older name `PNG_METADATA`, read when the new one is unset): whether to
    /// strip the prompt and workflow ComfyUI embeds in its outputs (PNG, WebP, FLAC, Ogg, MP3, MP4,
    /// WebM; see [`crate::strip`]) or keep every file as made (default `strip`).
    pub png_metadata: PngMetadata,
    /// `RUST_LOG`: the `env_logger` filter (default `info`).
    pub log_filter: String,
    /// `IDLE_TIMEOUT_SECS`: how long a client connection may stay silent (between requests, or
    /// mid-request) or leave an answer unread before it is closed (default 60 s).
    pub idle_timeout: Duration,
    /// `MAX_CONNECTIONS`: client requests answered at once, each holding its connection and a
    /// thread; beyond it the gateway answers 503 with `Retry-After` and closes. `None` (unset):
    /// as many as the open-files limit holds (see `server::connection_limit`).
    pub max_connections: Option<usize>,
    /// `TRUSTED_PROXY`: the addresses of reverse proxies whose `X-Forwarded-For` / `X-Real-IP`
    /// name the real client in the logs (default none).
    pub trusted_proxies: Vec<IpAddr>,
    /// `WEBHOOK_*`: the default webhook, the signing secret, allowed hosts and retry window.
    pub webhook: WebhookConfig,
    /// `WARMUP_WORKFLOW`: a template (and parameters) run on each backend when the gateway
    /// first reaches it and when it comes back after a restart (default none).
    pub warmup: Option<WarmupSpec>,
}

/// Webhook settings (`WEBHOOK_URL`, `WEBHOOK_SECRET`, `WEBHOOK_ALLOWED_HOSTS`,
/// `WEBHOOK_RETRY_HOURS`). `Debug` never shows the secret.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// `WEBHOOK_URL`: where every job's webhooks go unless its request names its own target.
    pub url: Option<WebhookUrl>,
    /// `WEBHOOK_SECRET`: `whsec_` + base64; required when `WEBHOOK_URL` is set. Without it,
    /// requests that ask for a webhook are refused.
    pub signing_key: Option<SigningKey>,
    /// `WEBHOOK_ALLOWED_HOSTS`: the hosts webhooks may go to (empty: any).
    pub allowed_hosts: AllowedHosts,
    /// `WEBHOOK_RETRY_HOURS`: how long a failing delivery is retried (default 24 hours).
    pub retry_window: Duration,
}

/// Where images and metadata go when Supabase is configured.
#[derive(Clone)]
pub struct SupabaseConfig {
    /// `SUPABASE_URL`: the project URL, e.g. `https://abc.supabase.co`, without trailing slash.
    pub url: String,
    /// `SUPABASE_KEY`: the service key. Secret: never log it.
    pub key: String,
    /// `SUPABASE_BUCKET`: the storage bucket (default `images`).
    pub bucket: String,
    /// `SUPABASE_TABLE`: the metadata table, one row per image (default `generations`).
    pub table: String,
    /// `SUPABASE_SIGNED_URL_TTL`: 0 for public URLs (the default), otherwise how many seconds
    /// signed URLs stay valid.
    pub signed_url_ttl_secs: u64,
}

/// A configuration value that stops start-up. `Display` gives one line, e.g.
/// `PROGRESS_INTERVAL_MS="fast": expected a whole number of milliseconds, at least 10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable at fault, e.g. `PROGRESS_INTERVAL_MS`, or `.env` for the file itself.
    pub variable: &'static str,
    /// The value found, `<redacted>` for secrets, `<unset>` for a missing required value, or
    /// empty for a problem with the `.env` file as a whole.
    pub value: String,
    /// What would have been accepted, as a phrase that follows "expected".
    pub expected: String,
    /// For a malformed `.env` file: which line, when it can be told.
    env_file_line: Option<usize>,
}

impl ConfigError {
    fn new(variable: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError {
            variable,
            value: value.to_owned(),
            expected: expected.into(),
            env_file_line: None,
        }
    }

    fn secret(variable: &'static str, expected: impl Into<String>) -> ConfigError {
        ConfigError::new(variable, REDACTED, expected)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            variable,
            value,
            expected,
            ..
        } = self;
        match self.env_file_line {
            Some(line) => write!(f, "{variable} line {line}: expected {expected}"),
            None if *variable == DOTENV_FILE => write!(f, "{variable}: expected {expected}"),
            None if value == REDACTED || value == UNSET => {
                write!(f, "{variable}={value}: expected {expected}")
            }
            None => write!(f, "{variable}={value:?}: expected {expected}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the configuration from the process environment, falling back to `./.env`.
    ///
    /// A variable set in the real environment wins over the same name in `.env`, even when it
    /// is set to an empty string. A missing `.env` is fine; an unreadable or malformed one is an
    /// error naming the file and, where possible, the line. `.env` never modifies the process
    /// environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let from_file = read_dotenv(Path::new(DOTENV_FILE))?;
        Config::from_lookup(layered(
            |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()),
            from_file,
        ))
    }

    /// Builds and validates a configuration from `get`, which maps a variable name to its
    /// value (or `None` when unset). Touches nothing but the file system check that
    /// `WORKFLOWS_DIR` is a directory.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let config = parse(&Vars(get))?;
        check_is_directory("WORKFLOWS_DIR", &config.workflows_dir)?;
        Ok(config)
    }
}

/// A lookup that trims values and treats empty ones as unset.
struct Vars<F>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn get(&self, name: &str) -> Option<String> {
        let value = (self.0)(name)?;
        let trimmed = value.trim();
        (!trimmed.is_empty()).then(|| trimmed.to_owned())
    }

    fn get_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }
}

/// Everything but the file-system check, so defaults can be tested anywhere.
fn parse<F: Fn(&str) -> Option<String>>(vars: &Vars<F>) -> Result<Config, ConfigError> {
    let listen_addr = listen_addr(&vars.get_or("LISTEN_ADDR", "127.0.0.1:8000"))?;
    let public_base_url = match vars.get("PUBLIC_BASE_URL") {
        Some(url) => http_url("PUBLIC_BASE_URL", &url)?,
        None => format!("http://{listen_addr}"),
    };
    let progress_ms = whole_number(vars, &PROGRESS_INTERVAL_MS)?;
    let timeout_secs = whole_number(vars, &JOB_TIMEOUT_SECS)?;
    let max_queued_jobs = match (vars.get("MAX_QUEUED_JOBS"), vars.get("MAX_ACTIVE_JOBS")) {
        (None, Some(_)) => whole_number(vars, &MAX_ACTIVE_JOBS)?,
        _ => whole_number(vars, &MAX_QUEUED_JOBS)?,
    };
    let queue_ahead = whole_number(vars, &QUEUE_AHEAD)?;
    if queue_ahead > max_queued_jobs {
        return Err(ConfigError::new(
            "QUEUE_AHEAD",
            &queue_ahead.to_string(),
            format!("at most MAX_QUEUED_JOBS ({max_queued_jobs})"),
        ));
    }
    let queue_timeout = match vars.get("QUEUE_TIMEOUT_SECS") {
        Some(_) => Some(Duration::from_secs(whole_number(
            vars,
            &QUEUE_TIMEOUT_SECS,
        )?)),
        None => None,
    };
    Ok(Config {
        listen_addr,
        comfyui_urls: comfyui_urls(&vars.get_or("COMFYUI_URL", "http://127.0.0.1:8188"))?,
        workflows_dir: PathBuf::from(vars.get_or("WORKFLOWS_DIR", "./workflows")),
        default_workflow: workflow_name(&vars.get_or("DEFAULT_WORKFLOW", "txt2img"))?,
        supabase: supabase(vars)?,
        data_dir: PathBuf::from(vars.get_or("DATA_DIR", "./data")),
        public_base_url,
        progress_interval: Duration::from_millis(progress_ms),
        job_timeout: Duration::from_secs(timeout_secs),
        job_retention: Duration::from_secs(whole_number(vars, &JOB_RETENTION_SECS)?),
        max_queued_jobs: usize::try_from(max_queued_jobs).unwrap_or(usize::MAX),
        queue_ahead: usize::try_from(queue_ahead).unwrap_or(usize::MAX),
        queue_timeout,
        lost_retries: u32::try_from(whole_number(vars, &LOST_RETRIES)?).unwrap_or(u32::MAX),
        backend_grace: Duration::from_secs(whole_number(vars, &BACKEND_GRACE_SECS)?),
        max_body_bytes: whole_number(vars, &MAX_BODY_BYTES)?,
        max_upload_bytes: whole_number(vars, &MAX_UPLOAD_BYTES)?,
        api_keys: match vars.get("API_KEYS") {
            Some(keys) => api_keys(&keys)?,
            None => Vec::new(),
        },
        png_metadata: output_metadata(vars)?,
        log_filter: vars.get_or("RUST_LOG", "info"),
        webhook: webhook(vars)?,
        warmup: match vars.get("WARMUP_WORKFLOW") {
            Some(raw) => Some(
                WarmupSpec::parse(&raw)
                    .map_err(|expected| ConfigError::new("WARMUP_WORKFLOW", &raw, expected))?,
            ),
            None => None,
        },
        idle_timeout: Duration::from_secs(whole_number(vars, &IDLE_TIMEOUT_SECS)?),
        max_connections: match vars.get(MAX_CONNECTIONS.variable) {
            Some(_) => {
                Some(usize::try_from(whole_number(vars, &MAX_CONNECTIONS)?).unwrap_or(usize::MAX))
            }
            None => None,
        },
        trusted_proxies: match vars.get("TRUSTED_PROXY") {
            Some(raw) => trusted_proxies(&raw)?,
            None => Vec::new(),
        },
    })
}

const WEBHOOK_RETRY_HOURS: WholeNumber = WholeNumber {
    variable: "WEBHOOK_RETRY_HOURS",
    default: 24,
    unit: "hours",
    min: 0,
    max: 30 * 24,
};

fn webhook<F: Fn(&str) -> Option<String>>(vars: &Vars<F>) -> Result<WebhookConfig, ConfigError> {
    let allowed_hosts = match vars.get("WEBHOOK_ALLOWED_HOSTS") {
        Some(raw) => AllowedHosts::parse(&raw)
            .map_err(|expected| ConfigError::new("WEBHOOK_ALLOWED_HOSTS", &raw, expected))?,
        None => AllowedHosts::default(),
    };
    let signing_key = match vars.get("WEBHOOK_SECRET") {
        Some(raw) => Some(SigningKey::parse(&raw).map_err(|problem| {
            ConfigError::secret("WEBHOOK_SECRET", format!("{SECRET_FORMAT} ({problem})"))
        })?),
        None => None,
    };
    let url = match vars.get("WEBHOOK_URL") {
        Some(raw) => {
            let url = WebhookUrl::parse(&raw)
                .map_err(|expected| ConfigError::new("WEBHOOK_URL", &raw, expected))?;
            if !allowed_hosts.allows(&url) {
                let expected = format!(
                    "a URL whose host WEBHOOK_ALLOWED_HOSTS lists ({})",
                    allowed_hosts.describe()
                );
                return Err(ConfigError::new("WEBHOOK_URL", &raw, expected));
            }
            if signing_key.is_none() {
                let expected =
                    format!("{SECRET_FORMAT}, because WEBHOOK_URL is set and webhooks are signed");
                return Err(ConfigError::new("WEBHOOK_SECRET", UNSET, expected));
            }
            Some(url)
        }
        None => None,
    };
    Ok(WebhookConfig {
        url,
        signing_key,
        allowed_hosts,
        retry_window: Duration::from_secs(whole_number(vars, &WEBHOOK_RETRY_HOURS)? * 3600),
    })
}

/// Comma-separated IP addresses (no names: the check runs on every request, without DNS).
fn trusted_proxies(raw: &str) -> Result<Vec<IpAddr>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry.parse::<IpAddr>().map_err(|_| {
                ConfigError::new(
                    "TRUSTED_PROXY",
                    raw,
                    "IP addresses separated by commas, e.g. 127.0.0.1 or 127.0.0.1,::1",
                )
            })
        })
        .collect()
}

/// Checks `HOST:PORT`, where HOST is a name, an IPv4 address or a bracketed IPv6 address.
fn listen_addr(raw: &str) -> Result<String, ConfigError> {
    let invalid = || {
        ConfigError::new(
            "LISTEN_ADDR",
            raw,
            "HOST:PORT, e.g. 127.0.0.1:8000, 0.0.0.0:8000 or [::1]:8000",
        )
    };
    let (host, port) = raw.rsplit_once(':').ok_or_else(invalid)?;
    port.parse::<u16>().map_err(|_| invalid())?;
    if !is_valid_host(host) {
        return Err(invalid());
    }
    Ok(raw.to_owned())
}

/// A host name or IPv4 address (letters, digits, `.`, `-`, `_`) or a bracketed IPv6 address.
fn is_valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Checks an `http://` or `https://` URL with a host and returns it without trailing slashes.
fn http_url(variable: &'static str, raw: &str) -> Result<String, ConfigError> {
    let invalid = || {
        ConfigError::new(
            variable,
            raw,
            "an http:// or https:// URL with a host, e.g. http://127.0.0.1:8188",
        )
    };
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or_else(invalid)?;
    if rest.contains(|c: char| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
        return Err(invalid());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        // A colon after an IPv6 literal's closing bracket, or in a name, introduces a port.
        Some((host, port)) if !port.contains(']') => {
            port.parse::<u16>().map_err(|_| invalid())?;
            host
        }
        _ => authority,
    };
    if !is_valid_host(host) {
        return Err(invalid());
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// One URL or several separated by commas; no empty entries.
fn comfyui_urls(raw: &str) -> Result<Vec<String>, ConfigError> {
    raw.split(',')
        .map(|entry| {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(ConfigError::new(
                    "COMFYUI_URL",
                    raw,
                    "one or more http(s):// URLs separated by commas, with no empty entries",
                ));
            }
            http_url("COMFYUI_URL", entry)
        })
        .collect()
}

/// How one numeric variable is read: its default and the range it must fall in.
struct WholeNumber {
    variable: &'static str,
    default: u64,
    unit: &'static str,
    min: u64,
    max: u64,
}

const PROGRESS_INTERVAL_MS: WholeNumber = WholeNumber {
    variable: "PROGRESS_INTERVAL_MS",
    default: 1000,
    unit: "milliseconds",
    min: 10,
    max: 3_600_000,
};

/// Capped at 30 days so that adding the timeout to an `Instant` can never overflow.
const JOB_TIMEOUT_SECS: WholeNumber = WholeNumber {
    variable: "JOB_TIMEOUT_SECS",
    default: 600,
    unit: "seconds",
    min: 1,
    max: 30 * 86_400,
};

/// An hour by default, as the README says; capped like the timeout.
const JOB_RETENTION_SECS: WholeNumber = WholeNumber {
    variable: "JOB_RETENTION_SECS",
    default: 3600,
    unit: "seconds",
    min: 0,
    max: 30 * 86_400,
};

/// At most a million waiting jobs: each costs a few kilobytes of memory and a file.
const MAX_QUEUED_JOBS: WholeNumber = WholeNumber {
    variable: "MAX_QUEUED_JOBS",
    default: 10_000,
    unit: "jobs",
    min: 1,
    max: 1_000_000,
};

/// The old name of `MAX_QUEUED_JOBS`, still accepted.
const MAX_ACTIVE_JOBS: WholeNumber = WholeNumber {
    variable: "MAX_ACTIVE_JOBS",
    ..MAX_QUEUED_JOBS
};

const QUEUE_AHEAD: WholeNumber = WholeNumber {
    variable: "QUEUE_AHEAD",
    default: 1,
    unit: "prompts",
    min: 0,
    max: 1_000_000,
};

const QUEUE_TIMEOUT_SECS: WholeNumber = WholeNumber {
    variable: "QUEUE_TIMEOUT_SECS",
    default: 0,
    unit: "seconds",
    min: 1,
    max: 30 * 86_400,
};

const LOST_RETRIES: WholeNumber = WholeNumber {
    variable: "LOST_RETRIES",
    default: 1,
    unit: "retries",
    min: 0,
    max: 10,
};

const BACKEND_GRACE_SECS: WholeNumber = WholeNumber {
    variable: "BACKEND_GRACE_SECS",
    default: 300,
    unit: "seconds",
    min: 0,
    max: 86_400,
};

/// Bodies are read into memory, so the cap is 1 GiB (and `limit + 1` cannot overflow).
const MAX_BODY_BYTES: WholeNumber = WholeNumber {
    variable: "MAX_BODY_BYTES",
    default: 20_971_520,
    unit: "bytes",
    min: 1024,
    max: 1 << 30,
};

/// Uploads are streamed to disk, so the cap is only a sanity bound (1 TiB).
const MAX_UPLOAD_BYTES: WholeNumber = WholeNumber {
    variable: "MAX_UPLOAD_BYTES",
    default: 104_857_600,
    unit: "bytes",
    min: 1024,
    max: 1 << 40,
};

/// Capped at ten years, which Supabase's 32-bit `expiresIn` holds.
const SUPABASE_SIGNED_URL_TTL: WholeNumber = WholeNumber {
    variable: "SUPABASE_SIGNED_URL_TTL",
    default: 0,
    unit: "seconds (0 for public URLs)",
    min: 0,
    max: 10 * 365 * 86_400,
};

/// A day at most, so that adding it to an `Instant` or a socket option cannot overflow.
const IDLE_TIMEOUT_SECS: WholeNumber = WholeNumber {
    variable: "IDLE_TIMEOUT_SECS",
    default: 60,
    unit: "seconds",
    min: 1,
    max: 86_400,
};

/// Each answered request holds a thread and its connection (two file descriptors). Unset, the
/// limit comes from the open-files limit at start-up (`server::connection_limit`); the default
/// here is never used.
const MAX_CONNECTIONS: WholeNumber = WholeNumber {
    variable: "MAX_CONNECTIONS",
    default: 0,
    unit: "connections",
    min: 1,
    max: 1_000_000,
};

/// The variable's value if it is a whole number in range, or its default when unset.
fn whole_number<F: Fn(&str) -> Option<String>>(
    vars: &Vars<F>,
    rule: &WholeNumber,
) -> Result<u64, ConfigError> {
    let Some(raw) = vars.get(rule.variable) else {
        return Ok(rule.default);
    };
    match raw.parse::<u64>() {
        Ok(n) if (rule.min..=rule.max).contains(&n) => Ok(n),
        _ => {
            let mut expected = format!("a whole number of {}", rule.unit);
            if rule.min > 0 {
                expected.push_str(&format!(", at least {}", rule.min));
            }
            if rule.max < u64::MAX {
                expected.push_str(&format!(", at most {}", rule.max));
            }
            Err(ConfigError::new(rule.variable, &raw, expected))
        }
    }
}

/// A template name that cannot escape the workflows directory.
fn workflow_name(raw: &str) -> Result<String, ConfigError> {
    let well_formed = !raw.starts_with('.')
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !well_formed || raw.ends_with(".json") {
        return Err(ConfigError::new(
            "DEFAULT_WORKFLOW",
            raw,
            "a template name such as txt2img (letters, digits, _, - and ., without .json)",
        ));
    }
    Ok(raw.to_owned())
}

/// `OUTPUT_METADATA`, else its older name `PNG_METADATA`, else `strip`. When both are set the new
/// name wins, so a deployment can switch by adding it without first removing the old one.
fn output_metadata<F: Fn(&str) -> Option<String>>(
    vars: &Vars<F>,
) -> Result<PngMetadata, ConfigError> {
    let (variable, raw) = match (vars.get("OUTPUT_METADATA"), vars.get("PNG_METADATA")) {
        (Some(raw), _) => ("OUTPUT_METADATA", raw),
        (None, Some(raw)) => ("PNG_METADATA", raw),
        (None, None) => return Ok(PngMetadata::Strip),
    };
    match raw.to_ascii_lowercase().as_str() {
        "strip" => Ok(PngMetadata::Strip),
        "keep" => Ok(PngMetadata::Keep),
        _ => Err(ConfigError::new(variable, &raw, "strip or keep")),
    }
}

/// Comma-separated keys, trimmed, empty entries dropped. At least one key must remain, so a
/// stray `API_KEYS=,` cannot silently turn authentication off.
fn api_keys(raw: &str) -> Result<Vec<String>, ConfigError> {
    let keys: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        return Err(ConfigError::secret(
            "API_KEYS",
            "at least one key (comma-separated), or leave API_KEYS unset",
        ));
    }
    if keys.iter().any(|key| !is_header_safe(key)) {
        return Err(ConfigError::secret(
            "API_KEYS",
            "keys without spaces or control characters, separated by commas",
        ));
    }
    Ok(keys)
}

/// Whether `s` can travel in an HTTP header as one token.
fn is_header_safe(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_graphic())
}

fn supabase<F: Fn(&str) -> Option<String>>(
    vars: &Vars<F>,
) -> Result<Option<SupabaseConfig>, ConfigError> {
    const BOTH: &str = "set both SUPABASE_URL and SUPABASE_KEY for Supabase storage, \
                        or neither for local storage";
    let (url, key) = match (vars.get("SUPABASE_URL"), vars.get("SUPABASE_KEY")) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            let expected = format!("a service key because SUPABASE_URL is set ({BOTH})");
            return Err(ConfigError::new("SUPABASE_KEY", UNSET, expected));
        }
        (None, Some(_)) => {
            let expected = format!("a project URL because SUPABASE_KEY is set ({BOTH})");
            return Err(ConfigError::new("SUPABASE_URL", UNSET, expected));
        }
        (Some(url), Some(key)) => (url, key),
    };
    if !is_header_safe(&key) {
        return Err(ConfigError::secret(
            "SUPABASE_KEY",
            "a key without spaces or control characters",
        ));
    }
    Ok(Some(SupabaseConfig {
        url: http_url("SUPABASE_URL", &url)?,
        key,
        bucket: path_segment("SUPABASE_BUCKET", &vars.get_or("SUPABASE_BUCKET", "images"))?,
        table: path_segment(
            "SUPABASE_TABLE",
            &vars.get_or("SUPABASE_TABLE", "generations"),
        )?,
        signed_url_ttl_secs: whole_number(vars, &SUPABASE_SIGNED_URL_TTL)?,
    }))
}

/// A bucket or table name; it goes into URL paths, so it must not contain URL syntax.
fn path_segment(variable: &'static str, raw: &str) -> Result<String, ConfigError> {
    if raw
        .chars()
        .any(|c| !c.is_ascii_graphic() || matches!(c, '/' | '?' | '#' | '%' | '\\'))
    {
        return Err(ConfigError::new(
            variable,
            raw,
            "a name without spaces, /, ?, #, % or \\",
        ));
    }
    Ok(raw.to_owned())
}

fn check_is_directory(variable: &'static str, path: &Path) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            variable,
            &shown,
            "a directory of workflow templates, but it is a file",
        )),
        Err(err) => Err(ConfigError::new(
            variable,
            &shown,
            format!("an existing directory of workflow templates (NAME.json), but: {err}"),
        )),
    }
}

/// A lookup that asks `primary` first and falls back to `fallback`.
fn layered(
    primary: impl Fn(&str) -> Option<String>,
    fallback: HashMap<String, String>,
) -> impl Fn(&str) -> Option<String> {
    move |name| primary(name).or_else(|| fallback.get(name).cloned())
}

/// Reads `path` as a dotenv file into a map, without touching the process environment.
///
/// A missing file gives an empty map. As with dotenvy's own loader, the first occurrence of a
/// name wins.
fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let content = match std::fs::read_to_string(path) {
        Ok(content) => content,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(err) => {
            let expected = format!("a readable UTF-8 file, but: {err}");
            return Err(ConfigError::new(DOTENV_FILE, "", expected));
        }
    };
    let content = content.strip_prefix('\u{feff}').unwrap_or(&content);
    let mut vars = HashMap::new();
    for item in dotenvy::from_read_iter(content.as_bytes()) {
        match item {
            Ok((name, value)) => {
                vars.entry(name).or_insert(value);
            }
            Err(err) => return Err(dotenv_error(content, &err)),
        }
    }
    Ok(vars)
}

/// Turns a dotenvy error into one naming the line, without quoting the line (it may hold a
/// secret).
fn dotenv_error(content: &str, err: &dotenvy::Error) -> ConfigError {
    let line = match err {
        dotenvy::Error::LineParse(text, _) => line_number_of(content, text),
        _ => None,
    };
    ConfigError {
        env_file_line: line,
        ..ConfigError::new(
            DOTENV_FILE,
            "",
            "NAME=value lines; check for a missing =, a space in a name or an unclosed quote",
        )
    }
}

/// The 1-based number of the line where `text` (a logical line dotenvy rejected, which may span
/// several physical lines) starts.
fn line_number_of(content: &str, text: &str) -> Option<usize> {
    let first = text.lines().next()?.trim_end();
    if first.is_empty() {
        return None;
    }
    let lines = || content.lines().map(str::trim_end);
    lines()
        .position(|line| line == first)
        .or_else(|| lines().position(|line| line.starts_with(first)))
        .map(|index| index + 1)
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted_keys = vec![REDACTED; self.api_keys.len()];
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("comfyui_urls", &self.comfyui_urls)
            .field("workflows_dir", &self.workflows_dir)
            .field("default_workflow", &self.default_workflow)
            .field("supabase", &self.supabase)
            .field("data_dir", &self.data_dir)
            .field("public_base_url", &self.public_base_url)
            .field("progress_interval", &self.progress_interval)
            .field("job_timeout", &self.job_timeout)
            .field("job_retention", &self.job_retention)
            .field("max_queued_jobs", &self.max_queued_jobs)
            .field("queue_ahead", &self.queue_ahead)
            .field("queue_timeout", &self.queue_timeout)
            .field("lost_retries", &self.lost_retries)
            .field("backend_grace", &self.backend_grace)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("api_keys", &redacted_keys)
            .field("png_metadata", &self.png_metadata)
            .field("log_filter", &self.log_filter)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("webhook", &self.webhook)
            .field("warmup", &self.warmup)
            .finish()
    }
}

impl fmt::Debug for SupabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseConfig")
            .field("url", &self.url)
            .field("key", &REDACTED)
            .field("bucket", &self.bucket)
            .field("table", &self.table)
            .field("signed_url_ttl_secs", &self.signed_url_ttl_secs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that exists wherever the tests run.
    fn existing_dir() -> String {
        format!("{}/src", env!("CARGO_MANIFEST_DIR"))
    }

    /// A lookup over `pairs`, with WORKFLOWS_DIR pointing at an existing directory unless the
    /// test sets it.
    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry("WORKFLOWS_DIR".into())
            .or_insert_with(existing_dir);
        move |name| map.get(name).cloned()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(lookup(pairs))
    }

    fn error(pairs: &[(&str, &str)]) -> ConfigError {
        match load(pairs) {
            Ok(config) => panic!("{pairs:?} was accepted: {config:?}"),
            Err(err) => err,
        }
    }

    /// A fresh, empty directory under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "comfyui-gateway-config-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        dir
    }

    #[test]
    fn defaults_follow_the_design() {
        let config = parse(&Vars(|_: &str| None)).expect("defaults are valid");
        assert_eq!(config.listen_addr, "127.0.0.1:8000");
        assert_eq!(config.comfyui_urls, ["http://127.0.0.1:8188"]);
        assert_eq!(config.workflows_dir, PathBuf::from("./workflows"));
        assert_eq!(config.default_workflow, "txt2img");
        assert!(config.supabase.is_none());
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.public_base_url, "http://127.0.0.1:8000");
        assert_eq!(config.progress_interval, Duration::from_millis(1000));
        assert_eq!(config.job_timeout, Duration::from_secs(600));
        assert_eq!(config.max_queued_jobs, 10_000);
        assert_eq!(config.queue_ahead, 1);
        assert_eq!(config.queue_timeout, None);
        assert_eq!(config.lost_retries, 1);
        assert_eq!(config.backend_grace, Duration::from_secs(300));
        assert_eq!(config.max_body_bytes, 20_971_520);
        assert_eq!(config.max_upload_bytes, 104_857_600);
        assert!(config.api_keys.is_empty());
        assert_eq!(config.png_metadata, PngMetadata::Strip);
        assert_eq!(config.log_filter, "info");
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.max_connections, None);
        assert!(config.trusted_proxies.is_empty());
    }

    #[test]
    fn lost_retries_and_backend_grace_are_read_and_checked() {
        let config = load(&[("LOST_RETRIES", "0"), ("BACKEND_GRACE_SECS", "30")]).expect("valid");
        assert_eq!(config.lost_retries, 0);
        assert_eq!(config.backend_grace, Duration::from_secs(30));
        for (variable, value) in [
            ("LOST_RETRIES", "11"),
            ("LOST_RETRIES", "-1"),
            ("BACKEND_GRACE_SECS", "86401"),
            ("BACKEND_GRACE_SECS", "soon"),
        ] {
            let err = error(&[(variable, value)]);
            assert_eq!((err.variable, err.value.as_str()), (variable, value));
        }
    }

    #[test]
    fn front_door_variables_are_read_and_checked() {
        let config = load(&[
            ("IDLE_TIMEOUT_SECS", "5"),
            ("MAX_CONNECTIONS", "10"),
            ("TRUSTED_PROXY", "127.0.0.1, ::1"),
        ])
        .expect("valid");
        assert_eq!(config.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.max_connections, Some(10));
        assert_eq!(config.trusted_proxies.len(), 2);
        for (variable, value) in [
            ("IDLE_TIMEOUT_SECS", "0"),
            ("IDLE_TIMEOUT_SECS", "86401"),
            ("MAX_CONNECTIONS", "0"),
            ("TRUSTED_PROXY", "proxy.local"),
        ] {
            let err = error(&[(variable, value)]);
            assert_eq!((err.variable, err.value.as_str()), (variable, value));
        }
    }

    #[test]
    fn no_number_can_overflow() {
        let huge = u64::MAX.to_string();
        for variable in [
            "PROGRESS_INTERVAL_MS",
            "JOB_TIMEOUT_SECS",
            "JOB_RETENTION_SECS",
            "MAX_ACTIVE_JOBS",
            "MAX_BODY_BYTES",
            "IDLE_TIMEOUT_SECS",
            "MAX_CONNECTIONS",
        ] {
            let err = error(&[(variable, &huge)]);
            assert_eq!(err.variable, variable);
            assert!(err.to_string().contains("at most"), "{err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        let err = error(&[
            ("SUPABASE_URL", "http://s"),
            ("SUPABASE_KEY", "k"),
            ("SUPABASE_SIGNED_URL_TTL", &huge),
        ]);
        assert_eq!(err.variable, "SUPABASE_SIGNED_URL_TTL");
    }

    #[test]
    fn every_variable_is_read() {
        let dir = existing_dir();
        let config = load(&[
            ("LISTEN_ADDR", "0.0.0.0:9000"),
            (
                "COMFYUI_URL",
                "http://gpu1:8188, https://gpu2.example.com/comfy/",
            ),
            ("WORKFLOWS_DIR", &dir),
            ("DEFAULT_WORKFLOW", "sdxl-turbo"),
            ("SUPABASE_URL", "https://abc.supabase.co/"),
            ("SUPABASE_KEY", "service-key"),
            ("SUPABASE_BUCKET", "pics"),
            ("SUPABASE_TABLE", "images_meta"),
            ("SUPABASE_SIGNED_URL_TTL", "3600"),
            ("DATA_DIR", "/var/lib/gateway"),
            ("PUBLIC_BASE_URL", "https://images.example.com/"),
            ("PROGRESS_INTERVAL_MS", "250"),
            ("JOB_TIMEOUT_SECS", "30"),
            ("MAX_ACTIVE_JOBS", "2"),
            ("MAX_BODY_BYTES", "4096"),
            ("API_KEYS", " k1 ,, k2 ,"),
            ("PNG_METADATA", "keep"),
            ("RUST_LOG", "debug,ureq=warn"),
        ])
        .expect("valid");
        assert_eq!(config.listen_addr, "0.0.0.0:9000");
        assert_eq!(
            config.comfyui_urls,
            ["http://gpu1:8188", "https://gpu2.example.com/comfy"]
        );
        assert_eq!(config.workflows_dir, PathBuf::from(dir));
        assert_eq!(config.default_workflow, "sdxl-turbo");
        let supabase = config.supabase.as_ref().expect("both set");
        assert_eq!(supabase.url, "https://abc.supabase.co");
        assert_eq!(supabase.key, "service-key");
        assert_eq!(supabase.bucket, "pics");
        assert_eq!(supabase.table, "images_meta");
        assert_eq!(supabase.signed_url_ttl_secs, 3600);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/gateway"));
        assert_eq!(config.public_base_url, "https://images.example.com");
        assert_eq!(config.progress_interval, Duration::from_millis(250));
        assert_eq!(config.job_timeout, Duration::from_secs(30));
        assert_eq!(config.max_queued_jobs, 2, "MAX_ACTIVE_JOBS is an alias");
        assert_eq!(config.max_body_bytes, 4096);
        assert_eq!(config.api_keys, ["k1", "k2"]);
        assert_eq!(config.png_metadata, PngMetadata::Keep);
        assert_eq!(config.log_filter, "debug,ureq=warn");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let config = load(&[
            ("LISTEN_ADDR", ""),
            ("COMFYUI_URL", "  "),
            ("SUPABASE_URL", ""),
            ("SUPABASE_KEY", ""),
            ("API_KEYS", ""),
            ("PROGRESS_INTERVAL_MS", ""),
            ("PNG_METADATA", " "),
        ])
        .expect("blank means default");
        assert_eq!(config.listen_addr, "127.0.0.1:8000");
        assert_eq!(config.comfyui_urls, ["http://127.0.0.1:8188"]);
        assert!(config.supabase.is_none());
        assert!(config.api_keys.is_empty());
        assert_eq!(config.progress_interval, Duration::from_millis(1000));
        assert_eq!(config.png_metadata, PngMetadata::Strip);
    }

    #[test]
    fn public_base_url_defaults_to_the_listen_address() {
        let config = load(&[("LISTEN_ADDR", "localhost:8080")]).expect("valid");
        assert_eq!(config.public_base_url, "http://localhost:8080");
    }

    #[test]
    fn listen_addr_must_be_host_and_port() {
        for good in ["127.0.0.1:0", "[::1]:8000", "gateway.local:80"] {
            assert_eq!(
                load(&[("LISTEN_ADDR", good)]).expect(good).listen_addr,
                good
            );
        }
        for bad in [
            "8000",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":8000",
            "http://x:80",
            "::1:80",
        ] {
            let err = error(&[("LISTEN_ADDR", bad)]);
            assert_eq!(err.variable, "LISTEN_ADDR", "{bad}");
            assert_eq!(err.value, bad);
        }
    }

    #[test]
    fn comfyui_urls_are_checked_one_by_one() {
        let config = load(&[("COMFYUI_URL", "http://[::1]:8188/,http://b")]).expect("valid");
        assert_eq!(config.comfyui_urls, ["http://[::1]:8188", "http://b"]);
        let err = error(&[("COMFYUI_URL", "127.0.0.1:8188")]);
        assert_eq!(
            err.to_string(),
            "COMFYUI_URL=\"127.0.0.1:8188\": expected an http:// or https:// URL with a host, \
             e.g. http://127.0.0.1:8188"
        );
        for bad in [
            "http://",
            "https:///path",
            "ftp://x",
            "http://a b",
            "http://x:port",
        ] {
            assert_eq!(
                error(&[("COMFYUI_URL", bad)]).variable,
                "COMFYUI_URL",
                "{bad}"
            );
        }
        let err = error(&[("COMFYUI_URL", "http://a,,http://b")]);
        assert_eq!(err.value, "http://a,,http://b");
        assert!(err.expected.contains("no empty entries"), "{err}");
    }

    #[test]
    fn numbers_must_parse_and_respect_minimums() {
        let err = error(&[("PROGRESS_INTERVAL_MS", "fast")]);
        assert_eq!(
            err.to_string(),
            "PROGRESS_INTERVAL_MS=\"fast\": expected a whole number of milliseconds, \
             at least 10, at most 3600000"
        );
        let cases = [
            ("PROGRESS_INTERVAL_MS", "9"),
            ("JOB_TIMEOUT_SECS", "0"),
            ("JOB_TIMEOUT_SECS", "99999999999999"),
            ("MAX_ACTIVE_JOBS", "0"),
            ("MAX_ACTIVE_JOBS", "-1"),
            ("MAX_BODY_BYTES", "1023"),
            ("MAX_BODY_BYTES", "1e6"),
        ];
        for (variable, value) in cases {
            let err = error(&[(variable, value)]);
            assert_eq!((err.variable, err.value.as_str()), (variable, value));
        }
        let lowest = load(&[
            ("PROGRESS_INTERVAL_MS", "10"),
            ("JOB_TIMEOUT_SECS", "1"),
            ("MAX_ACTIVE_JOBS", "1"),
            ("MAX_BODY_BYTES", "1024"),
        ])
        .expect("minimums are allowed");
        assert_eq!(lowest.progress_interval, Duration::from_millis(10));
        assert_eq!(lowest.max_body_bytes, 1024);
    }

    #[test]
    fn supabase_needs_both_url_and_key() {
        let err = error(&[("SUPABASE_URL", "https://abc.supabase.co")]);
        assert_eq!(err.variable, "SUPABASE_KEY");
        assert!(
            err.to_string()
                .starts_with("SUPABASE_KEY=<unset>: expected"),
            "{err}"
        );
        let err = error(&[("SUPABASE_KEY", "secret-key")]);
        assert_eq!(err.variable, "SUPABASE_URL");
        assert!(!err.to_string().contains("secret-key"), "{err}");
    }

    #[test]
    fn supabase_url_must_be_http() {
        let err = error(&[("SUPABASE_URL", "abc.supabase.co"), ("SUPABASE_KEY", "k")]);
        assert_eq!(
            (err.variable, err.value.as_str()),
            ("SUPABASE_URL", "abc.supabase.co")
        );
    }

    #[test]
    fn supabase_defaults_apply_when_enabled() {
        let config = load(&[
            ("SUPABASE_URL", "http://127.0.0.1:54321"),
            ("SUPABASE_KEY", "k"),
        ])
        .expect("valid");
        let supabase = config.supabase.expect("both set");
        assert_eq!(supabase.bucket, "images");
        assert_eq!(supabase.table, "generations");
        assert_eq!(supabase.signed_url_ttl_secs, 0);
    }

    #[test]
    fn supabase_names_and_ttl_are_checked() {
        let base = [("SUPABASE_URL", "http://s"), ("SUPABASE_KEY", "k")];
        let bad = [
            ("SUPABASE_BUCKET", "a/b"),
            ("SUPABASE_TABLE", "gen rations"),
            ("SUPABASE_SIGNED_URL_TTL", "soon"),
        ];
        for (variable, value) in bad {
            let err = error(&[base[0], base[1], (variable, value)]);
            assert_eq!((err.variable, err.value.as_str()), (variable, value));
        }
    }

    #[test]
    fn workflows_dir_must_be_an_existing_directory() {
        let err = error(&[("WORKFLOWS_DIR", "/definitely/not/here")]);
        assert_eq!(
            (err.variable, err.value.as_str()),
            ("WORKFLOWS_DIR", "/definitely/not/here")
        );
        let file = format!("{}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
        let err = error(&[("WORKFLOWS_DIR", &file)]);
        assert!(err.expected.contains("it is a file"), "{err}");
    }

    #[test]
    fn default_workflow_must_be_a_bare_name() {
        for bad in ["../etc/passwd", "sub/dir", ".hidden", "txt2img.json", "a b"] {
            assert_eq!(
                error(&[("DEFAULT_WORKFLOW", bad)]).variable,
                "DEFAULT_WORKFLOW"
            );
        }
    }

    #[test]
    fn png_metadata_is_strip_or_keep() {
        let config = load(&[("PNG_METADATA", "KEEP")]).expect("case-insensitive");
        assert_eq!(config.png_metadata, PngMetadata::Keep);
        let err = error(&[("PNG_METADATA", "remove")]);
        assert_eq!(
            err.to_string(),
            "PNG_METADATA=\"remove\": expected strip or keep"
        );
    }

    #[test]
    fn output_metadata_is_the_new_name_and_wins_over_png_metadata() {
        let config = load(&[("OUTPUT_METADATA", "keep")]).expect("valid");
        assert_eq!(config.png_metadata, PngMetadata::Keep);
        let both = [("OUTPUT_METADATA", "strip"), ("PNG_METADATA", "keep")];
        assert_eq!(load(&both).expect("valid").png_metadata, PngMetadata::Strip);
        let both = [("OUTPUT_METADATA", " "), ("PNG_METADATA", "keep")];
        assert_eq!(
            load(&both)
                .expect("an empty new name is unset")
                .png_metadata,
            PngMetadata::Keep
        );
        let err = error(&[("OUTPUT_METADATA", "drop"), ("PNG_METADATA", "keep")]);
        assert_eq!(
            err.to_string(),
            "OUTPUT_METADATA=\"drop\": expected strip or keep"
        );
    }

    #[test]
    fn api_keys_errors_never_show_the_keys() {
        for bad in [",, ,", "good,bad key"] {
            let err = error(&[("API_KEYS", bad)]);
            assert_eq!((err.variable, err.value.as_str()), ("API_KEYS", REDACTED));
            assert!(!err.to_string().contains("good"), "{err}");
        }
        let err = error(&[("SUPABASE_URL", "http://s"), ("SUPABASE_KEY", "abc\ndef")]);
        assert_eq!(
            err.to_string(),
            format!("SUPABASE_KEY=<redacted>: expected {}", err.expected)
        );
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let config = load(&[
            ("SUPABASE_URL", "http://s"),
            ("SUPABASE_KEY", "super-secret-service-key"),
            ("API_KEYS", "client-key-1,client-key-2"),
        ])
        .expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(!shown.contains("client-key"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("http://s"), "{shown}");
        let pretty = format!("{config:#?}");
        assert!(!pretty.contains("secret") && !pretty.contains("client-key"));
    }

    #[test]
    fn the_real_environment_wins_over_the_file() {
        let file = HashMap::from([
            ("LISTEN_ADDR".to_owned(), "0.0.0.0:1".to_owned()),
            ("RUST_LOG".to_owned(), "trace".to_owned()),
        ]);
        let get = layered(
            |name| (name == "LISTEN_ADDR").then(|| "127.0.0.1:2".to_owned()),
            file,
        );
        assert_eq!(get("LISTEN_ADDR").as_deref(), Some("127.0.0.1:2"));
        assert_eq!(get("RUST_LOG").as_deref(), Some("trace"));
        assert_eq!(get("DATA_DIR"), None);
    }

    #[test]
    fn dotenv_files_are_read_without_touching_the_environment() {
        let dir = temp_dir("good");
        let path = dir.join(".env");
        let text = "# comment\nLISTEN_ADDR=0.0.0.0:7000\nexport API_KEYS=\"a,b\"\n\
                    LISTEN_ADDR=ignored:1\nCOMFYUI_URL='http://x' # trailing\n";
        std::fs::write(&path, text).expect("temp file is writable");
        let vars = read_dotenv(&path).expect("valid file");
        assert_eq!(vars["LISTEN_ADDR"], "0.0.0.0:7000");
        assert_eq!(vars["API_KEYS"], "a,b");
        assert_eq!(vars["COMFYUI_URL"], "http://x");
        assert!(std::env::var_os("LISTEN_ADDR").is_none_or(|v| v != "0.0.0.0:7000"));
        assert!(
            read_dotenv(&dir.join("missing.env"))
                .expect("fine")
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_malformed_dotenv_names_the_file_and_line() {
        let dir = temp_dir("bad");
        let path = dir.join(".env");
        std::fs::write(&path, "A=1\n\n# note\nSUPABASE KEY=hunter2\nB=2\n").expect("writable");
        let err = read_dotenv(&path).expect_err("malformed");
        assert_eq!(err.variable, ".env");
        let message = err.to_string();
        assert!(
            message.starts_with(".env line 4: expected NAME=value"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");

        std::fs::write(&path, "A=1\nB=\"never closed\nC=3\n").expect("writable");
        let message = read_dotenv(&path).expect_err("unclosed quote").to_string();
        assert!(message.starts_with(".env line 2:"), "{message}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unreadable_dotenv_is_an_error() {
        let dir = temp_dir("dir");
        // A directory where the file should be cannot be read as text.
        let err = read_dotenv(&dir).expect_err("a directory");
        assert!(
            err.to_string()
                .starts_with(".env: expected a readable UTF-8 file"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn webhooks_are_off_by_default_and_retried_a_day() {
        let config = load(&[]).expect("defaults");
        assert_eq!(config.webhook.url, None);
        assert!(config.webhook.signing_key.is_none());
        assert!(config.webhook.allowed_hosts.allows_any());
        assert_eq!(config.webhook.retry_window, Duration::from_secs(24 * 3600));
        let config = load(&[
            ("WEBHOOK_URL", "https://hooks.example.com/in"),
            ("WEBHOOK_SECRET", SECRET),
            ("WEBHOOK_ALLOWED_HOSTS", "hooks.example.com"),
            ("WEBHOOK_RETRY_HOURS", "2"),
        ])
        .expect("valid");
        assert_eq!(
            config.webhook.url.as_ref().map(|u| u.as_str()),
            Some("https://hooks.example.com/in")
        );
        assert_eq!(config.webhook.retry_window, Duration::from_secs(7200));
        let shown = format!("{config:?}");
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
    }

    #[test]
    fn webhook_settings_are_checked_with_one_line_errors() {
        let err = error(&[("WEBHOOK_URL", "https://hooks.example.com/in")]);
        assert_eq!(
            (err.variable, err.value.as_str()),
            ("WEBHOOK_SECRET", UNSET)
        );
        let err = error(&[("WEBHOOK_SECRET", "hunter2hunter2hunter2hunter2")]);
        assert_eq!(
            (err.variable, err.value.as_str()),
            ("WEBHOOK_SECRET", REDACTED)
        );
        assert!(err.to_string().contains("whsec_"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = error(&[("WEBHOOK_URL", "ftp://x/"), ("WEBHOOK_SECRET", SECRET)]);
        assert_eq!(err.variable, "WEBHOOK_URL");
        let err = error(&[
            ("WEBHOOK_URL", "https://elsewhere.example.com/"),
            ("WEBHOOK_SECRET", SECRET),
            ("WEBHOOK_ALLOWED_HOSTS", "hooks.example.com"),
        ]);
        assert_eq!(err.variable, "WEBHOOK_URL");
        assert!(err.to_string().contains("hooks.example.com"), "{err}");
        assert_eq!(
            error(&[("WEBHOOK_ALLOWED_HOSTS", "a b")]).variable,
            "WEBHOOK_ALLOWED_HOSTS"
        );
        let err = error(&[("WEBHOOK_RETRY_HOURS", "forever")]);
        assert_eq!(err.variable, "WEBHOOK_RETRY_HOURS");
        assert!(!err.to_string().contains('\n'));
    }
}
