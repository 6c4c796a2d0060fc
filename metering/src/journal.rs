//! The usage journal: one append-only file per tenant, one JSON line per
//! model call, read by the agent's sync like a JSONL transcript. A record's
//! position is the byte offset where its line starts; every file opens with
//! a header line, so no record sits at 0 and an allowance's
//! `counted_through` of 0 means "none counted".
//!
//! One writer thread appends and fdatasyncs (many calls per sync when they
//! end together), so a call never waits on the disk. Readers see only what
//! was synced; a torn tail left by a crash is cut off when the journal is
//! opened, before anything is appended after it.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clawplane_edge::shutdown::Shutdown;
use clawplane_proto::v1::{ModelApi, ModelCall, ModelCallOutcome};
use serde::{Deserialize, Serialize};

const HEADER: &[u8] = b"{\"clawplane_meter_journal\":1}\n";
const SUFFIX: &str = ".jsonl";
/// Strings in a record are cut to this (model ids of refused calls come
/// from the request), so a record stays well under a page.
const MAX_FIELD: usize = 256;
/// Records written with one fdatasync at most.
const MAX_BATCH: usize = 1024;

/// Told of each record once it is on disk: tenant, position, record.
pub(crate) type OnDurable = Box<dyn Fn(&str, i64, &ModelCall) + Send>;

/// The journal's readers' side (the agent's sync). Clones share it.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    /// Each tenant's synced length: readers stop there.
    durable: RwLock<HashMap<String, Arc<AtomicI64>>>,
    changes: tokio::sync::watch::Sender<u64>,
}

/// One line of a journal file.
#[derive(Serialize, Deserialize)]
struct Line {
    call_id: String,
    provider: String,
    model: String,
    api: String,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_tokens: i64,
    cache_write_tokens: i64,
    /// Epoch milliseconds.
    started_at_ms: i64,
    first_byte_ms: i64,
    total_ms: i64,
    http_status: u32,
    outcome: String,
    streamed: bool,
    platform_key: bool,
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_FIELD {
        return text.to_string();
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Line {
    fn of(call: &ModelCall) -> Line {
        let started = call.started_at.unwrap_or_default();
        Line {
            call_id: cut(&call.call_id),
            provider: cut(&call.provider),
            model: cut(&call.model),
            api: call.api().as_str_name().to_string(),
            input_tokens: call.input_tokens,
            output_tokens: call.output_tokens,
            cache_read_tokens: call.cache_read_tokens,
            cache_write_tokens: call.cache_write_tokens,
            started_at_ms: started.seconds.saturating_mul(1000) + i64::from(started.nanos / 1_000_000),
            first_byte_ms: call.first_byte_ms,
            total_ms: call.total_ms,
            http_status: call.http_status,
            outcome: call.outcome().as_str_name().to_string(),
            streamed: call.streamed,
            platform_key: call.platform_key,
        }
    }

    fn call(self) -> ModelCall {
        let mut call = ModelCall {
            call_id: self.call_id,
            provider: self.provider,
            model: self.model,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
            started_at: Some(prost_types::Timestamp {
                seconds: self.started_at_ms.div_euclid(1000),
                nanos: (self.started_at_ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            first_byte_ms: self.first_byte_ms,
            total_ms: self.total_ms,
            http_status: self.http_status,
            streamed: self.streamed,
            platform_key: self.platform_key,
            ..Default::default()
        };
        call.set_api(ModelApi::from_str_name(&self.api).unwrap_or_default());
        call.set_outcome(ModelCallOutcome::from_str_name(&self.outcome).unwrap_or_default());
        call
    }
}

/// Epoch milliseconds of a call's start.
pub(crate) fn started_ms(call: &ModelCall) -> i64 {
    let started = call.started_at.unwrap_or_default();
    started.seconds.saturating_mul(1000) + i64::from(started.nanos / 1_000_000)
}

impl Journal {
    /// Opens the journal in `dir` (created 0700), cutting any torn tail.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<Journal> {
        clawplane_tls::files::create_private_dir(dir)?;
        let mut durable = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(tenant) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            if crate::store::check_tenant_id(tenant).is_err() {
                continue;
            }
            let length = recover(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            durable.insert(tenant.to_string(), Arc::new(AtomicI64::new(length)));
        }
        let (changes, _) = tokio::sync::watch::channel(0);
        Ok(Journal { shared: Arc::new(Shared { dir: dir.to_path_buf(), durable: RwLock::new(durable), changes }) })
    }

    fn path(&self, tenant_id: &str) -> PathBuf {
        self.shared.dir.join(format!("{tenant_id}{SUFFIX}"))
    }

    /// Tenants with a journal.
    pub fn tenants(&self) -> Vec<String> {
        let mut tenants: Vec<String> = self.shared.durable.read().unwrap().keys().cloned().collect();
        tenants.sort();
        tenants
    }

    /// Up to `max_records` complete records of `tenant_id` that start at
    /// or after `from_position`, with their positions.
    pub fn read(
        &self,
        tenant_id: &str,
        from_position: i64,
        max_records: usize,
    ) -> std::io::Result<Vec<(i64, ModelCall)>> {
        let end = match self.shared.durable.read().unwrap().get(tenant_id) {
            Some(durable) => durable.load(Ordering::Acquire),
            None => return Ok(Vec::new()),
        };
        let mut position = from_position.max(0);
        if position >= end || max_records == 0 {
            return Ok(Vec::new());
        }
        let mut file = File::open(self.path(tenant_id))?;
        // A position inside a record means the next record.
        let start = (position - 1).max(0);
        file.seek(SeekFrom::Start(start as u64))?;
        let mut reader = BufReader::new(file.take((end - start) as u64));
        let mut line = Vec::new();
        if position > 0 {
            let skipped = reader.read_until(b'\n', &mut line)? as i64;
            position = start + skipped;
            line.clear();
        }
        let mut records = Vec::new();
        while records.len() < max_records {
            let length = reader.read_until(b'\n', &mut line)? as i64;
            if length == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if line != HEADER {
                match serde_json::from_slice::<Line>(&line) {
                    Ok(record) => records.push((position, record.call())),
                    Err(err) => {
                        tracing::warn!(tenant = %tenant_id, position, error = %err, "unreadable meter journal record skipped")
                    }
                }
            }
            position += length;
            line.clear();
        }
        Ok(records)
    }

    /// Bumps after each durable append.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Starts the writer thread. It ends once every [`Appender`] is gone,
    /// or once shutdown is asked for and no call is in flight (`active`).
    pub(crate) fn start_writer(
        &self,
        on_durable: OnDurable,
        active: Arc<AtomicUsize>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Appender> {
        let (tx, rx) = mpsc::channel();
        let writer = Writer { journal: self.clone(), files: HashMap::new(), on_durable };
        std::thread::Builder::new().name("meter-journal".into()).spawn(move || writer.run(rx, active, shutdown))?;
        Ok(Appender { tx })
    }
}

enum Op {
    Append(String, ModelCall),
    Remove(String),
}

/// The call path's side: hands records to the writer, never waits.
#[derive(Clone)]
pub(crate) struct Appender {
    tx: mpsc::Sender<Op>,
}

impl Appender {
    pub(crate) fn append(&self, tenant_id: &str, call: ModelCall) {
        if self.tx.send(Op::Append(tenant_id.to_string(), call)).is_err() {
            tracing::error!(tenant = %tenant_id, "meter journal writer has stopped; a model call record is lost");
        }
    }

    /// Deletes a tenant's journal after what is queued for it.
    pub(crate) fn remove(&self, tenant_id: &str) {
        let _ = self.tx.send(Op::Remove(tenant_id.to_string()));
    }
}

struct Writer {
    journal: Journal,
    files: HashMap<String, File>,
    on_durable: OnDurable,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>, active: Arc<AtomicUsize>, shutdown: Shutdown) {
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if shutdown.is_requested() && active.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply(batch);
        }
        // What arrived after the last check is still written.
        let rest: Vec<Op> = rx.try_iter().collect();
        if !rest.is_empty() {
            self.apply(rest);
        }
    }

    fn apply(&mut self, batch: Vec<Op>) {
        let mut appends: Vec<(String, ModelCall)> = Vec::new();
        for op in batch {
            match op {
                Op::Append(tenant, call) => appends.push((tenant, call)),
                Op::Remove(tenant) => {
                    self.commit(std::mem::take(&mut appends));
                    self.remove(&tenant);
                }
            }
        }
        self.commit(appends);
    }

    fn remove(&mut self, tenant: &str) {
        self.files.remove(tenant);
        self.journal.shared.durable.write().unwrap().remove(tenant);
        if let Err(err) = std::fs::remove_file(self.journal.path(tenant)) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(tenant = %tenant, error = %err, "removing a meter journal failed");
            }
        }
    }

    /// Appends and syncs, retrying until the disk takes it: a record is
    /// never dropped for a transient error (disk full, say).
    fn commit(&mut self, appends: Vec<(String, ModelCall)>) {
        if appends.is_empty() {
            return;
        }
        let mut wait = Duration::from_millis(100);
        let written = loop {
            match self.write(&appends) {
                Ok(written) => break written,
                Err(err) => {
                    tracing::error!(error = %err, "meter journal append failed; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        for (length, durable) in written.lengths {
            durable.store(length, Ordering::Release);
        }
        for ((tenant, call), position) in appends.iter().zip(written.positions) {
            (self.on_durable)(tenant, position, call);
        }
        self.journal.shared.changes.send_modify(|version| *version += 1);
    }

    fn write(&mut self, appends: &[(String, ModelCall)]) -> std::io::Result<Written> {
        let mut buffers: Vec<(String, Vec<u8>, i64)> = Vec::new();
        let mut positions = Vec::with_capacity(appends.len());
        for (tenant, call) in appends {
            let index = match buffers.iter().position(|(t, _, _)| t == tenant) {
                Some(index) => index,
                None => {
                    let start = self.durable(tenant).load(Ordering::Acquire);
                    let header = if start == 0 { HEADER.to_vec() } else { Vec::new() };
                    buffers.push((tenant.clone(), header, start));
                    buffers.len() - 1
                }
            };
            let (_, buffer, start) = &mut buffers[index];
            positions.push(*start + buffer.len() as i64);
            serde_json::to_writer(&mut *buffer, &Line::of(call)).map_err(std::io::Error::other)?;
            buffer.push(b'\n');
        }
        let mut lengths = Vec::with_capacity(buffers.len());
        for (tenant, buffer, start) in &buffers {
            let file = self.file(tenant)?;
            let written = file.write_all(buffer).and_then(|()| file.sync_data());
            if let Err(err) = written {
                // Whatever part landed is cut, so a retry starts clean.
                let _ = file.set_len(*start as u64);
                return Err(err);
            }
            lengths.push((start + buffer.len() as i64, self.durable(tenant)));
        }
        Ok(Written { positions, lengths })
    }

    fn durable(&self, tenant: &str) -> Arc<AtomicI64> {
        if let Some(durable) = self.journal.shared.durable.read().unwrap().get(tenant) {
            return durable.clone();
        }
        self.journal.shared.durable.write().unwrap().entry(tenant.to_string()).or_default().clone()
    }

    fn file(&mut self, tenant: &str) -> std::io::Result<&mut File> {
        if !self.files.contains_key(tenant) {
            let path = self.journal.path(tenant);
            let file = OpenOptions::new().append(true).create(true).mode(0o600).open(&path)?;
            // A new file's name must survive a crash too.
            File::open(&self.journal.shared.dir)?.sync_all()?;
            self.files.insert(tenant.to_string(), file);
        }
        Ok(self.files.get_mut(tenant).expect("inserted above"))
    }
}

struct Written {
    positions: Vec<i64>,
    lengths: Vec<(i64, Arc<AtomicI64>)>,
}

/// Cuts a file after its last complete line (a crash mid-append leaves a
/// partial one, or zeros); returns its length.
fn recover(path: &Path) -> std::io::Result<i64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let length = file.metadata()?.len();
    let mut end = length;
    let mut block = vec![0u8; 64 * 1024];
    let complete = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(block.len() as u64);
        let piece = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(piece)?;
        if let Some(newline) = piece.iter().rposition(|&b| b == b'\n') {
            break start + newline as u64 + 1;
        }
        end = start;
    };
    if complete != length {
        tracing::warn!(path = %path.display(), cut = length - complete, "meter journal: torn tail cut");
        file.set_len(complete)?;
        file.sync_all()?;
    }
    Ok(complete as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_line() {
        let mut call = ModelCall {
            call_id: "c".into(),
            provider: "p".into(),
            model: "m".repeat(1000),
            input_tokens: 5,
            started_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 123_000_000 }),
            ..Default::default()
        };
        call.set_api(ModelApi::AnthropicMessages);
        call.set_outcome(ModelCallOutcome::Stalled);
        let back = Line::of(&call).call();
        assert_eq!(back.model.len(), MAX_FIELD);
        call.model = back.model.clone();
        assert_eq!(back, call);
    }
}
