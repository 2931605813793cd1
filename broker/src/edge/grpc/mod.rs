//! The gRPC edge: `silt.v1.Log` ([`log`]), `silt.v1.Admin` ([`admin`]) and `silt.v1.Groups`
//! ([`groups`]) over the core, the
//! forwarding hop to other brokers ([`forward`]), the one error ⇄ status mapping ([`status`]),
//! plus `grpc.health.v1` and server reflection so generic gRPC tools work.

pub mod admin;
pub mod forward;
pub mod groups;
mod incoming;
pub mod log;
pub mod metrics;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt as _;

use silt_api::v1::admin_server::AdminServer;
use silt_api::v1::groups_server::GroupsServer;
use silt_api::v1::log_server::LogServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::Broker;
pub use admin::AdminService;
pub use forward::GrpcForwarder;
pub use groups::GroupsService;
pub use log::LogService;

/// Largest HTTP/2 frame the broker accepts (advertised in its SETTINGS; HTTP/2's default is
/// 16 KiB). A produce request of a few MiB arrives in a dozen frames instead of hundreds, each
/// frame costing a parse, a wake-up, a flow-control update and a copy call. A connection's
/// read buffer grows to hold its largest frame (at most about twice this) and keeps that size
/// while the connection lives: 256 KiB gave most of what 1 MiB did (BENCHMARKS.md, "HTTP/2
/// frames") for a quarter of the memory per producer connection.
pub const MAX_FRAME_BYTES: u32 = 256 << 10;
/// HTTP/2 flow-control windows the broker advertises (hyper's default: 1 MiB each), so a client
/// can send a request of a few MiB without waiting for window updates, and several per
/// connection. Request bodies are read as they arrive, so these bound what waits in a
/// connection's buffers only while the broker is too busy to read.
pub const STREAM_WINDOW_BYTES: u32 = 4 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// Most time a new connection has to send the HTTP/2 preface (less with a shorter keepalive).
const OPENING_TIME: Duration = Duration::from_secs(30);

/// Serves the gRPC edge on `listener`: health turns NOT_SERVING once `draining` fires (the
/// broker keeps answering while it flushes and hands its partitions over); once `stop`
/// resolves the listener closes, in-flight calls finish and the server returns. `max_message`
/// bounds a request's size. With `keepalive`, a connection the broker heard nothing from for
/// that long is pinged, and its calls end when the client does not answer within twice that
/// (twice: a ping queued behind a subscription's data on a slow link waits its turn): a
/// client that vanished without closing its connection (its host gone, a network cut) would
/// otherwise keep its subscriptions and long polls, and their tasks, for as long as the broker
/// runs. A new connection must send the HTTP/2 preface within `keepalive`, at most 30 s, or
/// is closed.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    max_message: usize,
    keepalive: Option<Duration>,
    draining: CancellationToken,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LogServer<LogService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    health.set_serving::<GroupsServer<GroupsService>>().await;
    {
        let health = health.clone();
        tokio::spawn(async move {
            draining.cancelled().await;
            health.set_not_serving::<LogServer<LogService>>().await;
            health.set_not_serving::<AdminServer<AdminService>>().await;
            health
                .set_not_serving::<GroupsServer<GroupsService>>()
                .await;
        });
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(silt_api::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let log = LogService {
        broker: broker.clone(),
    };
    let request_metrics = metrics::RequestMetricsLayer::new(broker.metrics().clone());
    let groups = GroupsService {
        broker: broker.clone(),
    };
    let admin = AdminService { broker };
    tonic::transport::Server::builder()
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(keepalive.map(|k| k * 2))
        .layer(request_metrics)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            LogServer::new(log)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(AdminServer::new(admin).max_decoding_message_size(max_message))
        .add_service(GroupsServer::new(groups).max_decoding_message_size(max_message))
        // TCP_NODELAY on every accepted connection: acks and subscription messages are small
        // writes, and with Nagle's algorithm each waited for the peer's delayed ACK (tens of
        // ms). tonic sets it only on listeners it binds itself.
        // Each connection must open (send the HTTP/2 preface) within the keepalive period.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(move |accepted| {
                    accepted.map(|stream| {
                        let within = keepalive.unwrap_or(OPENING_TIME).min(OPENING_TIME);
                        incoming::OpeningDeadline::new(stream, within)
                    })
                }),
            stop,
        )
        .await?;
    Ok(())
}
