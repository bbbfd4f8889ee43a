# orderhub's container image: `docker build -t orderhub:0.1.0 .` (see docs/deploy.md).
#
# Build stage: the workspace's one Rust toolchain (rust-version 1.95), only the engine binary,
# with the versions Cargo.lock pins. SQLite is bundled (rusqlite's `bundled`), TLS is rustls:
# the runtime image needs no C library beyond glibc and the CA roots.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p orderhub-engine --bin orderhub \
    && strip target/release/orderhub

# Runtime stage: Debian slim, CA certificates for the sinks' and channels' HTTPS, a non-root
# user whose uid the Kubernetes manifests run as, the journal under /data.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 orderhub \
    && useradd --system --uid 10001 --gid orderhub --home-dir /data orderhub \
    && mkdir -p /data \
    && chown orderhub:orderhub /data
COPY --from=build /src/target/release/orderhub /usr/local/bin/orderhub
USER 10001:10001
WORKDIR /data
EXPOSE 8080
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/orderhub"]
CMD ["serve", "--data-dir", "/data", "--listen", "0.0.0.0:8080"]
