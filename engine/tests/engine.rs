//! Integration tests of the engine over real HTTP on loopback: the API in process
//! ([`http_api`]) and the real binary killed mid-stream ([`durability`]).

mod engine {
    pub(crate) mod durability;
    pub(crate) mod http_api;
    pub(crate) mod support;
}
