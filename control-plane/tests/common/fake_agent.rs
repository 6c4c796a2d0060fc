//! A host as the control plane sees one, for black-box tests on the agent
//! listener: a real Join and certificate, a Connect stream answering every
//! command with success, and Sync streams on demand.
use std::time::Duration;

use clawplane_proto::v1::agent_service_client::AgentServiceClient;
use clawplane_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::{
    agent_message, command, control_message, AgentHello, AgentMessage, CloseConnection, Command, CommandAck,
    CommandOutcome, CommandResult, CreateJoinTokenRequest, HostCapacity, HostInventory, JoinRequest,
    SetAllowanceCommand, SyncAck, SyncBatch, SyncRecord, SyncRequest, SyncResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{Cred, TestServer};

/// Long enough for anything that happens at all; never a performance bound.
const WAIT: Duration = Duration::from_secs(30);

/// A host as the control plane sees one: a real Join and certificate, a
/// Connect stream answering every command with success (handing each to
/// the test), and Sync batches on demand.
pub struct FakeAgent {
    pub host_id: String,
    channel: Channel,
    pub commands: mpsc::Receiver<Command>,
    /// Resolves when the control plane ends the Connect stream.
    pub connect_closed: Option<tokio::sync::oneshot::Receiver<Option<CloseConnection>>>,
    _outbound: mpsc::Sender<AgentMessage>,
}

impl FakeAgent {
    pub async fn join(server: &TestServer) -> FakeAgent {
        let url = format!("https://{}", server.agent_addr);
        let mut hosts = HostServiceClient::new(server.channel().await);
        let token = hosts
            .create_join_token(Cred::admin().request(CreateJoinTokenRequest {
                ttl: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
                max_uses: 1,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let verifier = clawplane_tls::PinnedServerVerifier::new(&server.ca_pin).unwrap();
        let enroll = clawplane_tls::channel(&url, clawplane_tls::pinned_client_config(verifier).unwrap()).unwrap();
        let inventory = HostInventory {
            hostname: "fake-host".into(),
            agent_version: "test".into(),
            capacity: Some(HostCapacity {
                cpu_cores: 8,
                memory_bytes: 64 << 30,
                max_tenants: 16,
                cgroup_version: "v2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let joined = EnrollmentServiceClient::new(enroll)
            .join(JoinRequest { token: token.token, csr_pem: csr, inventory: Some(inventory.clone()) })
            .await
            .unwrap()
            .into_inner();
        let identity =
            clawplane_tls::ReloadableIdentity::from_pem(&joined.certificate_pem, &key.serialize_pem()).unwrap();
        let channel =
            clawplane_tls::channel(&url, clawplane_tls::mtls_client_config(&joined.ca_chain_pem, identity).unwrap())
                .unwrap();
        let (tx, rx) = mpsc::channel(64);
        let hello = AgentHello { inventory: Some(inventory), ..Default::default() };
        tx.send(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }).await.unwrap();
        let mut inbound =
            AgentServiceClient::new(channel.clone()).connect(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (commands_tx, commands) = mpsc::channel(256);
        let answers = tx.clone();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut close = None;
            while let Ok(Some(message)) = inbound.message().await {
                match message.kind {
                    Some(control_message::Kind::Close(closing)) => close = Some(closing),
                    Some(control_message::Kind::HelloAck(_)) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    Some(control_message::Kind::Command(command)) => {
                        let id = command.id.clone();
                        let ack = CommandAck { command_id: id.clone() };
                        let _ = answers.send(AgentMessage { kind: Some(agent_message::Kind::CommandAck(ack)) }).await;
                        let result = CommandResult {
                            command_id: id,
                            outcome: CommandOutcome::Succeeded as i32,
                            ..Default::default()
                        };
                        let _ =
                            answers.send(AgentMessage { kind: Some(agent_message::Kind::CommandResult(result)) }).await;
                        let _ = commands_tx.send(command).await;
                    }
                    _ => {}
                }
            }
            let _ = closed_tx.send(close);
        });
        tokio::time::timeout(WAIT, ready_rx).await.expect("hello acknowledged").unwrap();
        FakeAgent { host_id: joined.host_id, channel, commands, connect_closed: Some(closed_rx), _outbound: tx }
    }

    /// The next SetAllowance command for `tenant_id` (others are skipped).
    pub async fn next_allowance(&mut self, tenant_id: &str) -> SetAllowanceCommand {
        loop {
            let command = tokio::time::timeout(WAIT, self.commands.recv()).await.expect("a command").expect("stream");
            if let Some(command::Payload::SetAllowance(allowance)) = command.payload {
                if allowance.tenant_id == tenant_id {
                    return allowance;
                }
            }
        }
    }

    /// Opens a Sync stream and keeps it open (the sender), for a test of
    /// how it ends.
    pub async fn open_sync(&self) -> (mpsc::Sender<SyncRequest>, tonic::Streaming<SyncResponse>) {
        let (tx, rx) = mpsc::channel(1);
        let acks =
            AgentServiceClient::new(self.channel.clone()).sync(ReceiverStream::new(rx)).await.unwrap().into_inner();
        (tx, acks)
    }

    /// Sends one batch on a fresh Sync stream and returns its ack.
    pub async fn sync(&self, records: Vec<SyncRecord>) -> SyncAck {
        let (tx, rx) = mpsc::channel(1);
        let batch = SyncBatch { batch_id: uuid::Uuid::new_v4().to_string(), records, ..Default::default() };
        tx.send(SyncRequest { batch: Some(batch) }).await.unwrap();
        let mut acks =
            AgentServiceClient::new(self.channel.clone()).sync(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let ack = tokio::time::timeout(WAIT, acks.message()).await.expect("ack").unwrap().unwrap().ack.unwrap();
        drop(tx);
        ack
    }
}
