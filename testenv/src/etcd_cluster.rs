//! A real multi-member etcd cluster (3 members by default) on random free loopback ports,
//! bootstrapped statically; each member has its own data dir and process group. Members can be
//! killed (SIGKILL), stopped, frozen (SIGSTOP) and restarted by fault tests; [`EtcdCluster::leader`]
//! asks the members who leads.
//!
//! Started with [`EtcdCluster::start_proxied`], each member also gets a client TCP proxy (the
//! test ground's [`DelayProxy`]): [`EtcdCluster::endpoints`] then name the proxies, and
//! [`EtcdCluster::proxy`] lets a test freeze (accept but stall) or cut one member's client
//! traffic while the member itself stays alive in raft. The test ground's own requests
//! (status, [`EtcdCluster::client`], [`EtcdCluster::member_client`]) always go to the members
//! directly.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::Client;
use tempfile::TempDir;

use crate::process::{Process, free_port};
use crate::proxy::DelayProxy;
use crate::tools::tool;

/// One member of an [`EtcdCluster`].
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Process>,
    frozen: bool,
    /// The client proxy in front of it, if the cluster has them.
    proxy: Option<DelayProxy>,
}

impl Member {
    /// The member's own client URL.
    fn direct(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client URL clients are given: the proxy's if there is one.
    fn endpoint(&self) -> String {
        match &self.proxy {
            Some(p) => p.endpoint(),
            None => self.direct(),
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A running etcd cluster (see the module docs). Members are numbered from 0.
pub struct EtcdCluster {
    // Dropped first: the processes die before their data dirs are removed.
    members: Vec<Member>,
    token: String,
    dir: TempDir,
}

/// How long a member (or the whole cluster) may take to serve after a start.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Deadline of one status request to a member.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

impl EtcdCluster {
    /// Starts a 3-member cluster.
    pub async fn start() -> Result<EtcdCluster> {
        Self::start_n(3).await
    }

    /// Starts an `n`-member cluster and waits until every member serves with a leader.
    pub async fn start_n(n: usize) -> Result<EtcdCluster> {
        Self::launch(n, false).await
    }

    /// Starts an `n`-member cluster with a client proxy in front of every member (see the
    /// module docs).
    pub async fn start_proxied(n: usize) -> Result<EtcdCluster> {
        Self::launch(n, true).await
    }

    async fn launch(n: usize, proxied: bool) -> Result<EtcdCluster> {
        if n == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let dir = tempfile::Builder::new()
            .prefix("registrar-etcd-cluster-")
            .tempdir()?;
        let mut members = Vec::with_capacity(n);
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push((free_port()?, free_port()?));
        }
        let reserved: Vec<u16> = ports.iter().flat_map(|(c, p)| [*c, *p]).collect();
        for (i, (client_port, peer_port)) in ports.into_iter().enumerate() {
            let proxy = if proxied {
                Some(proxy_avoiding(client_port, &reserved).await?)
            } else {
                None
            };
            members.push(Member {
                name: format!("m{i}"),
                client_port,
                peer_port,
                process: None,
                frozen: false,
                proxy,
            });
        }
        let token = format!(
            "registrar-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mut cluster = EtcdCluster {
            members,
            token,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_serving(i).await?;
        }
        Ok(cluster)
    }

    fn member(&self, i: usize) -> Result<&Member> {
        self.members
            .get(i)
            .with_context(|| format!("no etcd member {i} (cluster of {})", self.members.len()))
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut Member> {
        let n = self.members.len();
        self.members
            .get_mut(i)
            .with_context(|| format!("no etcd member {i} (cluster of {n})"))
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}.data"))
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}.log"))
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let (data, log) = (self.data_dir(i), self.log(i));
        let token = self.token.clone();
        let m = self.member_mut(i)?;
        let (client_url, peer_url) = (m.direct(), m.peer_url());
        let mut cmd = Command::new(tool("etcd")?);
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-token={token}"))
            // Ignored once the data dir exists (a restart rejoins as the same member).
            .arg("--initial-cluster-state=new")
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        let name = m.name.clone();
        m.process = Some(Process::spawn(&format!("etcd {name}"), cmd, &log)?);
        m.frozen = false;
        Ok(())
    }

    /// Waits until member `i` answers a status request and knows a leader.
    async fn wait_serving(&mut self, i: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Some(p) = self.member_mut(i)?.process.as_mut() {
                p.check_alive()?;
            }
            if let Ok(Some(_)) = self.status_leader(i).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let tail = crate::process::log_tail(&self.log(i), 40);
                bail!("etcd member {i} did not serve within {READY_WITHIN:?}; log tail:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `Some((own id, leader id))` from member `i`'s status, `None` while it knows no leader.
    async fn status_ids(&self, i: usize) -> Result<Option<(u64, u64)>> {
        let endpoint = self.member(i)?.direct();
        let ask = async {
            let mut c = Client::connect([endpoint], None).await?;
            c.status().await
        };
        let status = tokio::time::timeout(STATUS_TIMEOUT, ask)
            .await
            .with_context(|| format!("etcd member {i}: no status within {STATUS_TIMEOUT:?}"))??;
        let own = status.header().map_or(0, |h| h.member_id());
        Ok((status.leader() != 0).then_some((own, status.leader())))
    }

    async fn status_leader(&self, i: usize) -> Result<Option<u64>> {
        Ok(self.status_ids(i).await?.map(|(_, leader)| leader))
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs of all members, in member order (the proxies' if the cluster has them).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Client URL of member `i` (its proxy's if the cluster has proxies).
    pub fn endpoint(&self, i: usize) -> Result<String> {
        Ok(self.member(i)?.endpoint())
    }

    /// Member `i`'s own client URL (never through a proxy).
    pub fn direct_endpoint(&self, i: usize) -> Result<String> {
        Ok(self.member(i)?.direct())
    }

    /// The client proxy in front of member `i` (clusters started with
    /// [`start_proxied`](Self::start_proxied)).
    pub fn proxy(&self, i: usize) -> Result<&DelayProxy> {
        self.member(i)?
            .proxy
            .as_ref()
            .with_context(|| format!("etcd member {i} has no client proxy"))
    }

    /// A client balanced over all members, directly (never through a proxy).
    pub async fn client(&self) -> Result<Client> {
        let direct: Vec<String> = self.members.iter().map(Member::direct).collect();
        Client::connect(direct, None)
            .await
            .context("connecting to the etcd cluster")
    }

    /// A client of member `i` alone, directly (never through a proxy).
    pub async fn member_client(&self, i: usize) -> Result<Client> {
        Client::connect([self.direct_endpoint(i)?], None)
            .await
            .with_context(|| format!("connecting to etcd member {i}"))
    }

    /// The index of the leader, as the running, unfrozen members see it (they must agree).
    pub async fn leader(&self) -> Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, m) in self.members.iter().enumerate() {
            if m.process.is_none() || m.frozen {
                ids.push(None);
                continue;
            }
            match self.status_ids(i).await {
                Ok(Some((own, l))) => {
                    ids.push(Some(own));
                    if leader.is_some_and(|x| x != l) {
                        bail!("etcd members disagree about the leader");
                    }
                    leader = Some(l);
                }
                Ok(None) => bail!("etcd member {i} knows no leader"),
                Err(e) => return Err(e),
            }
        }
        let leader = leader.context("no running etcd member")?;
        ids.iter()
            .position(|id| *id == Some(leader))
            .context("the leader is not a running member")
    }

    /// Waits until the running members agree on a leader; returns its index.
    pub async fn wait_leader(&self) -> Result<usize> {
        crate::poll(
            "the etcd members to agree on a leader",
            READY_WITHIN,
            || async { self.leader().await.ok() },
        )
        .await
    }

    /// Kills member `i` with SIGKILL (no goodbye to its peers or clients); data dir kept.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut p) = self.member_mut(i)?.process.take() {
            tokio::task::spawn_blocking(move || p.kill()).await?;
        }
        Ok(())
    }

    /// Stops member `i` gracefully (SIGTERM, SIGKILL after 10 s); data dir kept.
    pub async fn stop(&mut self, i: usize) -> Result<()> {
        if let Some(mut p) = self.member_mut(i)?.process.take() {
            tokio::task::spawn_blocking(move || p.terminate(Duration::from_secs(10))).await?;
        }
        Ok(())
    }

    /// Freezes member `i` (SIGSTOP): its sockets stay open but nothing answers.
    pub fn freeze(&mut self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGSTOP)?;
        self.member_mut(i)?.frozen = true;
        Ok(())
    }

    /// Resumes a frozen member (SIGCONT).
    pub fn thaw(&mut self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGCONT)?;
        self.member_mut(i)?.frozen = false;
        Ok(())
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> Result<()> {
        let pid = self
            .member(i)?
            .process
            .as_ref()
            .map(Process::pid)
            .with_context(|| format!("etcd member {i} is not running"))?;
        let pgid = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: plain syscall on the member's own process group.
        if unsafe { libc::kill(-pgid, sig) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling an etcd member");
        }
        Ok(())
    }

    /// Starts member `i` again (killing it first if it runs) on its ports and data dir, and
    /// waits until it serves.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        if self.member(i)?.frozen {
            self.thaw(i)?;
        }
        self.kill(i).await?;
        self.spawn(i)?;
        self.wait_serving(i).await
    }

    /// Whether member `i`'s process runs (frozen counts as running).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.member_mut(i)
            .ok()
            .and_then(|m| m.process.as_mut())
            .is_some_and(|p| p.exited().is_none())
    }

    /// The temp dir holding the members' data and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A proxy to `target` on a port that is none of the member ports picked but not yet bound.
async fn proxy_avoiding(target: u16, reserved: &[u16]) -> Result<DelayProxy> {
    for _ in 0..20 {
        let proxy = DelayProxy::start(target, Duration::ZERO).await?;
        if !reserved.contains(&proxy.port) {
            return Ok(proxy);
        }
    }
    bail!("no free port for a client proxy outside the members' ports")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // A frozen process ignores nothing but SIGKILL, which Process sends on drop; thaw
        // anyway so that nothing lingers stopped.
        for i in 0..self.members.len() {
            if self.members[i].frozen {
                let _ = self.signal(i, libc::SIGCONT);
            }
        }
    }
}
