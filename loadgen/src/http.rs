//! The request loops' HTTP client: keep-alive HTTP/1.1 connections over hyper's connection
//! API, the target's address parsed once, each request's path a static string. reqwest (kept
//! for the few control requests — readiness, `/metrics`, the simulators' records — and for
//! `https://` targets) parses a URL, builds a header map and goes through its pool and tower
//! stack on every request: perf put that above the kernel's own loopback work per request,
//! and a load generator's CPU is CPU the engine under test does not get on a shared box.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use std::sync::Mutex;

/// An engine's answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, in seconds, when given as a number.
    pub retry_after: Option<f64>,
    /// The response body.
    pub body: Bytes,
}

/// Posts request bodies to one target, reusing idle connections (as many as requests in
/// flight).
pub struct Poster {
    target: Target,
}

enum Target {
    /// `http://host:port[/prefix]`: hyper connections of our own.
    Plain {
        addr: String,
        host: HeaderValue,
        prefix: String,
        idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    },
    /// `https://…`: through reqwest (TLS), as before.
    Tls {
        client: reqwest::Client,
        base: String,
    },
}

impl Poster {
    /// A poster for `target` (`http://` or `https://`); `client` serves `https://` targets.
    pub fn new(target: &str, client: reqwest::Client) -> anyhow::Result<Poster> {
        let base = target.trim_end_matches('/');
        let uri: Uri = base
            .parse()
            .map_err(|e| anyhow::anyhow!("--target {target:?} is not a URL: {e}"))?;
        let target = match uri.scheme_str() {
            Some("http") => {
                let authority = uri
                    .authority()
                    .ok_or_else(|| anyhow::anyhow!("--target {target:?} has no host"))?;
                let port = authority.port_u16().unwrap_or(80);
                Target::Plain {
                    addr: format!("{}:{port}", authority.host()),
                    host: HeaderValue::from_str(authority.as_str())?,
                    prefix: uri.path().trim_end_matches('/').to_owned(),
                    idle: Mutex::new(Vec::new()),
                }
            }
            Some("https") => Target::Tls {
                client,
                base: base.to_owned(),
            },
            _ => anyhow::bail!("--target {target:?} must start with http:// or https://"),
        };
        Ok(Poster { target })
    }

    /// POSTs `body` to `path` with `headers` (the content type among them). A kept-alive connection the engine closed
    /// meanwhile is replaced and the request sent once more on a new one (loadgen's requests
    /// carry event ids, so the engine deduplicates a request that did arrive twice).
    pub async fn post(
        &self,
        path: &'static str,
        headers: &[(&'static str, &str)],
        body: Bytes,
    ) -> Result<Answer, String> {
        match &self.target {
            Target::Plain {
                addr,
                host,
                prefix,
                idle,
            } => {
                let uri = if prefix.is_empty() {
                    Uri::from_static(path)
                } else {
                    format!("{prefix}{path}")
                        .parse()
                        .map_err(|e| format!("{prefix}{path}: {e}"))?
                };
                let reused = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let fresh = reused.is_none();
                let mut sender = match reused {
                    Some(sender) => sender,
                    None => connect(addr).await?,
                };
                let request = || {
                    let mut builder = Request::builder()
                        .method(Method::POST)
                        .uri(uri.clone())
                        .header(HOST, host.clone());
                    for (name, value) in headers {
                        builder = builder.header(*name, *value);
                    }
                    builder
                        .body(Full::new(body.clone()))
                        .map_err(|e| format!("bad request headers: {e}"))
                };
                let response = match exchange(&mut sender, request()?).await {
                    Ok(response) => response,
                    Err(_) if !fresh => {
                        // The idle connection had been closed: once more on a new one.
                        sender = connect(addr).await?;
                        exchange(&mut sender, request()?).await?
                    }
                    Err(err) => return Err(err),
                };
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok());
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?
                    .to_bytes();
                if !sender.is_closed() {
                    idle.lock().unwrap_or_else(|e| e.into_inner()).push(sender);
                }
                Ok(Answer {
                    status,
                    retry_after,
                    body,
                })
            }
            Target::Tls { client, base } => {
                let mut builder = client.post(format!("{base}{path}"));
                for (name, value) in headers {
                    builder = builder.header(*name, *value);
                }
                let response = builder.body(body).send().await.map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok());
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                Ok(Answer {
                    status,
                    retry_after,
                    body,
                })
            }
        }
    }
}

/// Opens a keep-alive HTTP/1.1 connection to `addr`, its driver on its own task.
async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn posts_reuse_one_connection_and_read_the_answer() {
        use axum::extract::ConnectInfo;
        use std::collections::BTreeSet;
        use std::net::SocketAddr;
        use std::sync::Arc;
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
        let peers = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = peers.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/p/v1/events",
            axum::routing::post(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      headers: axum::http::HeaderMap,
                      body: String| async move {
                    seen.lock().unwrap().insert(peer);
                    let id = headers["webhook-id"].to_str().unwrap().to_owned();
                    (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "2")],
                        format!("{id}:{body}"),
                    )
                },
            ),
        );
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        let poster = Poster::new(&format!("http://{addr}/p/"), reqwest::Client::new()).unwrap();
        for n in 0..3 {
            let id = format!("e{n}");
            let answer = poster
                .post(
                    "/v1/events",
                    &[("webhook-id", id.as_str())],
                    Bytes::from("{}"),
                )
                .await
                .unwrap();
            assert_eq!(answer.status, 429);
            assert_eq!(answer.retry_after, Some(2.0));
            assert_eq!(answer.body, format!("e{n}:{{}}"));
        }
        assert_eq!(peers.lock().unwrap().len(), 1, "one kept-alive connection");
        assert!(Poster::new("ftp://x", reqwest::Client::new()).is_err());
        let refused = Poster::new("http://127.0.0.1:1", reqwest::Client::new()).unwrap();
        let err = refused
            .post("/v1/events", &[], Bytes::new())
            .await
            .unwrap_err();
        assert!(err.contains("connecting to 127.0.0.1:1"), "{err}");
    }
}
