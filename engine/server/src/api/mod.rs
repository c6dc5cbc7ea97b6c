//! The request path: TCP connections ([`connections`]), admission and load
//! shedding on HTTP/2 ([`transport`]), the gRPC services ([`grpc`]) and the
//! operational HTTP port ([`http`]), both optionally over TLS ([`tls`]), and
//! the rule studio on the HTTP port ([`studio`]).

pub mod connections;
pub mod grpc;
pub mod http;
pub mod studio;
pub mod tls;
pub mod transport;
