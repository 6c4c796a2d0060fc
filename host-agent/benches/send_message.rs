//! SessionService.SendMessage against the gateway's own endpoint, side by
//! side in one run: the same turn (an instant model: the whole answer, five
//! SSE events, at once) asked directly of the tenant's gateway port, and
//! through the control plane, the agent's tenant proxy (mutual TLS) and the
//! gateway. Prints time to the first delta and to the whole answer, p50 and
//! p99 of each path, and what Clawplane adds; then turns/s with many
//! streams at once and the agent's CPU per turn. The gateway is a Rust
//! stand-in serving `/v1/chat/completions` (about 10 us a turn), so the
//! figures are Clawplane's own; `done` waits for the transcript to sync,
//! which the stand-in does not write, so the answer is timed at its last
//! delta (the real turn's `done` is in e2e/tests/openclaw.rs).
//!
//!     cargo build --release --workspace --bins
//!     cargo bench -p clawplane-host-agent --bench send_message
//!
//! Env: BENCH_TURNS (sequential turns per path, default 500),
//! BENCH_CONCURRENCY (streams at once for the throughput rows, default 32),
//! BENCH_SECS (seconds per throughput row, default 5).
use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clawplane_proto::v1::session_service_client::SessionServiceClient;
use clawplane_proto::v1::{send_message_response, SendMessageRequest, Tenant};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The control plane runs in this process: it allocates as the `clawplane`
/// binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{env, proc_stat, request, spawn_quiet, user, Stage};

const ANSWER: [&str; 4] = ["Hello", " from", " the", " stand-in"];

/// The instant model: the whole stream in one write.
fn sse_answer() -> Bytes {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| serde_json::json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    let mut events = vec![chunk(serde_json::json!({"role": "assistant"}), serde_json::Value::Null)];
    events.extend(ANSWER.iter().map(|word| chunk(serde_json::json!({"content": word}), serde_json::Value::Null)));
    events.push(chunk(serde_json::json!({}), "stop".into()));
    events.push(
        serde_json::json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}),
    );
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    Bytes::from(body)
}

async fn stand_in_gateway(listener: tokio::net::TcpListener) {
    let answer = sse_answer();
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let _ = tcp.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let answer = answer.clone();
                async move {
                    let _ = request.into_body().collect().await;
                    let mut response = http::Response::new(Full::new(answer));
                    response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// (time to the first delta, time to the whole answer) of one turn.
type Timing = (Duration, Duration);

/// One turn straight to the gateway's port, on a kept-alive connection.
async fn direct_turn(sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, body: &Bytes) -> Timing {
    let started = Instant::now();
    let request = http::Request::post("/v1/chat/completions")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("x-openclaw-session-key", "agent:bench:direct")
        .body(Full::new(body.clone()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let mut body = response.into_body();
    let mut first = None;
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            first.get_or_insert_with(|| started.elapsed());
            seen.extend_from_slice(&data);
        }
    }
    assert!(seen.ends_with(b"data: [DONE]\n\n"));
    (first.unwrap(), started.elapsed())
}

/// One turn through SendMessage; the stream is dropped at the last delta.
async fn api_turn(sessions: &mut SessionServiceClient<tonic::transport::Channel>, tenant: &Tenant) -> Timing {
    let started = Instant::now();
    let ask = SendMessageRequest { tenant_id: tenant.id.clone(), text: "hi".into(), ..Default::default() };
    let mut stream = sessions.send_message(request(&user(), ask)).await.unwrap().into_inner();
    let (mut first, mut text) = (None, String::new());
    while let Some(message) = stream.message().await.unwrap() {
        if let Some(send_message_response::Event::Delta(delta)) = message.event {
            first.get_or_insert_with(|| started.elapsed());
            text.push_str(&delta.text);
            if text.len() == ANSWER.concat().len() {
                break;
            }
        }
    }
    assert_eq!(text, ANSWER.concat());
    (first.unwrap(), started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn cpu_ticks(pid: u32) -> u64 {
    proc_stat(pid as i32).map(|f| f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let turns = env("BENCH_TURNS", 500) as usize;
    let concurrency = env("BENCH_CONCURRENCY", 32) as usize;
    let secs = env("BENCH_SECS", 5);
    let dir = clawplane_test_kit::TestDir::new();
    let stage = Stage::start_configured(dir.path(), None, None, |config| {
        config.max_turns_per_tenant = concurrency.max(1);
    })
    .await;
    let mut agent = spawn_quiet(&stage.agent_command(&["--proxy-listen", "127.0.0.1:0"]));
    let tenant = stage.running_tenant().await;
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stage.agent_state.join("tenants").join(format!("{}.json", tenant.id))).unwrap(),
    )
    .unwrap();
    let port = record["port"].as_u64().unwrap() as u16;
    tokio::spawn(stand_in_gateway(stage.take_gateway_port(&tenant.slug, port).await));

    let body = Bytes::from(
        serde_json::json!({"model": "openclaw/bench", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    );
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(connection);
        sender
    };
    let mut sessions = SessionServiceClient::new(stage.channel.clone());
    // Warm both paths (connections, the agent's pool) before timing.
    let mut direct = connect().await;
    for _ in 0..20 {
        direct_turn(&mut direct, &body).await;
        api_turn(&mut sessions, &tenant).await;
    }

    // Interleaved, so both paths see the same moments of the machine.
    let (mut direct_times, mut api_times) = (Vec::new(), Vec::new());
    for _ in 0..turns {
        direct_times.push(direct_turn(&mut direct, &body).await);
        api_times.push(api_turn(&mut sessions, &tenant).await);
    }
    let summary = |times: &[Timing]| {
        let mut first: Vec<Duration> = times.iter().map(|t| t.0).collect();
        let mut whole: Vec<Duration> = times.iter().map(|t| t.1).collect();
        first.sort();
        whole.sort();
        [percentile(&first, 0.5), percentile(&first, 0.99), percentile(&whole, 0.5), percentile(&whole, 0.99)]
    };
    let (d, a) = (summary(&direct_times), summary(&api_times));
    println!("{turns} turns per path, one at a time, interleaved; an instant model (5 SSE events in one write)");
    println!("path                                   first delta p50 / p99 ms    whole answer p50 / p99 ms");
    println!(
        "direct to the gateway port             {:>10.3} / {:>7.3}          {:>10.3} / {:>7.3}",
        d[0], d[1], d[2], d[3]
    );
    println!(
        "SendMessage (control plane + agent)    {:>10.3} / {:>7.3}          {:>10.3} / {:>7.3}",
        a[0], a[1], a[2], a[3]
    );
    println!(
        "added by Clawplane                     {:>10.3} / {:>7.3}          {:>10.3} / {:>7.3}",
        a[0] - d[0],
        a[1] - d[1],
        a[2] - d[2],
        a[3] - d[3]
    );

    // Many streams at once: turns/s, and the agent's CPU per turn (the
    // control plane runs in this process with the load generator).
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let agent_before = cpu_ticks(agent.id());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (mut sessions, tenant) = (sessions.clone(), tenant.clone());
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                api_turn(&mut sessions, &tenant).await;
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let agent_cpu = (cpu_ticks(agent.id()) - agent_before) as f64 / ticks_per_second;
    println!(
        "{concurrency} SendMessage streams at once for {secs} s: {:.0} turns/s, agent CPU {:.0} us per turn",
        total as f64 / elapsed,
        agent_cpu / total as f64 * 1e6
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
