//! Control → worker commands. Each carries its own reply channel (a one-slot `sync_channel`
//! used as a oneshot).

use std::sync::mpsc::SyncSender;

use pop_relay_core::media::{MediaPolicy, StreamId, StreamStats};

use crate::{DataplaneError, LegPeers, LegSockets};

/// Reply channel of one command.
pub(crate) type Reply<T> = SyncSender<Result<T, DataplaneError>>;

/// Work for a worker thread.
#[derive(Debug)]
pub(crate) enum Command {
    Add {
        id: StreamId,
        a: LegSockets,
        b: LegSockets,
        policy: MediaPolicy,
        reply: Reply<()>,
    },
    Update {
        id: StreamId,
        a: LegPeers,
        b: LegPeers,
        policy: MediaPolicy,
        reply: Reply<()>,
    },
    Remove {
        id: StreamId,
        reply: Reply<StreamStats>,
    },
    Stats {
        id: StreamId,
        reply: Reply<StreamStats>,
    },
    Shutdown,
}

/// Sends a reply; the caller may have given up waiting, which is not an error here.
pub(crate) fn answer<T>(reply: &Reply<T>, value: Result<T, DataplaneError>) {
    let _ = reply.try_send(value);
}
