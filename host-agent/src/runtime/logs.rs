//! Tenants' gateway logs: the last lines, and new lines as they come,
//! either from a log file the gateway appends to or from a CLI process
//! that prints them (`openclaw fleet logs --follow`).
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

use super::error::RuntimeResult;
use crate::config::{LOG_CHUNK_LINES, LOG_POLL};
use crate::openclaw::cli::StreamingChild;

/// Lines read by a follower.
#[derive(Debug, Default)]
pub struct LogBatch {
    pub lines: Vec<String>,
    /// The log ended (its source went away); nothing follows.
    pub ended: bool,
}

/// New lines of a log as they come. Dropping it ends the following.
#[async_trait]
pub trait LogFollower: Send {
    /// The next lines (never an empty batch unless it ended).
    async fn next(&mut self) -> LogBatch;
}

/// The last `tail` lines of the file and the offset after them.
pub fn file_tail(path: &Path, tail: usize) -> RuntimeResult<(Vec<String>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(_) => return Ok((Vec::new(), 0)),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Read at most the last 4 MiB for the tail.
    let start = len.saturating_sub(4 * 1024 * 1024);
    file.seek(SeekFrom::Start(start)).context("seek log")?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).context("read log")?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let keep = lines[lines.len().saturating_sub(tail)..].to_vec();
    Ok((keep, len))
}

/// Follows a log file: its tail first, then complete new lines, polled
/// every [`LOG_POLL`]; a file that shrinks was rotated and is read anew.
pub struct FileFollower {
    path: PathBuf,
    offset: u64,
    partial: String,
    tail: Option<Vec<String>>,
}

impl FileFollower {
    pub fn new(path: PathBuf, tail: usize) -> RuntimeResult<Self> {
        let (lines, offset) = file_tail(&path, tail)?;
        Ok(FileFollower { path, offset, partial: String::new(), tail: Some(lines) })
    }

    /// Complete lines added since the last read, if any.
    fn read_new(&mut self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return Vec::new() };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0; // rotated or truncated
        }
        if len == self.offset {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.by_ref().take(1 << 20).read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut complete: Vec<String> = Vec::new();
        while let Some(newline) = self.partial.find('\n') {
            complete.push(self.partial[..newline].to_string());
            self.partial.drain(..=newline);
        }
        complete
    }
}

#[async_trait]
impl LogFollower for FileFollower {
    async fn next(&mut self) -> LogBatch {
        if let Some(lines) = self.tail.take() {
            if !lines.is_empty() {
                return LogBatch { lines, ended: false };
            }
        }
        loop {
            tokio::time::sleep(LOG_POLL).await;
            let lines = self.read_new();
            if !lines.is_empty() {
                return LogBatch { lines, ended: false };
            }
        }
    }
}

/// Follows the lines a CLI process prints, in batches of at most
/// [`LOG_CHUNK_LINES`]; a line waits at most [`LOG_POLL`] for others to
/// join its batch.
pub struct ProcessFollower {
    /// Kept for its drop, which kills the process group.
    _child: StreamingChild,
    lines: Lines<BufReader<ChildStdout>>,
    pending: Vec<String>,
    flush_at: tokio::time::Instant,
}

impl ProcessFollower {
    pub fn new(mut child: StreamingChild) -> anyhow::Result<Self> {
        let stdout = child.child.stdout.take().context("the log process has no stdout")?;
        Ok(ProcessFollower {
            _child: child,
            lines: BufReader::new(stdout).lines(),
            pending: Vec::new(),
            flush_at: tokio::time::Instant::now(),
        })
    }
}

#[async_trait]
impl LogFollower for ProcessFollower {
    async fn next(&mut self) -> LogBatch {
        loop {
            tokio::select! {
                line = self.lines.next_line() => match line {
                    Ok(Some(line)) => {
                        if self.pending.is_empty() {
                            self.flush_at = tokio::time::Instant::now() + LOG_POLL;
                        }
                        self.pending.push(line);
                        if self.pending.len() < LOG_CHUNK_LINES {
                            continue;
                        }
                    }
                    // The source went away or the CLI ended.
                    _ => return LogBatch { lines: std::mem::take(&mut self.pending), ended: true },
                },
                _ = tokio::time::sleep_until(self.flush_at), if !self.pending.is_empty() => {}
            }
            return LogBatch { lines: std::mem::take(&mut self.pending), ended: false };
        }
    }
}
