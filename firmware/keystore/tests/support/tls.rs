//! A TLS 1.3 handshake with client authentication over loopback, where the client's key is a
//! key store signing key: the certificate is issued by a test CA (software, rcgen) for the
//! backend's public key, and the handshake signature is made by the backend.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use pop_keystore::tls::{KeyStoreClientCert, KeyStoreSigningKey};
use pop_keystore::KeyStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// The backend key as rcgen sees it: only its public half is used to issue the certificate.
struct BackendKey {
    store: Arc<dyn KeyStore>,
    label: String,
    point: Vec<u8>,
}

impl rcgen::RemoteKeyPair for BackendKey {
    fn public_key(&self) -> &[u8] {
        &self.point
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.store
            .sign(&self.label, msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

pub fn handshake_with_backend_key(store: Arc<dyn KeyStore>) {
    let label = "mtls-client";
    let signing = KeyStoreSigningKey::new(Arc::clone(&store), label).expect("backend signing key");
    let spki = signing.public_key_spki().0.clone();
    let point = spki[spki.len() - 65..].to_vec();

    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pop keystore test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();

    let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca_cert, &ca_key)
        .unwrap();

    let device_key = rcgen::KeyPair::from_remote(Box::new(BackendKey {
        store,
        label: label.to_owned(),
        point,
    }))
    .unwrap();
    let mut device_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    device_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pop-device-under-test");
    let device_cert = device_params
        .signed_by(&device_key, &ca_cert, &ca_key)
        .unwrap();
    let device_der: CertificateDer<'static> = device_cert.der().clone();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::clone(&roots))
        .build()
        .unwrap();
    let server_cfg =
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .unwrap();
    let client_cfg =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_root_certificates(Arc::clone(&roots))
            .with_client_cert_resolver(Arc::new(KeyStoreClientCert::new(
                vec![device_der.clone()],
                signing,
            )));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || -> Result<Vec<CertificateDer<'static>>, String> {
        let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        sock.set_write_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let conn =
            rustls::ServerConnection::new(Arc::new(server_cfg)).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .map_err(|e| format!("server read: {e}"))?;
        if &buf != b"ping" {
            return Err("server got the wrong request".into());
        }
        tls.write_all(b"pong").map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        Ok(tls
            .conn
            .peer_certificates()
            .map(|c| c.to_vec())
            .unwrap_or_default())
    });

    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(client_cfg),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf)
        .expect("client read (handshake failed?)");
    assert_eq!(&buf, b"pong");
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let peer = server
        .join()
        .expect("server thread")
        .expect("server side of the handshake");
    assert_eq!(
        peer.first(),
        Some(&device_der),
        "server did not see the device certificate"
    );
}
