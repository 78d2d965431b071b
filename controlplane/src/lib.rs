//! `pop-controlplane`: the reference control plane for PoP agents (`pop-cp`).
//!
//! It is the server side of [`pop_agent_proto`]: a TLS 1.3 server (rustls, `ring` provider)
//! with its own CA that
//! - enrols devices: an anonymous connection sends `Enroll` with a one-time token and a CSR;
//!   the CA issues a client certificate (`CN` = device id, clientAuth) and answers
//!   `Certificate` then `Crl`. Tokens are stored as SHA-256 only and marked used durably
//!   before the answer;
//! - runs sessions: a connection with a certificate that verifies against the CA and the CRL
//!   starts with `Hello` (device id = certificate CN) and gets `Welcome` (with the highest
//!   stored record id), the CRL, and whatever config push or commands are pending;
//! - stores records exactly once per `(device, record id)` (JSON lines + `fdatasync` before
//!   the cumulative `Ack`), config and command results, and an audit log;
//! - revokes: `pop-cp revoke` or the admin `revoke` re-signs the CRL; the server reloads it
//!   (file watch every second), pushes it to every session and drops revoked devices;
//! - offers an admin interface (JSON lines on loopback, [`admin::AdminClient`]).
//!
//! Modules: [`pki`] (CA, issuance, CRL), [`store`] (durable state), [`session`] (sans-I/O
//! connection logic), [`server`] (tokio I/O), [`admin`] (admin protocol and client),
//! [`devclient`] (a blocking fake device for tests and demos), [`cli`] (`pop-cp`).
//!
//! State directory (`--dir`): `ca.pem`, `ca.key`, `server.pem`, `server.key`, `crl.der`,
//! `revoked.json`, `certs.jsonl`, `store/` (`tokens.json`, `audit.jsonl`,
//! `devices/<id>/{records.jsonl,config-results.jsonl,command-results.jsonl,pending.json,info.json}`).

pub mod admin;
pub mod cli;
pub mod devclient;
pub mod pki;
pub mod server;
pub mod session;
pub mod store;
pub mod util;
