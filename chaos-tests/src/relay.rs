//! Fault-injecting TCP relays between ledger nodes: partitions (one or both directions) and
//! slow links, without root, network namespaces or `tc netem` (this kernel has none).
//!
//! Every node advertises its relay's address as its peer address, so all Raft and cosigning
//! traffic to node `j` goes through relay `j`. Each node makes its outgoing peer connections
//! from its own loopback IP (`--peer-source-ip`, see [`source_ip`]), so the relay knows which
//! node `i` is on the other end and applies the state of the links `i → j` (bytes the client
//! sends) and `j → i` (bytes coming back):
//!
//! - [`Link::Down`]: the bytes are read and dropped, like packets on a dead link: the sender
//!   sees timeouts, not refused connections.
//! - [`Link::Slow`]: every chunk is delivered that much later, in order.
//!
//! When a link starts or stops dropping, every connection over it is closed, so a stream never
//! resumes with bytes missing from its middle; the nodes reconnect under the new state. A delay
//! change applies to the next chunk, and chunks stay in order.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Node ids this scheme can tell apart by source address.
const NODE_ID_MAX: u64 = 200;

/// The loopback IP node `node_id` makes its outgoing peer connections from.
///
/// # Panics
///
/// If `node_id` is 0 or above 200.
pub fn source_ip(node_id: u64) -> IpAddr {
    assert!((1..=NODE_ID_MAX).contains(&node_id), "node id {node_id} has no source IP");
    IpAddr::V4(Ipv4Addr::new(127, 0, 100, u8::try_from(node_id).expect("checked above")))
}

/// The node a peer connection comes from, by its source IP (`None`: not a node).
fn node_of(ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 100] && v4.octets()[3] != 0 => {
            Some(u64::from(v4.octets()[3]))
        }
        _ => None,
    }
}

/// The state of one direction of the link between two nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Link {
    #[default]
    Up,
    /// Bytes are dropped.
    Down,
    /// Bytes arrive this much later.
    Slow(Duration),
}

/// Link states, keyed by (from node, to node); absent means up.
#[derive(Debug, Default)]
struct Links {
    states: Mutex<HashMap<(u64, u64), Link>>,
    /// Bumped on every change, so connections can check whether theirs changed.
    version: watch::Sender<u64>,
}

impl Links {
    fn get(&self, from: u64, to: u64) -> Link {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }

    fn set(&self, from: u64, to: u64, link: Link) {
        self.states.lock().unwrap_or_else(PoisonError::into_inner).insert((from, to), link);
        self.version.send_modify(|version| *version += 1);
    }

    fn heal(&self) {
        self.states.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.version.send_modify(|version| *version += 1);
    }
}

/// The relays of one cluster: one per node, in front of its peer port. Dropping it stops them.
#[derive(Debug)]
pub struct Network {
    links: Arc<Links>,
    /// (node id, its relay's address).
    relays: Vec<(u64, SocketAddr)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Network {
    /// Starts a relay for each `(node id, peer address)`.
    ///
    /// # Panics
    ///
    /// If a loopback port cannot be bound.
    pub fn start(targets: &[(u64, SocketAddr)]) -> Self {
        let links = Arc::new(Links::default());
        let mut relays = Vec::new();
        let mut tasks = Vec::new();
        for &(node, target) in targets {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a relay port");
            listener.set_nonblocking(true).expect("a non-blocking listener");
            relays.push((node, listener.local_addr().expect("the relay's address")));
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            tasks.push(tokio::spawn(accept(listener, node, target, Arc::clone(&links))));
        }
        Self { links, relays, tasks }
    }

    /// The address other nodes dial to reach node `node_id`'s peer port.
    ///
    /// # Panics
    ///
    /// If the network has no relay for `node_id`.
    pub fn relay_addr(&self, node_id: u64) -> SocketAddr {
        self.relays
            .iter()
            .find_map(|&(node, relay)| (node == node_id).then_some(relay))
            .unwrap_or_else(|| panic!("no relay for node {node_id}"))
    }

    /// Sets the link `from → to`.
    pub fn set(&self, from: u64, to: u64, link: Link) {
        self.links.set(from, to, link);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&self, a: u64, b: u64) {
        self.set(a, b, Link::Down);
        self.set(b, a, Link::Down);
    }

    /// Cuts `node` off from every node in `others`, both directions.
    pub fn isolate(&self, node: u64, others: impl IntoIterator<Item = u64>) {
        for other in others {
            if other != node {
                self.partition(node, other);
            }
        }
    }

    /// Every link up again.
    pub fn heal(&self) {
        self.links.heal();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept(listener: TcpListener, to: u64, target: SocketAddr, links: Arc<Links>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, peer)) = listener.accept().await else { continue };
        // Connections that are not from a node (a test's own client) are never faulted.
        let from = node_of(peer.ip()).unwrap_or(0);
        connections.spawn(relay(client, from, to, target, Arc::clone(&links)));
        while connections.try_join_next().is_some() {}
    }
}

/// Relays one connection from node `from` to node `to` until either end closes it or the state
/// of one of its two directions changes.
async fn relay(client: TcpStream, from: u64, to: u64, target: SocketAddr, links: Arc<Links>) {
    let states = (links.get(from, to), links.get(to, from));
    let mut version = links.version.subscribe();
    let Ok(upstream) = TcpStream::connect(target).await else { return };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let forward = pump(client_read, upstream_write, from, to, Arc::clone(&links));
    let backward = pump(upstream_read, client_write, to, from, Arc::clone(&links));
    let changed = async {
        loop {
            if version.changed().await.is_err() {
                return;
            }
            let now = (links.get(from, to), links.get(to, from));
            // Dropping starts or ends: close, so no stream resumes with a hole. A delay change
            // applies to the next chunk, in order.
            if (now.0 == Link::Down) != (states.0 == Link::Down)
                || (now.1 == Link::Down) != (states.1 == Link::Down)
            {
                return;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(forward, backward) } => {}
        () = changed => {}
    }
}

/// Copies `reader` to `writer` under the state of the link `from → to`.
async fn pump(mut reader: OwnedReadHalf, mut writer: OwnedWriteHalf, from: u64, to: u64, links: Arc<Links>) {
    let (chunks, mut pending) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let count = match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(count) => count,
            };
            let due = match links.get(from, to) {
                Link::Down => continue,
                Link::Up => Instant::now(),
                Link::Slow(delay) => Instant::now() + delay,
            };
            if chunks.send((due, buffer[..count].to_vec())).is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = pending.recv().await {
            tokio::time::sleep_until(due).await;
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.expect("accept");
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    loop {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(count) => {
                                if stream.write_all(&buffer[..count]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        address
    }

    /// Connects to `relay` as node `from` and returns the stream.
    async fn connect_as(from: u64, relay: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(source_ip(from), 0)).expect("bind the node's source IP");
        socket.connect(relay).await.expect("connect to the relay")
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        stream.write_all(b"ping").await.ok()?;
        let mut answer = [0u8; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut answer)).await {
            Ok(Ok(_)) if &answer == b"ping" => Some(started.elapsed()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn links_pass_drop_and_delay_per_direction_and_changes_close_connections() {
        assert_eq!(node_of(source_ip(3)), Some(3));
        assert_eq!(node_of("127.0.0.1".parse().expect("ip")), None);
        let network = Network::start(&[(2, echo().await)]);
        let relay = network.relay_addr(2);

        let mut stream = connect_as(1, relay).await;
        assert!(round_trip(&mut stream, Duration::from_secs(2)).await.is_some(), "an up link passes");

        // One direction down (replies from 2 to 1): the request arrives, the answer does not.
        network.set(2, 1, Link::Down);
        let mut closed = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut closed)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "a change closes the connection: {read:?}");
        let mut stream = connect_as(1, relay).await;
        assert_eq!(round_trip(&mut stream, Duration::from_millis(300)).await, None, "replies are dropped");
        // Node 3's link to 2 is unaffected.
        let mut other = connect_as(3, relay).await;
        assert!(round_trip(&mut other, Duration::from_secs(2)).await.is_some());

        network.heal();
        network.set(1, 2, Link::Slow(Duration::from_millis(200)));
        let mut stream = connect_as(1, relay).await;
        let took = round_trip(&mut stream, Duration::from_secs(2)).await.expect("a slow link passes");
        assert!(took >= Duration::from_millis(200), "delayed by the link: {took:?}");

        // A delay change keeps the connection (no bytes are lost) and applies at once.
        network.heal();
        let took =
            round_trip(&mut stream, Duration::from_secs(2)).await.expect("the same connection, healed");
        assert!(took < Duration::from_millis(200), "no delay once healed: {took:?}");
    }
}
