//! The metering proxy against the fake model upstream on loopback: what it
//! adds to a streamed model call (time to first byte and to the end, p50
//! and p99) beside the same calls made straight to the upstream, at 1 and
//! 64 concurrent streams; calls per second and the proxy's CPU per call
//! (the process's CPU through the proxy minus straight, per call); and a
//! check that what it metered equals the upstream's counts exactly.
//!
//! `cargo bench -p clawplane-metering --bench model_proxy`
use std::time::{Duration, Instant};

use bytes::Bytes;
use clawplane_edge::shutdown::ShutdownSignal;
use clawplane_metering::{Meter, MeterSettings};
use clawplane_proto::v1::{ModelApi, ModelCallOutcome, ModelRoute};
use clawplane_test_kit::model_upstream::{ModelUpstream, UpstreamUsage};
use clawplane_test_kit::{process_cpu, TestDir};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const KEY: &str = "sk-bench";
/// Streamed events per answer (one per word, plus the tail).
const WORDS: usize = 20;
/// Each run stops after this many calls or this long, whichever first.
const MAX_TIME: Duration = Duration::from_secs(8);
/// Between streamed events in the paced runs.
const PACE: Duration = Duration::from_millis(5);

struct Sample {
    first_byte: Duration,
    total: Duration,
}

struct Run {
    samples: Vec<Sample>,
    wall: Duration,
    cpu: Duration,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn one_call(client: &HttpClient, url: &str, key: &str, body: &Bytes) -> Sample {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(body.clone()))
        .unwrap();
    let started = Instant::now();
    let response = client.request(request).await.expect("an answer");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut first_byte = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("a whole stream");
        if first_byte.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            first_byte = Some(started.elapsed());
        }
    }
    Sample { first_byte: first_byte.expect("some bytes"), total: started.elapsed() }
}

async fn run(client: &HttpClient, url: &str, key: &str, concurrency: usize, calls: usize) -> Run {
    let body = Bytes::from(
        serde_json::json!({"model": "bench-model", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hello"}]})
        .to_string(),
    );
    let cpu = process_cpu();
    let started = Instant::now();
    let per_task = calls.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, body) = (client.clone(), url.to_string(), key.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                if started.elapsed() > MAX_TIME {
                    break;
                }
                samples.push(one_call(&client, &url, &key, &body).await);
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    Run { samples, wall: started.elapsed(), cpu: process_cpu() - cpu }
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[index]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn signed_ms(through: Duration, direct: Duration) -> String {
    format!("{:+.3}", (through.as_secs_f64() - direct.as_secs_f64()) * 1000.0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let dir = TestDir::new();
    let upstream = ModelUpstream::start().await;
    upstream.set_reply(WORDS);
    let usage = UpstreamUsage { input: 1200, output: 345, cache_read: 67, cache_write: 8 };
    upstream.set_usage(usage);
    let signal = ShutdownSignal::default();
    let mut settings = MeterSettings::new(dir.path().join("meter"));
    settings.listen = "127.0.0.1:0".parse().unwrap();
    // As the agent runs its tenant proxy: a thread and a single-threaded
    // runtime of its own, apart from the clients and the upstream here.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (handle, stop) = (signal.handle(), signal.clone());
    let meter_thread = std::thread::Builder::new().name("meter".into());
    meter_thread
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let meter = Meter::start(settings, handle).await.expect("the meter starts");
                let _ = started_tx.send(meter);
                stop.requested().await;
            });
        })
        .unwrap();
    let meter = started_rx.await.expect("the meter thread");
    let route = ModelRoute {
        provider: "bench".into(),
        api: ModelApi::OpenaiCompletions as i32,
        upstream_base_url: upstream.base_url(false),
        api_key: KEY.as_bytes().to_vec(),
        models: vec!["bench-model".into()],
        platform_key: true,
    };
    meter.set_route("bench", route).unwrap();
    let credential = meter.credential("bench");
    let direct_url = format!("{}/chat/completions", upstream.base_url(false));
    let proxy_url = format!("{}/chat/completions", meter.provider_base_url(ModelApi::OpenaiCompletions));
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();

    // Warm both paths (connections, pools, allocator).
    run(&client, &direct_url, KEY, 64, 640).await;
    run(&client, &proxy_url, &credential, 64, 640).await;
    let mut proxied_calls = 640;

    println!("metering model proxy: streamed chat completions ({WORDS} words + usage), fake upstream on loopback");
    println!(
        "paced: the upstream sends an event every {} ms (a model streaming); flat out: no pause (CPU bound)",
        PACE.as_millis()
    );
    println!(
        "{:>6} {:>6} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8} {:>11}",
        "pace", "conc", "path", "calls", "ttfb p50", "ttfb p99", "total p50", "total p99", "calls/s", "cpu us/call"
    );
    let mut summary = Vec::new();
    for (paced, concurrency, calls) in [(true, 1usize, 100usize), (true, 64, 1280), (false, 1, 600), (false, 64, 6400)]
    {
        upstream.set_interval(if paced { PACE } else { Duration::ZERO });
        let pace = if paced { "paced" } else { "flat" };
        // Interleaved rounds, so that machine noise hits both paths alike.
        let mut direct = Run { samples: vec![], wall: Duration::ZERO, cpu: Duration::ZERO };
        let mut through = Run { samples: vec![], wall: Duration::ZERO, cpu: Duration::ZERO };
        for _ in 0..2 {
            for (target, url, key) in [(&mut direct, &direct_url, KEY), (&mut through, &proxy_url, credential.as_str())]
            {
                let run = run(&client, url, key, concurrency, calls / 2).await;
                target.samples.extend(run.samples);
                target.wall += run.wall;
                target.cpu += run.cpu;
            }
        }
        proxied_calls += through.samples.len();
        let stats = |run: &Run| {
            let ttfb: Vec<Duration> = run.samples.iter().map(|s| s.first_byte).collect();
            let total: Vec<Duration> = run.samples.iter().map(|s| s.total).collect();
            (
                percentile(ttfb.clone(), 0.5),
                percentile(ttfb, 0.99),
                percentile(total.clone(), 0.5),
                percentile(total, 0.99),
                run.samples.len() as f64 / run.wall.as_secs_f64(),
                run.cpu.as_secs_f64() * 1e6 / run.samples.len() as f64,
            )
        };
        let d = stats(&direct);
        let t = stats(&through);
        for (name, run, s) in [("direct", &direct, d), ("proxy", &through, t)] {
            // Paced runs are mostly idle: their CPU is the runtimes'
            // wake-ups, not work, so only flat-out runs show it.
            let cpu = if paced { "-".to_string() } else { format!("{:.0}", s.5) };
            println!(
                "{:>6} {:>6} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8.0} {:>11}",
                pace,
                concurrency,
                name,
                run.samples.len(),
                ms(s.0),
                ms(s.1),
                ms(s.2),
                ms(s.3),
                s.4,
                cpu
            );
        }
        let added_cpu = if paced { "-".to_string() } else { format!("{:.0}", t.5 - d.5) };
        println!(
            "{:>6} {:>6} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8} {:>11}",
            pace,
            concurrency,
            "added",
            "",
            signed_ms(t.0, d.0),
            signed_ms(t.1, d.1),
            signed_ms(t.2, d.2),
            signed_ms(t.3, d.3),
            "",
            added_cpu
        );
        summary.push((pace, concurrency, signed_ms(t.1, d.1), signed_ms(t.3, d.3), t.4, added_cpu));
    }

    // Every proxied call metered, each exactly as the upstream counted.
    let journal = meter.journal();
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = journal.read("bench", 0, usize::MAX).unwrap();
        if records.len() >= proxied_calls || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exact = records.iter().all(|(_, call)| {
        call.outcome() == ModelCallOutcome::Completed
            && (call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens)
                == (usage.input, usage.output, usage.cache_read, usage.cache_write)
    });
    println!(
        "metered: {} records for {} proxied calls; every one equal to the upstream's counts: {}",
        records.len(),
        proxied_calls,
        if exact && records.len() == proxied_calls { "yes" } else { "NO" }
    );
    for (pace, concurrency, ttfb, total, rate, cpu) in summary {
        println!(
            "{pace} at {concurrency} stream(s): added p99 {ttfb} ms to the first byte, {total} ms to the end (goal < 1 ms); {rate:.0} calls/s through the proxy; proxy CPU {cpu} us per call"
        );
    }
    assert!(exact && records.len() == proxied_calls, "metered usage differs from the upstream's");
    signal.finish(Duration::from_secs(5)).await;
}
