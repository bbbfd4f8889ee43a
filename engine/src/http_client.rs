//! The HTTP client every outbound caller builds on (sinks, pollers, the channels' APIs): rustls
//! with ring, installed once per process.

/// Installs the TLS crypto provider (ring) once per process. reqwest is built without a
/// provider of its own (its default, aws-lc, needs cmake and builds slowly).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder, with the TLS provider installed first (building a client without
/// one panics).
pub fn builder() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
}
