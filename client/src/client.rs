//! The connection to one Silt broker: [`Client`] holds one HTTP/2 channel and hands out the raw
//! tonic `Log` and `Admin` clients (cheap clones of the same channel) plus helpers for the admin
//! calls. The [`crate::Producer`] and [`crate::PartitionReader`] build on it.

use std::time::Duration;

use silt_api::v1::admin_client::AdminClient;
use silt_api::v1::log_client::LogClient;
use silt_api::v1::{
    BrokerInfo, ClusterStatusRequest, CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest,
    DescribeTopicResponse, GetStatsRequest, GetStatsResponse, ListTopicsRequest, TopicConfig,
    TopicInfo,
};
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// Largest gRPC message the client sends or accepts: above the broker's 32 MiB default request
/// limit, so the broker, not the client, is the one that says a request is too large.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A connection to a Silt broker. Cloning is cheap and shares the connection.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    log: LogClient<Channel>,
    admin: AdminClient<Channel>,
}

impl Client {
    /// Connects to the broker at `url`, e.g. `http://127.0.0.1:7450`.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            url: url.to_string(),
            source: std::sync::Arc::new(source),
        };
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(connect_err)?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(connect_err)?;
        Ok(Self::from_channel(url, channel))
    }

    /// Wraps an existing channel (for tests and custom transports).
    pub fn from_channel(url: &str, channel: Channel) -> Client {
        let log = LogClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let admin = AdminClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Client {
            url: url.to_string(),
            log,
            admin,
        }
    }

    /// The URL this client connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The raw `Log` service client (a cheap clone).
    pub fn log(&self) -> LogClient<Channel> {
        self.log.clone()
    }

    /// The raw `Admin` service client (a cheap clone).
    pub fn admin(&self) -> AdminClient<Channel> {
        self.admin.clone()
    }

    /// Creates a topic; `None` settings take the broker's defaults.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        retention_ms: Option<i64>,
        max_record_bytes: Option<u32>,
    ) -> Result<TopicInfo, ClientError> {
        let request = CreateTopicRequest {
            name: name.to_string(),
            partitions,
            config: Some(TopicConfig {
                retention_ms,
                max_record_bytes,
            }),
        };
        let response = self.admin().create_topic(request).await?.into_inner();
        response
            .topic
            .ok_or_else(|| ClientError::Protocol("CreateTopic returned no topic".into()))
    }

    /// Lists all topics.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        Ok(self
            .admin()
            .list_topics(ListTopicsRequest {})
            .await?
            .into_inner()
            .topics)
    }

    /// Describes one topic with the offsets of each partition.
    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse, ClientError> {
        let request = DescribeTopicRequest {
            name: name.to_string(),
        };
        let response = self.admin().describe_topic(request).await?.into_inner();
        if response.topic.is_none() {
            return Err(ClientError::Protocol(
                "DescribeTopic returned no topic".into(),
            ));
        }
        Ok(response)
    }

    /// Deletes a topic (its data goes in the background).
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.admin()
            .delete_topic(DeleteTopicRequest {
                name: name.to_string(),
            })
            .await?;
        Ok(())
    }

    /// The broker's counters and CPU accounting.
    pub async fn stats(&self) -> Result<GetStatsResponse, ClientError> {
        Ok(self
            .admin()
            .get_stats(GetStatsRequest {})
            .await?
            .into_inner())
    }

    /// The live brokers of the cluster.
    pub async fn cluster_status(&self) -> Result<Vec<BrokerInfo>, ClientError> {
        Ok(self
            .admin()
            .cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner()
            .brokers)
    }
}
