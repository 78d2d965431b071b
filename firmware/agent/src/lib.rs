//! `popd agent`: the appliance's link to the central control plane.
//!
//! - **Identity** ([`identity`], [`enroll`]): a P-256 key generated in the keystore (TPM,
//!   PKCS#11 or the development backend) that never leaves it; a certificate obtained with a
//!   one-time token (`popctl enroll`) and renewed at 90 % of its lifetime; TLS 1.3 only with the
//!   `ring` provider, the control plane's CA pinned and its CRL checked.
//! - **Session** ([`connection`], [`liveness`], [`backoff`]): the `pop-agent-proto` protocol;
//!   heartbeats detect a dead connection after three silent intervals; reconnects back off
//!   exponentially with full jitter from 1 s to 120 s.
//! - **Configuration** ([`apply`], [`services`]): pushes are validated (`pop-config`), staged on
//!   disk, handed to the relay (control socket) and the firewall (nftables), watched for a
//!   health window and committed — or rolled back, by the agent itself, and reported.
//! - **Reporting** ([`records`], [`reporters`]): telemetry, events, CDRs (parties as keyed
//!   pseudonyms, [`pseudonym`]) and audit records go through the encrypted spool (`pop-spool`)
//!   and are deleted only once the control plane acknowledges them; audit records also go to
//!   the journal.
//! - **Commands**: erase a subject, rotate the certificate, diagnostics (redacted).
#![forbid(unsafe_code)]

pub mod agent;
pub mod apply;
pub mod backoff;
pub mod connection;
pub mod enroll;
pub mod error;
pub mod fsutil;
pub mod identity;
pub mod liveness;
pub mod pseudonym;
pub mod records;
pub mod reporters;
pub mod services;
pub mod settings;

pub use agent::run;
pub use enroll::{enroll, Enrolled};
pub use error::AgentError;
pub use settings::AgentSettings;
