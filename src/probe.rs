//! `registrar probe <url>`: one HTTP GET of an admin endpoint (e.g. the operator Service's
//! `/readyz`), exit 0 on a 2xx answer. The chart's `helm test` pod runs it from the operator's
//! own image, which has no shell, curl or wget.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of an answer read (the admin endpoints answer a few lines).
const MAX_ANSWER: u64 = 64 * 1024;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL is not `http://<host>:<port>[/path]`.
    #[error("{0:?} is not an http://<host>:<port>/<path> URL")]
    InvalidUrl(String),
    /// The host name did not resolve (or to no address).
    #[error("resolving {authority}: {source}")]
    Resolve {
        authority: String,
        source: std::io::Error,
    },
    /// No address of the host accepted a connection.
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    /// Sending the request or reading the answer failed.
    #[error("talking to {authority}: {source}")]
    Io {
        authority: String,
        source: std::io::Error,
    },
    /// No complete answer within the timeout.
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    /// The answer is not HTTP.
    #[error("{0} answered something that is not HTTP: {1:?}")]
    NotHttp(String, String),
    /// A status other than 2xx.
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code (2xx).
    pub status: u16,
    /// The body, trimmed.
    pub body: String,
}

/// Splits `http://host:port/path` into (`host:port`, `/path`).
pub fn split_url(url: &str) -> Result<(&str, &str), ProbeError> {
    let invalid = || ProbeError::InvalidUrl(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    // A port is required: the admin port is never 80.
    let (host, port) = authority.rsplit_once(':').ok_or_else(invalid)?;
    if host.is_empty() || host == "[" || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    Ok((authority, path))
}

/// GETs `url` (plain HTTP/1.0), giving up after `timeout` in all: the status and body of a 2xx
/// answer, or why not.
pub async fn probe(url: &str, timeout: Duration) -> Result<Answer, ProbeError> {
    let (authority, path) = split_url(url)?;
    tokio::time::timeout(timeout, get(url, authority, path))
        .await
        .map_err(|_| ProbeError::Timeout(authority.to_string(), timeout))?
}

async fn get(url: &str, authority: &str, path: &str) -> Result<Answer, ProbeError> {
    let io = |source| ProbeError::Io {
        authority: authority.to_string(),
        source,
    };
    let addrs: Vec<_> = tokio::net::lookup_host(authority)
        .await
        .map_err(|source| ProbeError::Resolve {
            authority: authority.to_string(),
            source,
        })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = stream.ok_or_else(|| ProbeError::Connect {
        authority: authority.to_string(),
        source: last,
    })?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: registrar-probe\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .map_err(io)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| ProbeError::NotHttp(authority.to_string(), status_line.to_string()))?;
    let body = body.trim().to_string();
    if (200..300).contains(&status) {
        Ok(Answer { status, body })
    } else {
        Err(ProbeError::Status {
            url: url.to_string(),
            status,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_http_a_host_and_a_port() {
        assert_eq!(
            split_url("http://registrar-metrics.ops.svc:8080/readyz").unwrap(),
            ("registrar-metrics.ops.svc:8080", "/readyz")
        );
        assert_eq!(split_url("http://[::1]:8080").unwrap(), ("[::1]:8080", "/"));
        for bad in [
            "https://a:1/readyz",
            "http://a/readyz",
            "http://:1/readyz",
            "http://a:port/readyz",
            "a:1",
        ] {
            assert!(
                matches!(split_url(bad), Err(ProbeError::InvalidUrl(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_port_fails_to_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = probe(&format!("http://{addr}/readyz"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let err = probe(&format!("http://{addr}/readyz"), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Timeout(..)), "{err}");
        drop(listener);
    }
}
