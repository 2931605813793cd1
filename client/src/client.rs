//! The connection to a Silt cluster: [`Client`] knows a list of brokers (the bootstrap list
//! plus every broker `ClusterStatus` reported), holds a pool of HTTP/2 channels to them and a
//! routing table of partition owners (see `routing.rs`), and hands out the raw tonic `Log` and
//! `Admin` clients of its preferred broker plus helpers for the admin calls. Admin calls and
//! metadata lookups go to the preferred broker and fall back to the next known broker when one
//! is unreachable (a transport failure or UNAVAILABLE), so a client outlives any one broker.
//! The [`crate::Producer`] and [`crate::PartitionReader`] build on it.

use std::future::Future;
use std::sync::Arc;

use silt_api::v1::admin_client::AdminClient;
use silt_api::v1::log_client::LogClient;
use silt_api::v1::{
    AlterTopicRequest, ClusterStatusRequest, ClusterStatusResponse, CreateTopicRequest,
    DeleteTopicRequest, DescribeTopicRequest, DescribeTopicResponse, GetStatsRequest,
    GetStatsResponse, ListTopicsRequest, TopicConfig, TopicInfo,
};
use tonic::transport::Channel;

use crate::brokers::{Brokers, endpoint, parse_broker_list};
use crate::error::ClientError;
use crate::routing::{MAX_ROUTES_AGE, RoutingTable, TopicRoutes};

/// Largest gRPC message the client sends or accepts: above the broker's 32 MiB default request
/// limit, so the broker, not the client, is the one that says a request is too large.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A connection to a Silt cluster. Cloning is cheap and shares the connections and the
/// routing table.
#[derive(Debug, Clone)]
pub struct Client {
    /// The broker the client first reached.
    url: String,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    brokers: Brokers,
    routes: RoutingTable,
    /// The URL of each group's coordinator, as last found.
    coordinators: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// The `Log` client of a channel, with the client's message limits.
pub(crate) fn log_client(channel: Channel) -> LogClient<Channel> {
    LogClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The `Admin` client of a channel, with the client's message limits.
pub(crate) fn admin_client(channel: Channel) -> AdminClient<Channel> {
    AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// True when a call that failed this way may succeed at another broker.
pub(crate) fn fails_over(err: &ClientError) -> bool {
    err.is_transport() || err.code() == tonic::Code::Unavailable
}

impl Client {
    /// Connects to a cluster through `urls`: one broker URL (`http://127.0.0.1:7450`) or a
    /// comma-separated list of them; a bare `host:port` means `http://host:port`. The brokers
    /// are tried in order and the first that accepts a connection becomes the preferred one;
    /// the others are remembered for fail-over. Fails only when none can be reached.
    pub async fn connect(urls: &str) -> Result<Client, ClientError> {
        let known = parse_broker_list(urls)?;
        let mut last_error = None;
        for (i, url) in known.iter().enumerate() {
            match endpoint(url)?.connect().await {
                Ok(channel) => {
                    let brokers = Brokers::new(known.clone(), i);
                    brokers.insert_channel(url, channel);
                    return Ok(Self::with_brokers(url, brokers));
                }
                Err(source) => {
                    tracing::debug!(%url, error = %source, "broker unreachable, trying the next");
                    last_error = Some(ClientError::Connect {
                        url: url.clone(),
                        source: Arc::new(source),
                    });
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::InvalidArgument("no broker".into())))
    }

    /// Wraps an existing channel (for tests and custom transports); `url` is its broker's URL.
    pub fn from_channel(url: &str, channel: Channel) -> Client {
        let brokers = Brokers::new(vec![url.to_string()], 0);
        brokers.insert_channel(url, channel);
        Self::with_brokers(url, brokers)
    }

    fn with_brokers(url: &str, brokers: Brokers) -> Client {
        Client {
            url: url.to_string(),
            inner: Arc::new(Inner {
                brokers,
                routes: RoutingTable::default(),
                coordinators: Default::default(),
            }),
        }
    }

    /// The URL of the broker this client first connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every broker URL the client knows: the bootstrap list, then brokers learnt from
    /// `ClusterStatus`.
    pub fn brokers(&self) -> Vec<String> {
        self.inner.brokers.known()
    }

    /// The raw `Log` service client of the preferred broker (a cheap clone).
    pub fn log(&self) -> LogClient<Channel> {
        log_client(self.preferred_channel())
    }

    /// The raw `Admin` service client of the preferred broker (a cheap clone).
    pub fn admin(&self) -> AdminClient<Channel> {
        admin_client(self.preferred_channel())
    }

    /// The raw `Groups` service client of the preferred broker (a cheap clone). Group calls
    /// must reach the group's coordinator; the helpers of [`crate::groups`] find it.
    pub fn groups(&self) -> silt_api::v1::groups_client::GroupsClient<Channel> {
        silt_api::v1::groups_client::GroupsClient::new(self.preferred_channel())
    }

    fn preferred_channel(&self) -> Channel {
        let url = self.inner.brokers.preferred();
        // The preferred URL parsed when it was learnt, so the channel can always be made.
        self.inner
            .brokers
            .channel(&url)
            .expect("known broker URLs are valid")
    }

    /// The URL of the broker tried first for calls any broker serves.
    pub(crate) fn preferred_url(&self) -> String {
        self.inner.brokers.preferred()
    }

    /// The channel to the broker at `url` (lazily connected).
    pub(crate) fn channel(&self, url: &str) -> Result<Channel, ClientError> {
        self.inner.brokers.channel(url)
    }

    /// Notes how a call to `url` ended: an answer makes it preferred, a transport failure
    /// moves the preference on.
    pub(crate) fn report(&self, url: &str, err: Option<&ClientError>) {
        match err {
            None => self.inner.brokers.prefer(url),
            Some(e) if e.is_transport() => self.inner.brokers.demote(url),
            Some(_) => {}
        }
    }

    /// The coordinator of `group` as last found.
    pub(crate) fn inner_coordinator(&self, group: &str) -> Option<String> {
        let map = self
            .inner
            .coordinators
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.get(group).cloned()
    }

    pub(crate) fn remember_coordinator(&self, group: &str, url: &str) {
        let mut map = self
            .inner
            .coordinators
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.insert(group.to_string(), url.to_string());
    }

    pub(crate) fn forget_coordinator(&self, group: &str) {
        let mut map = self
            .inner
            .coordinators
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.remove(group);
    }

    /// Learns broker addresses named by an answer.
    pub(crate) fn learn_brokers<'a>(&self, addresses: impl IntoIterator<Item = &'a str>) {
        self.inner.brokers.learn(addresses);
    }

    /// Known brokers to try for a call any broker serves, the preferred first.
    pub(crate) fn candidates(&self) -> Vec<String> {
        self.inner.brokers.candidates()
    }

    /// Runs `call` against the preferred broker and, while it fails with a transport error or
    /// UNAVAILABLE, against each other known broker once. Returns the first answer or the last
    /// error.
    pub(crate) async fn with_failover<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut last_error = None;
        for url in self.candidates() {
            let result = call(self.channel(&url)?).await.map_err(ClientError::from);
            match result {
                Ok(value) => {
                    self.report(&url, None);
                    return Ok(value);
                }
                Err(e) if fails_over(&e) => {
                    tracing::debug!(%url, error = %e, "broker failed, trying the next");
                    self.report(&url, Some(&e));
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::InvalidArgument("no broker".into())))
    }

    /// The routes of `topic`, loaded with one `ClusterStatus` the first time and refreshed in
    /// the background once older than [`MAX_ROUTES_AGE`].
    pub(crate) async fn routes(&self, topic: &str) -> Arc<TopicRoutes> {
        let routes = self.inner.routes.topic(topic);
        if !routes.is_loaded() {
            self.refresh_routes(topic).await;
        } else if routes.claim_stale(MAX_ROUTES_AGE) {
            let client = self.clone();
            let topic = topic.to_string();
            tokio::spawn(async move { client.refresh_routes(&topic).await });
        }
        routes
    }

    /// Reloads `topic`'s partition owners (coalesced with concurrent reloads, spaced out) and
    /// learns the brokers the answer names. A failure keeps the old routes: routing is an
    /// optimisation, every broker accepts every partition's produce (it forwards).
    pub(crate) async fn refresh_routes(&self, topic: &str) {
        let routes = self.inner.routes.topic(topic);
        let fetched = routes
            .refresh(|| async {
                let status = self.fetch_cluster_status(vec![topic.to_string()]).await?;
                Ok(status
                    .partitions
                    .into_iter()
                    .filter(|p| p.topic == topic)
                    .collect())
            })
            .await;
        if let Err(e) = fetched {
            tracing::debug!(%topic, error = %e, "cannot refresh partition owners");
        }
    }

    async fn fetch_cluster_status(
        &self,
        topics: Vec<String>,
    ) -> Result<ClusterStatusResponse, ClientError> {
        let status = self
            .with_failover(|channel| {
                let request = ClusterStatusRequest {
                    topics: topics.clone(),
                };
                async move {
                    Ok(admin_client(channel)
                        .cluster_status(request)
                        .await?
                        .into_inner())
                }
            })
            .await?;
        self.inner
            .brokers
            .learn(status.brokers.iter().map(|b| b.address.as_str()));
        Ok(status)
    }

    /// Creates a topic; `None` settings take the broker's defaults. [`Client::create_topic_with`]
    /// sets the others (retention by size, cleanup policy, tombstone retention).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        retention_ms: Option<i64>,
        max_record_bytes: Option<u32>,
    ) -> Result<TopicInfo, ClientError> {
        self.create_topic_with(
            name,
            partitions,
            TopicConfig {
                retention_ms,
                max_record_bytes,
                ..TopicConfig::default()
            },
        )
        .await
    }

    /// Changes a live topic's retention (`None` keeps a setting; -1 is unlimited).
    /// [`Client::alter_topic_with`] changes the cleanup policy and tombstone retention too.
    pub async fn alter_topic(
        &self,
        name: &str,
        retention_ms: Option<i64>,
        retention_bytes: Option<i64>,
    ) -> Result<TopicInfo, ClientError> {
        self.alter_topic_with(AlterTopicRequest {
            name: name.to_string(),
            retention_ms,
            retention_bytes,
            ..AlterTopicRequest::default()
        })
        .await
    }

    /// Changes the settings `request` gives of the live topic it names (unset fields stay as
    /// they are): retention by time and size, `cleanup_policy` ("delete", "compact" or
    /// "compact,delete") and `delete_retention_ms`. A request that changes nothing is
    /// INVALID_ARGUMENT.
    pub async fn alter_topic_with(
        &self,
        request: AlterTopicRequest,
    ) -> Result<TopicInfo, ClientError> {
        let response = self
            .with_failover(|channel| {
                let request = request.clone();
                async move {
                    Ok(admin_client(channel)
                        .alter_topic(request)
                        .await?
                        .into_inner())
                }
            })
            .await?;
        response
            .topic
            .ok_or_else(|| ClientError::Protocol("AlterTopic returned no topic".into()))
    }

    /// Creates a topic with every setting of [`TopicConfig`]: retention by time and size, record
    /// limit, `cleanup_policy` ("delete", "compact" or "compact,delete") and
    /// `delete_retention_ms`.
    pub async fn create_topic_with(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicInfo, ClientError> {
        let request = CreateTopicRequest {
            name: name.to_string(),
            partitions,
            config: Some(config),
        };
        let response = self
            .with_failover(|channel| {
                let request = request.clone();
                async move {
                    Ok(admin_client(channel)
                        .create_topic(request)
                        .await?
                        .into_inner())
                }
            })
            .await?;
        response
            .topic
            .ok_or_else(|| ClientError::Protocol("CreateTopic returned no topic".into()))
    }

    /// Lists all topics.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        let response = self
            .with_failover(|channel| async move {
                Ok(admin_client(channel)
                    .list_topics(ListTopicsRequest {})
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(response.topics)
    }

    /// Describes one topic with the offsets of each partition.
    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse, ClientError> {
        let request = DescribeTopicRequest {
            name: name.to_string(),
        };
        let response = self
            .with_failover(|channel| {
                let request = request.clone();
                async move {
                    Ok(admin_client(channel)
                        .describe_topic(request)
                        .await?
                        .into_inner())
                }
            })
            .await?;
        if response.topic.is_none() {
            return Err(ClientError::Protocol(
                "DescribeTopic returned no topic".into(),
            ));
        }
        Ok(response)
    }

    /// Deletes a topic (its data goes in the background).
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTopicRequest {
            name: name.to_string(),
        };
        self.with_failover(|channel| {
            let request = request.clone();
            async move { admin_client(channel).delete_topic(request).await }
        })
        .await?;
        Ok(())
    }

    /// The preferred broker's counters and CPU accounting (not failed over: the numbers are
    /// one broker's).
    pub async fn stats(&self) -> Result<GetStatsResponse, ClientError> {
        Ok(self
            .admin()
            .get_stats(GetStatsRequest {})
            .await?
            .into_inner())
    }

    /// The cluster as any live broker sees it: the live brokers, the controller and the owner
    /// of every partition of every topic. Also teaches the client the brokers it names.
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        self.fetch_cluster_status(Vec::new()).await
    }

    /// [`Client::cluster_status`] with only the partitions of `topics`.
    pub async fn cluster_status_of(
        &self,
        topics: &[&str],
    ) -> Result<ClusterStatusResponse, ClientError> {
        self.fetch_cluster_status(topics.iter().map(|t| t.to_string()).collect())
            .await
    }
}
