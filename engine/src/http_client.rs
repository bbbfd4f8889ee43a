//! The HTTP client every outbound caller builds on (sinks, pollers, the channels' APIs): rustls
//! with ring, installed once per process.

/// Installs the TLS crypto provider (ring) once per process. reqwest is built without a
/// provider of its own (its default, aws-lc, needs cmake and builds slowly).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder, with the TLS provider installed first (building a client without
/// one panics).
///
/// reqwest's own retry layer is switched off: it only retries HTTP/2 and HTTP/3 refusals, and
/// this tree speaks HTTP/1.1, yet by default it copies every request (headers and extensions)
/// in case it needs to. The callers retry on their own terms (the dispatchers' policy).
pub fn builder() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder().retry(reqwest::retry::never().max_retries_per_request(0))
}
