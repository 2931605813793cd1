//! What an operator sees of a broker: Prometheus metrics ([`metrics`]), the admin HTTP server
//! with `/metrics`, `/livez` and `/readyz` ([`admin`]), and logs and traces ([`logs`]).

pub mod admin;
pub mod logs;
pub mod metastore;
pub mod metrics;
