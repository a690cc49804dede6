//! AdminService: the operator's view of the node (`hearthctl`).

use std::sync::Arc;
use std::time::Duration;

use hearth_actors::registry::KillError;
use hearth_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{authorize, convert};
use crate::server::AppState;

const DEFAULT_DRAIN: Duration = Duration::from_secs(600);

pub struct Admin(pub Arc<AppState>);

/// Sum of every series of a metric in Prometheus text (labels summed over).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let series_end = l.find([' ', '{'])?;
            if &l[..series_end] != name {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// (CPU seconds, RSS bytes) of this process, from /proc (Linux); zeros elsewhere.
pub fn process_usage() -> (f64, u64) {
    let cpu = hearth_actors::cluster::process_cpu_seconds().unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0);
    (cpu, rss)
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Admin {
    async fn node_info(
        &self,
        request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        authorize(&self.0, &request)?.node_wide()?;
        let s = &self.0;
        Ok(Response::new(pb::NodeInfoResponse {
            version: format!("hearth {}", env!("CARGO_PKG_VERSION")),
            pid: std::process::id(),
            started_at: Some(convert::timestamp(s.started_at)),
            http_addr: s.http_addr().map(|a| a.to_string()).unwrap_or_default(),
            grpc_addr: s.grpc_addr().map(|a| a.to_string()).unwrap_or_default(),
            media_addr: s
                .node
                .media_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            turn_addr: s
                .node
                .turn_addrs()
                .map(|t| t.udp.to_string())
                .unwrap_or_default(),
            draining: s.node.is_draining(),
            meetings: u32::try_from(s.node.meeting_count()).unwrap_or(u32::MAX),
            participants: u32::try_from(s.node.participant_count()).unwrap_or(u32::MAX),
        }))
    }

    async fn actor_tree(
        &self,
        request: Request<pb::ActorTreeRequest>,
    ) -> Result<Response<pb::ActorTreeResponse>, Status> {
        authorize(&self.0, &request)?.node_wide()?;
        Ok(Response::new(pb::ActorTreeResponse {
            actors: self
                .0
                .node
                .actor_tree()
                .iter()
                .map(convert::actor)
                .collect(),
        }))
    }

    async fn kill_actor(
        &self,
        request: Request<pb::KillActorRequest>,
    ) -> Result<Response<pb::KillActorResponse>, Status> {
        authorize(&self.0, &request)?.node_wide()?;
        let id = &request.get_ref().actor_id;
        match self.0.node.kill_actor(id) {
            Ok(view) => {
                tracing::warn!(actor = %id, kind = view.kind.as_str(), name = %view.name, "actor killed by an operator (drill)");
                Ok(Response::new(pb::KillActorResponse {
                    kind: view.kind.as_str().to_owned(),
                    name: view.name,
                }))
            }
            Err(KillError::NotFound) => Err(Status::not_found(format!("actor {id:?} not found"))),
            Err(KillError::NotKillable) => Err(Status::failed_precondition(format!(
                "actor {id} is the root of the tree; stop the process instead"
            ))),
        }
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        authorize(&self.0, &request)?.node_wide()?;
        let deadline = match request.get_ref().deadline_seconds {
            0 => DEFAULT_DRAIN,
            s => Duration::from_secs(u64::from(s)),
        };
        self.0.set_unready().await;
        let (meetings, participants) = self.0.node.drain(deadline);
        Ok(Response::new(pb::DrainResponse {
            meetings: u32::try_from(meetings).unwrap_or(u32::MAX),
            participants: u32::try_from(participants).unwrap_or(u32::MAX),
        }))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        authorize(&self.0, &request)?.node_wide()?;
        let s = &self.0;
        let text = s.metrics_text();
        let m = |name: &str| metric_sum(&text, name) as u64;
        let (cpu_seconds, rss_bytes) = process_usage();
        Ok(Response::new(pb::StatsResponse {
            meetings: u32::try_from(s.node.meeting_count()).unwrap_or(u32::MAX),
            participants: u32::try_from(s.node.participant_count()).unwrap_or(u32::MAX),
            turn_allocations: u32::try_from(s.node.turn_allocations()).unwrap_or(u32::MAX),
            packets_in: m("hearth_media_packets_in_total"),
            packets_out: m("hearth_media_packets_out_total"),
            bytes_in: m("hearth_media_bytes_in_total"),
            bytes_out: m("hearth_media_bytes_out_total"),
            packets_dropped: m("hearth_media_dropped_total"),
            actor_restarts: m("hearth_actor_restarts_total"),
            actor_failures: m("hearth_actor_failures_total"),
            cpu_seconds,
            rss_bytes,
            uptime_seconds: s
                .started_at
                .elapsed()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        authorize(&self.0, &request)?.node_wide()?;
        let Some(cluster) = self.0.node.cluster() else {
            return Err(Status::failed_precondition(
                "this node is not part of a cluster (start it with --redis-url)",
            ));
        };
        Ok(Response::new(pb::ListNodesResponse {
            nodes: cluster.nodes().iter().map(cluster_node).collect(),
            self_id: cluster.config.node_id.clone(),
            problem: cluster.problem().to_owned(),
        }))
    }
}

fn cluster_node(n: &hearth_actors::cluster::NodeInfo) -> pb::ClusterNode {
    pb::ClusterNode {
        id: n.id.clone(),
        boot_id: n.boot.clone(),
        region: n.region.clone(),
        http_url: n.http_url.clone(),
        grpc_url: n.grpc_url.clone(),
        media_addr: n.media.clone(),
        turn_addr: n.turn.clone(),
        state: if n.draining { "draining" } else { "active" }.to_owned(),
        cpu: n.cpu,
        participants: n.participants,
        meetings: n.meetings,
        packets_per_second: n.packets_per_sec,
        started_at: Some(convert::timestamp(
            std::time::UNIX_EPOCH + Duration::from_millis(n.started_at_ms),
        )),
        version: n.version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_labelled_series_and_skips_comments() {
        let text = "# HELP x_total help\n# TYPE x_total counter\nx_total{kind=\"a\"} 2\nx_total{kind=\"b\"} 3\nx_total_other 7\ny 1\n";
        assert_eq!(metric_sum(text, "x_total"), 5.0);
        assert_eq!(metric_sum(text, "y"), 1.0);
        assert_eq!(metric_sum(text, "z"), 0.0);
    }

    #[test]
    fn reads_its_own_usage() {
        let (_, rss) = process_usage();
        assert!(rss > 0);
    }
}
