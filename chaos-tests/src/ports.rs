//! Loopback ports for the processes under test.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};

/// A loopback address nobody listens on right now, below Linux's ephemeral range (32768 and
/// up), so that no outgoing connection of a parallel test takes it while a process restarts on
/// it. Each test process starts at its own offset, so parallel test binaries rarely collide.
pub fn free_port() -> SocketAddr {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + u16::try_from(std::process::id() % 5_000).expect("below 5000");
    let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port < 32_000, "ran out of test ports");
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("a bound listener has an address");
        }
    }
}
