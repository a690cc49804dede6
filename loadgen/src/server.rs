//! The server's CPU time and memory: from /proc/PID when the node runs on this machine and
//! its pid is given, else from its gRPC `AdminService.Stats` (a public API).

use hearth_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

pub struct ServerProbe {
    pid: Option<u32>,
    grpc: Option<(AdminServiceClient<Channel>, String)>,
    pub source: &'static str,
}

/// (CPU seconds, RSS bytes) of a process from /proc.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, kib * 1024))
}

impl ServerProbe {
    /// CPU and memory from /proc when the pid is known, else nothing (a non-Hearth target).
    pub fn pid_only(pid: Option<u32>) -> ServerProbe {
        ServerProbe {
            pid,
            grpc: None,
            source: if pid.is_some() { "/proc" } else { "none" },
        }
    }

    pub async fn new(url: &str, key: &str, secret: &str, pid: Option<u32>) -> ServerProbe {
        if let Some(pid) = pid {
            return ServerProbe {
                pid: Some(pid),
                grpc: None,
                source: "/proc",
            };
        }
        let token = crate::jwt::mint(
            key,
            secret,
            "",
            "hearth-loadgen",
            crate::jwt::Grants {
                publish: false,
                subscribe: false,
                admin: true,
            },
            7 * 24 * 3600,
        );
        let grpc = match Channel::from_shared(url.to_owned()) {
            Ok(endpoint) => endpoint
                .connect()
                .await
                .ok()
                .map(|c| (AdminServiceClient::new(c), token)),
            Err(_) => None,
        };
        ServerProbe {
            pid: None,
            source: if grpc.is_some() {
                "gRPC AdminService.Stats"
            } else {
                "none"
            },
            grpc,
        }
    }

    pub async fn read(&mut self) -> Option<(f64, u64)> {
        if let Some(pid) = self.pid {
            return proc_usage(pid);
        }
        let (client, token) = self.grpc.as_mut()?;
        let mut req = tonic::Request::new(pb::StatsRequest {});
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().ok()?);
        let stats = client.stats(req).await.ok()?.into_inner();
        Some((stats.cpu_seconds, stats.rss_bytes))
    }
}
