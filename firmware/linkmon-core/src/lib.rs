//! Sans-I/O core of the link monitor (`popd linkmon`): BFD sessions (RFC 5880 asynchronous
//! mode, RFC 5881 single hop), flap damping and the uplink decision state machine.
//!
//! Nothing here reads a clock or touches a socket: every call takes `now`, and the driver sends
//! what `poll_transmit` returns, sleeps until `poll_timeout`, and acts on `poll_decision`.
//! Driver loop, per BFD session and for the selector:
//!
//! ```text
//! on datagram:  session.handle_datagram(now, bytes, ttl)  (drops are counted in the session)
//! on wake-up:   session.handle_timeout(now); while let Some(p) = session.poll_transmit(now) { send }
//!               while let Some(e) = session.poll_event() { selector.handle_input(now, id, Bfd{..}) }
//!               selector.handle_timeout(now); while let Some(d) = selector.poll_decision() { switch }
//! sleep until:  min(session.poll_timeout(), selector.poll_timeout())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bfd_session;
mod damping;
mod error;
mod jitter;
mod selector;

pub use bfd_session::{BfdConfig, BfdCounters, BfdDrop, BfdEvent, BfdSession, BFD_MIN_INTERVAL};
pub use damping::{DampingConfig, FlapDamper};
pub use error::LinkmonError;
pub use selector::{
    Decision, FailureReason, HealthInput, ProbeOutcome, SelectorConfig, SelectorEvent,
    SelectorTuning, SwitchReason, UplinkId, UplinkSelector, UplinkSpec, UplinkStatus, Verdict,
    MAX_UPLINKS,
};

/// Re-exported wire types the session API uses, so drivers need not depend on `pop-wire`.
pub use pop_wire::bfd::{BfdControl, BfdDiag, BfdError, BfdState};
