//! `silt.v1.Groups` over the core: each call converts the request, calls the [`Broker`]
//! facade, and converts the answer; errors go through [`super::status`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use silt_api::v1 as api;
use silt_api::v1::groups_server::Groups;
use silt_api::v1::reset_offsets_request::To;
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::core::groups::{GroupPartition, Heartbeat, PartitionOffset, ResetTo};
use crate::core::{Broker, BrokerError};

/// `silt.v1.Groups`.
#[derive(Debug, Clone)]
pub struct GroupsService {
    pub broker: Arc<Broker>,
}

impl GroupsService {
    /// Topic-name partitions → (topic id, partition); unknown topics are NOT_FOUND.
    fn resolve(&self, list: &[api::TopicPartitions]) -> Result<BTreeSet<GroupPartition>, Status> {
        let mut out = BTreeSet::new();
        for tp in list {
            let topic = self.broker.topic(&tp.topic).map_err(to_status)?;
            out.extend(tp.partitions.iter().map(|p| (topic.id, *p)));
        }
        Ok(out)
    }

    /// (topic id, partition) → topic-name partitions, for answers.
    fn named(&self, set: &BTreeSet<GroupPartition>) -> Vec<api::TopicPartitions> {
        let names = self.broker.topic_names();
        let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (id, p) in set {
            if let Some(name) = names.get(id) {
                by_topic.entry(name.clone()).or_default().push(*p);
            }
        }
        by_topic
            .into_iter()
            .map(|(topic, partitions)| api::TopicPartitions { topic, partitions })
            .collect()
    }
}

fn remote_host<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

fn offset_to_wire(o: PartitionOffset) -> api::PartitionOffset {
    api::PartitionOffset {
        topic: o.topic,
        partition: o.partition,
        offset: o.offset,
        leader_epoch: o.leader_epoch,
        metadata: o.metadata,
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
    #[tracing::instrument(name = "FindCoordinator", skip_all, fields(group = %request.get_ref().group))]
    async fn find_coordinator(
        &self,
        request: Request<api::FindCoordinatorRequest>,
    ) -> Result<Response<api::FindCoordinatorResponse>, Status> {
        let c = self
            .broker
            .find_coordinator(&request.get_ref().group)
            .map_err(to_status)?;
        Ok(Response::new(api::FindCoordinatorResponse {
            broker_id: c.broker_id,
            address: c.address,
        }))
    }

    #[tracing::instrument(name = "Heartbeat", skip_all, fields(group = %request.get_ref().group, member = %request.get_ref().member_id, epoch = request.get_ref().member_epoch))]
    async fn heartbeat(
        &self,
        request: Request<api::GroupHeartbeatRequest>,
    ) -> Result<Response<api::GroupHeartbeatResponse>, Status> {
        let host = remote_host(&request);
        let req = request.into_inner();
        let owned = if req.owned_known {
            Some(self.resolve(&req.owned)?)
        } else {
            None
        };
        let hb = Heartbeat {
            member_id: req.member_id,
            member_epoch: req.member_epoch,
            instance_id: (!req.instance_id.is_empty()).then_some(req.instance_id),
            client_id: req.client_id,
            host,
            topics: (!req.topics.is_empty()).then(|| req.topics.into_iter().collect()),
            owned,
            session_timeout_ms: req.session_timeout_ms,
            heartbeat_interval_ms: req.heartbeat_interval_ms,
        };
        let answer = self
            .broker
            .group_heartbeat(&req.group, &hb)
            .await
            .map_err(to_status)?;
        Ok(Response::new(api::GroupHeartbeatResponse {
            member_id: answer.member_id,
            member_epoch: answer.member_epoch,
            heartbeat_interval_ms: answer.heartbeat_interval_ms,
            assigned: self.named(&answer.assigned),
        }))
    }

    #[tracing::instrument(name = "CommitOffsets", skip_all, fields(group = %request.get_ref().group, partitions = request.get_ref().offsets.len()))]
    async fn commit_offsets(
        &self,
        request: Request<api::CommitOffsetsRequest>,
    ) -> Result<Response<api::CommitOffsetsResponse>, Status> {
        let req = request.into_inner();
        let offsets: Vec<PartitionOffset> = req
            .offsets
            .into_iter()
            .map(|o| PartitionOffset {
                topic: o.topic,
                partition: o.partition,
                offset: o.offset,
                leader_epoch: o.leader_epoch,
                metadata: o.metadata,
            })
            .collect();
        self.broker
            .commit_offsets(&req.group, &req.member_id, req.member_epoch, &offsets)
            .await
            .map_err(to_status)?;
        Ok(Response::new(api::CommitOffsetsResponse {}))
    }

    #[tracing::instrument(name = "FetchOffsets", skip_all, fields(group = %request.get_ref().group))]
    async fn fetch_offsets(
        &self,
        request: Request<api::FetchOffsetsRequest>,
    ) -> Result<Response<api::FetchOffsetsResponse>, Status> {
        let req = request.into_inner();
        let wanted: Vec<(String, u32)> = req
            .partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
            .collect();
        let offsets = self
            .broker
            .fetch_offsets(
                &req.group,
                (!wanted.is_empty()).then_some(wanted.as_slice()),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(api::FetchOffsetsResponse {
            offsets: offsets.into_iter().map(offset_to_wire).collect(),
        }))
    }

    async fn list_groups(
        &self,
        _request: Request<api::ListGroupsRequest>,
    ) -> Result<Response<api::ListGroupsResponse>, Status> {
        let groups = self.broker.list_groups().await.map_err(to_status)?;
        Ok(Response::new(api::ListGroupsResponse { groups }))
    }

    #[tracing::instrument(name = "DescribeGroup", skip_all, fields(group = %request.get_ref().group))]
    async fn describe_group(
        &self,
        request: Request<api::DescribeGroupRequest>,
    ) -> Result<Response<api::DescribeGroupResponse>, Status> {
        let group = request.into_inner().group;
        let d = self
            .broker
            .describe_group(&group)
            .await
            .map_err(to_status)?;
        let g = &d.group;
        let state = if g.members.is_empty() {
            "empty"
        } else if g
            .members
            .values()
            .all(|m| m.revoking.is_empty() && g.target.get(&m.id) == Some(&m.assigned))
        {
            "stable"
        } else {
            "reconciling"
        };
        let members = g
            .members
            .values()
            .map(|m| api::GroupMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone().unwrap_or_default(),
                client_id: m.client_id.clone(),
                host: m.host.clone(),
                member_epoch: m.epoch,
                topics: m.topics.iter().cloned().collect(),
                assigned: self.named(&m.assigned),
                revoking: self.named(&m.revoking),
            })
            .collect();
        let coordinator = self
            .broker
            .find_coordinator(&group)
            .map(|c| c.broker_id)
            .unwrap_or_default();
        Ok(Response::new(api::DescribeGroupResponse {
            group,
            state: state.into(),
            group_epoch: g.epoch,
            coordinator,
            members,
            partitions: d
                .partitions
                .into_iter()
                .map(|p| api::PartitionLag {
                    topic: p.topic,
                    partition: p.partition,
                    committed: p.committed,
                    high_watermark: p.high_watermark,
                    lag: p.lag,
                    member_id: p.member.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "DeleteGroup", skip_all, fields(group = %request.get_ref().group))]
    async fn delete_group(
        &self,
        request: Request<api::DeleteGroupRequest>,
    ) -> Result<Response<api::DeleteGroupResponse>, Status> {
        self.broker
            .delete_group(&request.get_ref().group)
            .await
            .map_err(to_status)?;
        Ok(Response::new(api::DeleteGroupResponse {}))
    }

    #[tracing::instrument(name = "ResetOffsets", skip_all, fields(group = %request.get_ref().group, topic = %request.get_ref().topic))]
    async fn reset_offsets(
        &self,
        request: Request<api::ResetOffsetsRequest>,
    ) -> Result<Response<api::ResetOffsetsResponse>, Status> {
        let req = request.into_inner();
        let to = match req.to {
            Some(To::Earliest(_)) => ResetTo::Earliest,
            Some(To::Latest(_)) => ResetTo::Latest,
            Some(To::Offset(o)) => ResetTo::Offset(o),
            Some(To::TimestampMs(t)) => ResetTo::Timestamp(t),
            Some(To::ShiftBy(n)) => ResetTo::ShiftBy(n),
            None => {
                return Err(to_status(BrokerError::invalid(
                    "say where to reset to: earliest, latest, offset, timestamp_ms or shift_by",
                )));
            }
        };
        let changes = self
            .broker
            .reset_offsets(&req.group, &req.topic, to, req.dry_run)
            .await
            .map_err(to_status)?;
        Ok(Response::new(api::ResetOffsetsResponse {
            partitions: changes
                .into_iter()
                .map(|c| api::OffsetReset {
                    partition: c.partition,
                    before: c.before,
                    after: c.after,
                })
                .collect(),
        }))
    }
}
