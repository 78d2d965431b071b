//! The appliance's packet filter: one nftables table, `table inet popd`, generated from
//! `pop_config::FirewallSection` and replaced whole in one kernel transaction.
//!
//! - [`render`] writes the script (pure, deterministic; see its documentation for what is
//!   allowed and why);
//! - [`check`], [`apply`], [`current`] and [`remove`] run `nft` in the host's network namespace;
//!   [`Nft::in_netns`] does the same inside a named namespace (tests, the virtual rig).
//!
//! Atomicity: the script is `table inet popd {}` (create if absent), `delete table inet popd`,
//! then the full table, all read by one `nft -f`, which the kernel commits as one transaction.
//! Either the new table replaces the old one entirely, or nft reports an error and the old table
//! stays exactly as it was; there is no instant with no table (and so no instant where the
//! box is open or closed by accident).
//!
//! Requires `nft` (Debian package `nftables`) and, for namespaces, `ip` (`iproute2`), and
//! CAP_NET_ADMIN.

mod nft;
mod render;

pub use nft::{FirewallError, Nft};
pub use render::{render, TABLE};

/// Checks a script in the host namespace without changing anything (`nft -c -f -`); the error
/// carries nft's diagnostics.
pub fn check(script: &str) -> Result<(), FirewallError> {
    Nft::host().check(script)
}

/// Applies a script in the host namespace (`nft -f -`): one atomic kernel transaction.
pub fn apply(script: &str) -> Result<(), FirewallError> {
    Nft::host().apply(script)
}

/// The host's `table inet popd` as listed by `nft -s`, or `None` if absent.
pub fn current() -> Result<Option<String>, FirewallError> {
    Nft::host().current()
}

/// Removes the host's `table inet popd` (fine if absent).
pub fn remove() -> Result<(), FirewallError> {
    Nft::host().remove()
}
