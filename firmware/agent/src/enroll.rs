//! Enrollment with a one-time bootstrap token: the device key is generated in the keystore, a
//! certificate request signed there is sent over TLS (the control plane's CA pinned, no client
//! certificate yet), and the issued certificate is stored.

use std::time::Duration;

use pop_agent_proto::{Downlink, EnrollRequest, Uplink, PROTOCOL_VERSION};
use serde_json::json;

use crate::connection::{connect_tls, Connection, HANDSHAKE_TIMEOUT};
use crate::error::AgentError;
use crate::fsutil::write_atomic;
use crate::identity;
use crate::settings::AgentSettings;

/// What enrollment produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// Certificate expiry, Unix seconds.
    pub not_after_unix_s: u64,
    /// Keystore label of the device key.
    pub key_label: String,
}

/// Enrolls this device with `token`. Leaves an audit record for the agent to spool (the
/// agent owns the spool; two writers would be one too many) — for refusals too.
pub fn enroll(settings: &AgentSettings, token: &str) -> Result<Enrolled, AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::io(std::path::Path::new("tokio runtime"), e))?;
    let result = runtime.block_on(enroll_async(settings, token));
    let outcome = match &result {
        Ok(e) => format!("enrolled, certificate valid until {}", e.not_after_unix_s),
        Err(e) => format!("failed: {e}"),
    };
    let audit = json!({
        "actor": "technician",
        "detail": format!("device {} via popctl enroll", settings.device_id),
        "outcome": outcome,
    });
    tracing::info!(
        target: "audit",
        audit_actor = "technician",
        audit_action = "enroll",
        audit_outcome = %outcome,
        "audit: enroll"
    );
    write_atomic(
        &settings.state_dir.join("enrollment-audit.json"),
        audit.to_string().as_bytes(),
    )?;
    result
}

async fn enroll_async(settings: &AgentSettings, token: &str) -> Result<Enrolled, AgentError> {
    std::fs::create_dir_all(&settings.state_dir)
        .map_err(|e| AgentError::io(&settings.state_dir, e))?;
    let keystore = crate::agent::open_keystore(settings)?;
    let label = identity::current_label(settings)?;
    let csr = identity::csr(keystore, &label, &settings.device_id)?;
    let ca = identity::load_ca(&settings.ca_file)?;
    let config = identity::client_config(&ca, None, None)?;
    let tls = connect_tls(
        settings.control_plane,
        identity::server_name(&settings.server_name)?,
        config,
    )
    .await?;
    let mut conn = Connection::new(tls);
    conn.send(&Uplink::Enroll(EnrollRequest {
        protocol_version: PROTOCOL_VERSION,
        token: token.to_owned(),
        device_id: settings.device_id.clone(),
        csr_der: csr,
    }))
    .await?;
    let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.recv())
        .await
        .map_err(|_| AgentError::Timeout("enrollment answer"))??;
    let enrolled = match reply {
        Downlink::Certificate {
            chain_der,
            not_after_unix_s,
        } => {
            identity::store_identity(settings, &chain_der, &label)?;
            Enrolled {
                not_after_unix_s,
                key_label: label,
            }
        }
        Downlink::Refused { reason } => return Err(AgentError::Refused(reason)),
        other => {
            return Err(AgentError::Protocol(format!(
                "expected a certificate, got {}",
                crate::connection::variant_name(&other)
            )))
        }
    };
    // The CRL follows the certificate; keep it for checking the server next time.
    if let Ok(Ok(Downlink::Crl { der })) =
        tokio::time::timeout(Duration::from_secs(2), conn.recv()).await
    {
        write_atomic(&settings.crl_path(), &der)?;
    }
    conn.close().await;
    Ok(enrolled)
}
