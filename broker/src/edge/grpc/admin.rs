//! `silt.v1.Admin` over the core: convert, call the [`Broker`] facade, convert back.

use std::sync::Arc;

use silt_api::v1 as api;
use silt_api::v1::admin_server::Admin;
use silt_metadata::catalog::Topic;
use silt_metadata::codec::CleanupPolicy;
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::core::{Broker, BrokerError, TopicChange, TopicSpec};

/// `silt.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    pub broker: Arc<Broker>,
}

fn info(t: &Topic) -> api::TopicInfo {
    api::TopicInfo {
        name: t.record.name.clone(),
        topic_id: t.id,
        partitions: t.record.partitions,
        retention_ms: t.record.retention_ms,
        retention_bytes: t.record.retention_bytes,
        max_record_bytes: t.record.max_record_bytes,
        created_at_ms: t.record.created_at_ms,
        cleanup_policy: t.record.cleanup_policy.to_string(),
        delete_retention_ms: t.record.delete_retention_ms,
    }
}

/// A wire `cleanup_policy`, when given: Kafka's spellings, anything else invalid.
fn cleanup_policy(policy: Option<&str>) -> Result<Option<CleanupPolicy>, BrokerError> {
    policy
        .map(|p| {
            p.parse::<CleanupPolicy>()
                .map_err(|e| BrokerError::invalid(e.to_string()))
        })
        .transpose()
}

#[tonic::async_trait]
impl Admin for AdminService {
    #[tracing::instrument(name = "CreateTopic", skip_all, fields(topic = %request.get_ref().name))]
    async fn create_topic(
        &self,
        request: Request<api::CreateTopicRequest>,
    ) -> Result<Response<api::CreateTopicResponse>, Status> {
        let req = request.into_inner();
        let config = req.config.unwrap_or_default();
        let spec = TopicSpec {
            name: req.name,
            partitions: req.partitions,
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            max_record_bytes: config.max_record_bytes,
            cleanup_policy: cleanup_policy(config.cleanup_policy.as_deref()).map_err(to_status)?,
            delete_retention_ms: config.delete_retention_ms,
        };
        let topic = self.broker.create_topic(&spec).await.map_err(to_status)?;
        Ok(Response::new(api::CreateTopicResponse {
            topic: Some(info(&topic)),
        }))
    }

    #[tracing::instrument(name = "AlterTopic", skip_all, fields(topic = %request.get_ref().name))]
    async fn alter_topic(
        &self,
        request: Request<api::AlterTopicRequest>,
    ) -> Result<Response<api::AlterTopicResponse>, Status> {
        let req = request.into_inner();
        let change = TopicChange {
            retention_ms: req.retention_ms,
            retention_bytes: req.retention_bytes,
            cleanup_policy: cleanup_policy(req.cleanup_policy.as_deref()).map_err(to_status)?,
            delete_retention_ms: req.delete_retention_ms,
        };
        let topic = self
            .broker
            .alter_topic(&req.name, &change)
            .await
            .map_err(to_status)?;
        Ok(Response::new(api::AlterTopicResponse {
            topic: Some(info(&topic)),
        }))
    }

    #[tracing::instrument(name = "DeleteTopic", skip_all, fields(topic = %request.get_ref().name))]
    async fn delete_topic(
        &self,
        request: Request<api::DeleteTopicRequest>,
    ) -> Result<Response<api::DeleteTopicResponse>, Status> {
        self.broker
            .delete_topic(&request.into_inner().name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(api::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _request: Request<api::ListTopicsRequest>,
    ) -> Result<Response<api::ListTopicsResponse>, Status> {
        let topics = self.broker.list_topics().iter().map(|t| info(t)).collect();
        Ok(Response::new(api::ListTopicsResponse { topics }))
    }

    #[tracing::instrument(name = "DescribeTopic", skip_all, fields(topic = %request.get_ref().name))]
    async fn describe_topic(
        &self,
        request: Request<api::DescribeTopicRequest>,
    ) -> Result<Response<api::DescribeTopicResponse>, Status> {
        let (topic, offsets) = self
            .broker
            .describe_topic(&request.get_ref().name)
            .map_err(to_status)?;
        let partitions = offsets
            .into_iter()
            .enumerate()
            .map(|(p, o)| api::PartitionInfo {
                partition: p as u32,
                log_start_offset: o.log_start,
                high_watermark: o.high_watermark,
            })
            .collect();
        Ok(Response::new(api::DescribeTopicResponse {
            topic: Some(info(&topic)),
            partitions,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<api::GetStatsRequest>,
    ) -> Result<Response<api::GetStatsResponse>, Status> {
        let s = self.broker.stats();
        Ok(Response::new(api::GetStatsResponse {
            broker_id: s.broker_id,
            cpu_seconds: s.cpu_seconds,
            uptime_ms: s.uptime_ms,
            records_produced: s.records_produced,
            bytes_produced: s.bytes_produced,
            segments_flushed: s.segments_flushed,
            segment_bytes_flushed: s.segment_bytes_flushed,
            object_puts: s.object_puts,
            object_gets: s.object_gets,
            object_get_bytes: s.object_get_bytes,
            records_fetched: s.records_fetched,
            bytes_fetched: s.bytes_fetched,
            wal_cache_bytes: s.wal_cache_bytes,
            metadata_txns: s.metadata_txns,
            metadata_bytes: s.metadata_bytes,
            ack_stages: s
                .ack_stages
                .into_iter()
                .map(|st| api::StageLatency {
                    stage: st.stage.to_string(),
                    count: st.count,
                    p50_ms: st.p50_ms,
                    p99_ms: st.p99_ms,
                    max_ms: st.max_ms,
                })
                .collect(),
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<api::ClusterStatusRequest>,
    ) -> Result<Response<api::ClusterStatusResponse>, Status> {
        let status = self
            .broker
            .cluster_status(&request.into_inner().topics)
            .map_err(to_status)?;
        Ok(Response::new(api::ClusterStatusResponse {
            brokers: status
                .brokers
                .into_iter()
                .map(|b| api::BrokerInfo {
                    broker_id: b.broker_id,
                    address: b.address,
                    incarnation: b.incarnation,
                    started_at_ms: b.started_at_ms,
                    partitions_owned: b.partitions_owned,
                })
                .collect(),
            partitions: status
                .partitions
                .into_iter()
                .map(|p| {
                    let (broker_id, address) = p.owner.unwrap_or_default();
                    api::PartitionOwner {
                        topic: p.topic,
                        partition: p.partition,
                        broker_id,
                        address,
                        epoch: p.epoch,
                    }
                })
                .collect(),
            controller: status.controller.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_policies_take_kafka_spellings_and_an_unknown_one_is_invalid_argument() {
        assert_eq!(cleanup_policy(None).unwrap(), None);
        assert_eq!(
            cleanup_policy(Some("compact")).unwrap(),
            Some(CleanupPolicy::Compact)
        );
        assert_eq!(
            cleanup_policy(Some("delete,compact")).unwrap(),
            Some(CleanupPolicy::CompactDelete)
        );
        let status = to_status(cleanup_policy(Some("shred")).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            r#"unknown cleanup_policy 'shred': use "delete", "compact" or "compact,delete""#
        );
    }
}
