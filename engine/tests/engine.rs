//! Integration tests of the engine over real HTTP on loopback: the API in process
//! ([`http_api`]), dispatch through faults ([`dispatch`]) and the real binary killed
//! mid-stream ([`durability`]).

mod engine {
    pub(crate) mod dispatch;
    pub(crate) mod durability;
    pub(crate) mod http_api;
    pub(crate) mod loadgen;
    pub(crate) mod support;
}
