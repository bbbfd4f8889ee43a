//! Integration tests of the engine over real HTTP on loopback: the API in process
//! ([`http_api`]), dispatch through faults ([`dispatch`]) the real binary killed
//! mid-stream ([`durability`]) and the dashboards and alerts against a real Prometheus
//! ([`observability`]); each channel's own protocol ([`sources`]) and connection ([`channels`]);
//! the Kubernetes manifests rendered and validated offline ([`deploy`]); journal retention and
//! compaction, killed mid-way ([`retention`]); order details from each channel's API played by
//! local stand-ins ([`details`]).

mod engine {
    pub(crate) mod approvals;
    pub(crate) mod board;
    pub(crate) mod channels;
    pub(crate) mod cluster;
    pub(crate) mod deploy;
    pub(crate) mod details;
    pub(crate) mod dispatch;
    pub(crate) mod durability;
    pub(crate) mod holds;
    pub(crate) mod http_api;
    pub(crate) mod loadgen;
    pub(crate) mod observability;
    pub(crate) mod reports;
    pub(crate) mod retention;
    pub(crate) mod sources;
    pub(crate) mod stock;
    pub(crate) mod support;
}
