//! Control plane replicas: two `clawplane serve` on one PostgreSQL
//! database sharing one CA, and an agent that fails over from one to the
//! other when the one it is connected to dies.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use clawplane_proto::v1::{HostStatus, PingHostRequest};
use clawplane_tls::files::{create_private_dir, write_private};
use common::*;

/// Local to this test's replicas on 127.0.0.1.
const ADMIN_TOKEN: &str = "failover-test-admin-token-0123456789";

/// What replicas on one database must share (README, "Several
/// replicas"): a CA through `[pki]` (`clawplane` has no command to make
/// one), a secrets key, and the admin token, written where each replica's
/// data directory keeps it. Returns the TOML both are given.
fn cluster(dir: &Path, replicas: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Clawplane test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (SystemTime::now() - Duration::from_secs(60)).into();
    params.not_after = (SystemTime::now() + Duration::from_secs(24 * 3600)).into();
    let cert = params.self_signed(&key).unwrap();
    let shared = dir.join("shared");
    create_private_dir(&shared).unwrap();
    let (ca_cert, ca_key, secrets_key) = (shared.join("ca.pem"), shared.join("ca.key"), shared.join("secrets.key"));
    std::fs::write(&ca_cert, cert.pem()).unwrap();
    write_private(&ca_key, key.serialize_pem().as_bytes()).unwrap();
    let made = Command::new(bin("clawplane")).args(["secrets", "new-key", "--out"]).arg(&secrets_key).output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
    for replica in replicas {
        create_private_dir(&dir.join(replica)).unwrap();
        write_private(&dir.join(replica).join("admin-token"), ADMIN_TOKEN.as_bytes()).unwrap();
    }
    format!("[pki]\nca_cert_file = {ca_cert:?}\nca_key_file = {ca_key:?}\n[secrets]\nkey_file = {secrets_key:?}\n")
}

async fn connected_to(cp: &ControlPlane, host_id: &str) -> bool {
    cp.host_status(host_id).await == Some((HostStatus::Online, true))
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_fails_over_to_the_other_replica_when_its_replica_dies() {
    let Some(db) = postgres_db().await else { return };
    let shared = cluster(&db.data_dir(), &["cp-a", "cp-b"]);
    // Started one after the other: both migrate the same database.
    let mut first = ControlPlane::start_replica(&db, "cp-a", &shared);
    let second = ControlPlane::start_replica(&db, "cp-b", &shared);
    let (token, pin) = first.join_token(600, 1).await;
    let (_, second_pin) = second.join_token(600, 1).await;
    assert_eq!(pin, second_pin, "both replicas serve the one CA");

    // Joined with both (comma-separated); `run` uses what join stored.
    let mut agent = Agent::new(&db.data_dir(), "agent");
    let joined = agent.join(&format!("{},{}", first.url(), second.url()), &token, &pin);
    assert!(joined.status.success(), "{}", text(&joined));
    let identity = std::fs::read_to_string(agent.state_dir.join("identity.json")).unwrap();
    assert!(identity.contains(&first.url()) && identity.contains(&second.url()), "{identity}");
    let host_id = agent.host_id();
    agent.run();
    eventually(Duration::from_secs(30), "connected to the first replica", || connected_to(&first, &host_id)).await;
    assert!(!connected_to(&second, &host_id).await, "one session at a time, on the first replica");

    first.kill9();
    let killed = Instant::now();
    eventually(Duration::from_secs(60), "connected to the second replica", || connected_to(&second, &host_id)).await;
    let failover = killed.elapsed();

    // A command through the surviving replica is answered by the host.
    let ping = second
        .hosts()
        .await
        .ping_host(second.admin(PingHostRequest { host_id: host_id.clone(), ..Default::default() }))
        .await
        .unwrap_or_else(|status| panic!("PingHost through the second replica: {status:?}\n{}", agent.log()))
        .into_inner();
    assert!(ping.answered, "the host answered the ping: {ping:?}");
    let answered = killed.elapsed();

    let log = agent.log();
    let switches: Vec<&str> = log.lines().filter(|line| line.contains("switching to the next")).collect();
    assert_eq!(switches.len(), 1, "one switch, logged once:\n{log}");
    assert!(switches[0].contains(&first.url()) && switches[0].contains(&second.url()), "{}", switches[0]);
    eprintln!(
        "failover: connected to the second replica {failover:?} after the kill; ping answered after {answered:?}"
    );
    drop(agent);
    drop(second);
}
