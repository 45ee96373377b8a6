//! One task per peer that (re)connects when messages wait and no connection
//! is up, with exponential backoff and jitter between failed attempts. A
//! dead peer only ever costs its own task and its own bounded queue:
//! `send` never waits on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::{random_u64, Backoff};
use crate::handshake::{dial, DialError};
use crate::peer::Peer;
use crate::transport::Inner;

/// A connection that lasted less than this counts as a failure for the
/// backoff, so a peer that accepts and then drops us is not redialed in a
/// tight loop.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

pub(crate) fn spawn(inner: Arc<Inner>, peer: Arc<Peer>) {
    tokio::spawn(run(inner, peer));
}

async fn run(inner: Arc<Inner>, peer: Arc<Peer>) {
    let mut shutdown = inner.shutdown_signal();
    let mut backoff = Backoff::new(inner.config.backoff, random_u64());
    let mut last_connected: Option<Instant> = None;
    loop {
        while !peer.needs_dial() {
            if inner.is_shutting_down() || peer.is_removed() {
                return;
            }
            tokio::select! {
                _ = peer.dial_wanted.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        if last_connected.is_some_and(|at| at.elapsed() < STABLE_CONNECTION)
            && !sleep_unless_shutdown(&inner, backoff.next_delay()).await
        {
            return;
        }
        match dial(&inner, &peer).await {
            Ok(()) => {
                if last_connected.is_none_or(|at| at.elapsed() >= STABLE_CONNECTION) {
                    backoff.reset();
                }
                last_connected = Some(Instant::now());
            }
            Err(error) => {
                record_failure(&inner, &peer, &error);
                if !sleep_unless_shutdown(&inner, backoff.next_delay()).await {
                    return;
                }
            }
        }
    }
}

fn record_failure(inner: &Inner, peer: &Peer, error: &DialError) {
    if error.is_handshake_failure() {
        peer.counters.handshake_failures.add(1);
        tracing::warn!(node = %inner.config.node_id, peer = %peer.id, %error, "handshake with peer failed");
    } else {
        peer.counters.dial_failures.add(1);
        tracing::debug!(node = %inner.config.node_id, peer = %peer.id, %error, "dialing peer failed");
    }
}

/// Sleeps; returns false if the transport shut down meanwhile.
async fn sleep_unless_shutdown(inner: &Inner, delay: Duration) -> bool {
    let mut shutdown = inner.shutdown_signal();
    if *shutdown.borrow_and_update() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.changed() => false,
    }
}
