//! ComfyUI base URLs: parsed once, so the HTTP client and the websocket agree on where ComfyUI is.
//!
//! A base URL is `http://host:port` or `https://host:port`, optionally followed by a path prefix
//! (a reverse proxy that mounts ComfyUI under `/comfy`). Every endpoint hangs off it: `/prompt`
//! becomes `http://host:port/comfy/prompt`, the websocket `ws://host:port/comfy/ws?clientId=..`.

use super::ComfyError;

/// A validated ComfyUI base URL, split into the parts the two transports need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseUrl {
    /// Whether the URL said `https`.
    pub tls: bool,
    /// `host[:port]` exactly as written (IPv6 hosts keep their brackets).
    pub authority: String,
    /// The host name or address, without brackets, ready for name resolution.
    pub host: String,
    /// The port, explicit or the scheme's default.
    pub port: u16,
    /// The path prefix without a trailing slash: empty, or starting with `/`.
    pub prefix: String,
}

impl BaseUrl {
    /// Parses `text`, accepting a trailing slash and rejecting what ComfyUI URLs never contain
    /// (user info, a query, a fragment).
    pub fn parse(text: &str) -> Result<BaseUrl, ComfyError> {
        let invalid = |reason: &str| ComfyError::InvalidInput {
            reason: format!("the ComfyUI URL {text:?} is not usable: {reason}"),
        };
        let trimmed = text.trim();
        let (tls, rest) = split_scheme(trimmed).ok_or_else(|| {
            invalid("it must start with http:// or https://, e.g. http://127.0.0.1:8188")
        })?;
        if rest.contains(['?', '#']) {
            return Err(invalid("it must not carry a query or a fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port).ok_or_else(|| {
            invalid("it needs a host and, if given, a numeric port, e.g. http://127.0.0.1:8188")
        })?;
        Ok(BaseUrl {
            tls,
            authority: authority.to_string(),
            host,
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// The normalised HTTP base, without a trailing slash, e.g. `http://127.0.0.1:8188/comfy`.
    pub fn http_base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.prefix)
    }

    /// The websocket URL for `client_id`.
    ///
    /// Fails for an `https` base: that needs `wss://`, and this build has no TLS for websockets.
    pub fn ws_url(&self, client_id: &str) -> Result<String, ComfyError> {
        if self.tls {
            return Err(ComfyError::InvalidInput {
                reason: format!(
                    "the ComfyUI URL {} is https, so its websocket needs wss://, which this build \
                     cannot speak (no TLS for websockets); reach ComfyUI over plain http, e.g. on \
                     its local network address",
                    self.http_base()
                ),
            });
        }
        Ok(format!(
            "ws://{}{}/ws?clientId={}",
            self.authority,
            self.prefix,
            crate::percent::encode(client_id)
        ))
    }
}

/// Splits off `http://` or `https://` (any letter case); `None` for other schemes.
fn split_scheme(url: &str) -> Option<(bool, &str)> {
    for (prefix, tls) in [("http://", false), ("https://", true)] {
        if url.len() >= prefix.len() && url[..prefix.len()].eq_ignore_ascii_case(prefix) {
            return Some((tls, &url[prefix.len()..]));
        }
    }
    None
}

/// Splits `host[:port]` or `[v6addr][:port]`; `None` when the host is empty or the port is not a
/// number in range.
fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(digits) => digits.parse().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_get_default_ports_and_lose_trailing_slashes() {
        let url = BaseUrl::parse("http://127.0.0.1:8188/").expect("valid");
        assert_eq!(url.http_base(), "http://127.0.0.1:8188");
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 8188));
        let url = BaseUrl::parse("HTTP://comfy.local").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("comfy.local", 80));
        assert_eq!(url.http_base(), "http://comfy.local");
    }

    #[test]
    fn path_prefixes_carry_over_to_the_websocket() {
        let url = BaseUrl::parse("http://gpu-box:8188/comfy/ui/").expect("valid");
        assert_eq!(url.http_base(), "http://gpu-box:8188/comfy/ui");
        assert_eq!(
            url.ws_url("abc-123").expect("plain http"),
            "ws://gpu-box:8188/comfy/ui/ws?clientId=abc-123"
        );
    }

    #[test]
    fn ipv6_hosts_keep_brackets_in_urls_but_not_for_resolution() {
        let url = BaseUrl::parse("http://[::1]:8188").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("::1", 8188));
        assert_eq!(
            url.ws_url("x").expect("plain"),
            "ws://[::1]:8188/ws?clientId=x"
        );
    }

    #[test]
    fn https_is_fine_for_http_but_not_for_the_websocket() {
        let url = BaseUrl::parse("https://comfy.example.com").expect("valid");
        assert_eq!(url.port, 443);
        let err = url.ws_url("x").expect_err("no TLS websockets");
        assert!(err.to_string().contains("wss://"), "{err}");
    }

    #[test]
    fn unusable_urls_are_refused_with_a_reason() {
        for bad in [
            "127.0.0.1:8188",
            "ftp://host",
            "http://",
            "http://:8188",
            "http://host:port",
            "http://host:99999",
            "http://user:pw@host",
            "http://host/?q=1",
        ] {
            let err = BaseUrl::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("not usable"), "{bad}: {err}");
        }
    }

    #[test]
    fn client_ids_are_percent_encoded() {
        assert_eq!(crate::percent::encode("a b/c&d~e"), "a%20b%2Fc%26d~e");
    }
}
