//! Where a webhook goes and what it carries: the request's `"webhook"` field, `WEBHOOK_URL`, and
//! the `WEBHOOK_ALLOWED_HOSTS` list that restricts both. Pure: no I/O.

use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;

use crate::api::{ApiError, invalid_field};

/// Longest webhook URL accepted.
const MAX_URL_LEN: usize = 2048;

/// The job events a webhook can carry; the names are the SSE `event:` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WebhookEvent {
    /// ComfyUI accepted the prompt.
    Queued,
    /// A progress tick (only when asked for).
    Progress,
    /// The images are stored (also sent when a `storage_failed` job is completed from the spool).
    Complete,
    /// The job failed.
    Error,
    /// The job was cancelled.
    Cancelled,
}

impl WebhookEvent {
    /// Every event, in the order a job emits them.
    pub const ALL: [WebhookEvent; 5] = [
        WebhookEvent::Queued,
        WebhookEvent::Progress,
        WebhookEvent::Complete,
        WebhookEvent::Error,
        WebhookEvent::Cancelled,
    ];

    /// The events sent when a target names none: all but `progress`.
    pub const DEFAULT: [WebhookEvent; 4] = [
        WebhookEvent::Queued,
        WebhookEvent::Complete,
        WebhookEvent::Error,
        WebhookEvent::Cancelled,
    ];

    /// The name on the wire (the body's `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Queued => "queued",
            WebhookEvent::Progress => "progress",
            WebhookEvent::Complete => "complete",
            WebhookEvent::Error => "error",
            WebhookEvent::Cancelled => "cancelled",
        }
    }

    /// The event with this name, if there is one.
    pub fn from_name(name: &str) -> Option<WebhookEvent> {
        WebhookEvent::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

impl fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked `http://` or `https://` URL, with its host and port for the allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: String,
    host: String,
    port: u16,
}

impl WebhookUrl {
    /// Checks `raw`: `http` or `https`, a host, no user info, at most 2048 characters. The
    /// error is a phrase that follows "expected".
    pub fn parse(raw: &str) -> Result<WebhookUrl, String> {
        const EXPECTED: &str =
            "an http:// or https:// URL with a host, e.g. https://example.com/hooks";
        if raw.len() > MAX_URL_LEN {
            return Err(format!("a URL of at most {MAX_URL_LEN} characters"));
        }
        let uri: ureq::http::Uri = raw.parse().map_err(|_| EXPECTED.to_string())?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            _ => return Err(EXPECTED.to_string()),
        };
        let authority = uri.authority().ok_or_else(|| EXPECTED.to_string())?;
        if authority.as_str().contains('@') {
            return Err("a URL without user name or password".to_string());
        }
        let host = unbracket(authority.host()).to_ascii_lowercase();
        if host.is_empty() {
            return Err(EXPECTED.to_string());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(WebhookUrl {
            url: raw.to_string(),
            host,
            port,
        })
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The URL without its query, for logs (a query may carry a token).
    pub fn redacted(&self) -> &str {
        without_query(&self.url)
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.redacted())
    }
}

/// `url` without its query and fragment, for logs (a query may carry a token).
pub(super) fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or_default()
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `WEBHOOK_ALLOWED_HOSTS`: the hosts (optionally `host:port`) webhooks may go to; empty allows
/// any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<(String, Option<u16>)>);

impl AllowedHosts {
    /// Reads a comma-separated list of `host` or `host:port` entries (`[::1]:8080` for IPv6).
    /// Host names compare case-insensitively; an entry without a port allows every port.
    pub fn parse(raw: &str) -> Result<AllowedHosts, String> {
        const EXPECTED: &str = "host names or host:port entries separated by commas, \
                                e.g. hooks.example.com,127.0.0.1:9000";
        let mut entries = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (host, port) = split_host_port(entry).ok_or_else(|| EXPECTED.to_string())?;
            let valid = !host.is_empty()
                && (host.parse::<std::net::Ipv6Addr>().is_ok()
                    || host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
            if !valid {
                return Err(EXPECTED.to_string());
            }
            entries.push((host.to_ascii_lowercase(), port));
        }
        if entries.is_empty() {
            return Err(EXPECTED.to_string());
        }
        Ok(AllowedHosts(entries))
    }

    /// Whether the list is empty (every host allowed).
    pub fn allows_any(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether webhooks may go to `url`.
    pub fn allows(&self, url: &WebhookUrl) -> bool {
        self.allows_any()
            || self
                .0
                .iter()
                .any(|(host, port)| *host == url.host && port.is_none_or(|p| p == url.port))
    }

    /// The entries, for messages.
    pub fn describe(&self) -> String {
        let shown: Vec<String> = self
            .0
            .iter()
            .map(|(host, port)| match (port, host.contains(':')) {
                (Some(port), true) => format!("[{host}]:{port}"),
                (Some(port), false) => format!("{host}:{port}"),
                (None, _) => host.clone(),
            })
            .collect();
        shown.join(", ")
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address has no port.
fn split_host_port(entry: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port.parse().ok()?))),
        Some(_) => Some((entry, None)), // a bare IPv6 address
        None => Some((entry, None)),
    }
}

/// The request's `"webhook": {"url": "...", "events": [...]}`, checked for shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    /// Where to send.
    pub url: WebhookUrl,
    /// Which events; `None` for the default ones.
    pub events: Option<BTreeSet<WebhookEvent>>,
}

impl WebhookRequest {
    /// The field as a request (or a saved job) carries it.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::json!({ "url": self.url.as_str() });
        if let Some(events) = &self.events {
            value["events"] = events.iter().map(|e| e.as_str()).collect();
        }
        value
    }

    /// Reads the field; errors are `400 invalid_params` naming `webhook`, `webhook.url`,
    /// `webhook.events` or the unknown key.
    pub fn from_json(value: &Value) -> Result<WebhookRequest, ApiError> {
        let Value::Object(fields) = value else {
            return Err(invalid_field(
                "webhook",
                "must be an object: {\"url\": \"https://...\", \"events\": [...]}",
            ));
        };
        if let Some(other) = fields
            .keys()
            .find(|k| !matches!(k.as_str(), "url" | "events"))
        {
            return Err(invalid_field(
                &format!("webhook.{other}"),
                "unknown key: a webhook takes \"url\" and \"events\"",
            ));
        }
        let url = match fields.get("url") {
            Some(Value::String(url)) => WebhookUrl::parse(url.trim())
                .map_err(|expected| invalid_field("webhook.url", &format!("must be {expected}")))?,
            Some(_) => return Err(invalid_field("webhook.url", "must be a string")),
            None => return Err(invalid_field("webhook.url", "is required")),
        };
        let events = match fields.get("events") {
            None | Some(Value::Null) => None,
            Some(value) => Some(event_set(value)?),
        };
        Ok(WebhookRequest { url, events })
    }
}

impl serde::Serialize for WebhookRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for WebhookRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        WebhookRequest::from_json(&value).map_err(|e| serde::de::Error::custom(e.message))
    }
}

fn event_set(value: &Value) -> Result<BTreeSet<WebhookEvent>, ApiError> {
    let names: Vec<&str> = WebhookEvent::ALL.iter().map(|e| e.as_str()).collect();
    let expected = format!(
        "must be a non-empty list of event names ({})",
        names.join(", ")
    );
    let Value::Array(items) = value else {
        return Err(invalid_field("webhook.events", &expected));
    };
    let mut events = BTreeSet::new();
    for item in items {
        match item.as_str().and_then(WebhookEvent::from_name) {
            Some(event) => events.insert(event),
            None => {
                return Err(invalid_field(
                    "webhook.events",
                    &format!("{item} is not an event; {expected}"),
                ));
            }
        };
    }
    if events.is_empty() {
        return Err(invalid_field("webhook.events", &expected));
    }
    Ok(events)
}

/// One destination of a job's webhooks: a URL and the events it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// Where to send.
    pub url: WebhookUrl,
    /// Which events.
    pub events: BTreeSet<WebhookEvent>,
}

impl WebhookTarget {
    /// A target for the default events.
    pub fn with_default_events(url: WebhookUrl) -> WebhookTarget {
        WebhookTarget {
            url,
            events: WebhookEvent::DEFAULT.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;
    use serde_json::json;

    fn field_of(value: Value) -> String {
        let error = WebhookRequest::from_json(&value).expect_err("refused");
        assert_eq!(error.code, ErrorCode::InvalidParams);
        let fields = error.details["fields"].as_object().expect("fields");
        fields.keys().next().expect("one field").clone()
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok =
            WebhookRequest::from_json(&json!({"url": "https://h.example/x?t=1"})).expect("valid");
        assert_eq!(ok.events, None);
        assert_eq!(ok.url.redacted(), "https://h.example/x");
        let ok = WebhookRequest::from_json(
            &json!({"url": "http://127.0.0.1:9/", "events": ["progress", "complete", "complete"]}),
        )
        .expect("valid");
        assert_eq!(
            ok.events.map(|e| e.into_iter().collect::<Vec<_>>()),
            Some(vec![WebhookEvent::Progress, WebhookEvent::Complete])
        );
        assert_eq!(field_of(json!("https://h")), "webhook");
        assert_eq!(field_of(json!({"url": "ftp://h/x"})), "webhook.url");
        assert_eq!(
            field_of(json!({"url": "file:///etc/passwd"})),
            "webhook.url"
        );
        assert_eq!(field_of(json!({"url": "not a url"})), "webhook.url");
        assert_eq!(field_of(json!({"url": "http://u:p@h/"})), "webhook.url");
        assert_eq!(field_of(json!({"url": 7})), "webhook.url");
        assert_eq!(field_of(json!({"events": ["complete"]})), "webhook.url");
        assert_eq!(
            field_of(json!({"url": "http://h/", "events": ["done"]})),
            "webhook.events"
        );
        assert_eq!(
            field_of(json!({"url": "http://h/", "events": []})),
            "webhook.events"
        );
        assert_eq!(
            field_of(json!({"url": "http://h/", "events": "complete"})),
            "webhook.events"
        );
        assert_eq!(
            field_of(json!({"url": "http://h/", "secret": "x"})),
            "webhook.secret"
        );
    }

    #[test]
    fn allowed_hosts_match_host_and_optional_port() {
        let allowed =
            AllowedHosts::parse("Hooks.Example.com, 127.0.0.1:9000,[::1]:8080").expect("valid");
        let url = |raw: &str| WebhookUrl::parse(raw).expect("valid url");
        assert!(allowed.allows(&url("https://hooks.example.com/a")));
        assert!(allowed.allows(&url("http://HOOKS.example.com:81/a")));
        assert!(allowed.allows(&url("http://127.0.0.1:9000/")));
        assert!(!allowed.allows(&url("http://127.0.0.1:9001/")));
        assert!(!allowed.allows(&url("http://127.0.0.1/")));
        assert!(allowed.allows(&url("http://[::1]:8080/")));
        assert!(!allowed.allows(&url("https://evil.example.com/")));
        assert!(!allowed.allows(&url("https://hooks.example.com.evil.net/")));
        assert!(AllowedHosts::default().allows(&url("http://anything/")));
        assert!(AllowedHosts::parse(" , ").is_err());
        assert!(AllowedHosts::parse("a b").is_err());
        assert!(AllowedHosts::parse("host:port").is_err());
        assert_eq!(
            allowed.describe(),
            "hooks.example.com, 127.0.0.1:9000, [::1]:8080"
        );
    }
}
