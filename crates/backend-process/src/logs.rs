//! What an instance writes: each stdout and stderr line goes to tracing and to a bounded ring
//! buffer kept on the instance.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

/// The longest line kept; longer ones are cut, with a marker.
const MAX_LINE: usize = 4096;
/// How many of the latest stderr lines are kept for error messages, whatever the capacity.
pub(crate) const STDERR_TAIL: usize = 10;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The latest lines an instance wrote, at most `capacity` of them.
#[derive(Debug, Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<Lines>>,
}

#[derive(Debug)]
struct Lines {
    capacity: usize,
    lines: VecDeque<(Stream, String)>,
    /// The latest stderr lines, apart from `lines`, so that errors can quote them even when
    /// the capacity is small or stdout is busy.
    stderr: VecDeque<String>,
}

impl LogBuffer {
    pub(crate) fn new(capacity: usize) -> Self {
        let lines = Lines { capacity, lines: VecDeque::new(), stderr: VecDeque::new() };
        Self { inner: Arc::new(Mutex::new(lines)) }
    }

    fn push(&self, stream: Stream, line: String) {
        let mut inner = self.inner.lock();
        if stream == Stream::Stderr {
            if inner.stderr.len() == STDERR_TAIL {
                inner.stderr.pop_front();
            }
            inner.stderr.push_back(line.clone());
        }
        if inner.capacity == 0 {
            return;
        }
        if inner.lines.len() == inner.capacity {
            inner.lines.pop_front();
        }
        inner.lines.push_back((stream, line));
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> Vec<(Stream, String)> {
        self.inner.lock().lines.iter().cloned().collect()
    }

    /// The last stderr lines (at most ten, whatever the capacity), oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.inner.lock().stderr.iter().cloned().collect()
    }

    /// The last `count` lines of one stream kept within the capacity, oldest first.
    pub fn tail(&self, stream: Stream, count: usize) -> Vec<String> {
        let inner = self.inner.lock();
        let mut tail: Vec<String> = inner
            .lines
            .iter()
            .rev()
            .filter(|(from, _)| *from == stream)
            .take(count)
            .map(|(_, line)| line.clone())
            .collect();
        tail.reverse();
        tail
    }
}

/// Where lines are reported from: the function and instance fields of their tracing events.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) function: String,
    pub(crate) instance: u64,
    pub(crate) pid: u32,
}

/// Reads `source` line by line until it closes, into `buffer` and tracing.
pub(crate) fn forward<R>(
    source: R,
    stream: Stream,
    buffer: LogBuffer,
    origin: Origin,
) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut source = source;
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = match source.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let mut rest = &chunk[..read];
            while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
                append_bounded(&mut pending, &rest[..end]);
                emit(&mut pending, stream, &buffer, &origin);
                rest = &rest[end + 1..];
            }
            append_bounded(&mut pending, rest);
        }
        if !pending.is_empty() {
            emit(&mut pending, stream, &buffer, &origin);
        }
    })
}

/// Appends to a line under construction, keeping at most `MAX_LINE` bytes of it (plus one to
/// know that it was cut).
fn append_bounded(line: &mut Vec<u8>, bytes: &[u8]) {
    let room = (MAX_LINE + 1).saturating_sub(line.len());
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn emit(line: &mut Vec<u8>, stream: Stream, buffer: &LogBuffer, origin: &Origin) {
    let cut = line.len() > MAX_LINE;
    line.truncate(MAX_LINE);
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(line).into_owned();
    if cut {
        text.push_str(" [line cut]");
    }
    line.clear();
    match stream {
        Stream::Stdout => tracing::info!(
            target: "smgr::function",
            function = %origin.function, instance = origin.instance, pid = origin.pid,
            stream = "stdout", "{text}"
        ),
        // Many programs log everything to stderr: it is not a sign of trouble by itself.
        Stream::Stderr => tracing::info!(
            target: "smgr::function",
            function = %origin.function, instance = origin.instance, pid = origin.pid,
            stream = "stderr", "{text}"
        ),
    }
    buffer.push(stream, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin { function: "f".into(), instance: 1, pid: 2 }
    }

    #[tokio::test]
    async fn lines_are_split_bounded_and_kept_up_to_capacity() {
        let buffer = LogBuffer::new(3);
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\r\ntwo\nthree\n{long}\nlast without newline");
        let source = std::io::Cursor::new(input.into_bytes());
        forward(source, Stream::Stderr, buffer.clone(), origin()).await.unwrap();
        let lines = buffer.tail(Stream::Stderr, 10);
        assert_eq!(lines.len(), 3, "capacity 3 keeps the last three");
        assert_eq!(lines[0], "three");
        assert!(lines[1].ends_with(" [line cut]") && lines[1].len() == MAX_LINE + 11);
        assert_eq!(lines[2], "last without newline");
        assert!(buffer.tail(Stream::Stdout, 10).is_empty());
    }

    #[tokio::test]
    async fn errors_keep_a_stderr_tail_whatever_the_capacity() {
        let buffer = LogBuffer::new(0);
        let source = std::io::Cursor::new(b"fatal: no config\n".to_vec());
        forward(source, Stream::Stderr, buffer.clone(), origin()).await.unwrap();
        assert!(buffer.lines().is_empty(), "capacity 0 keeps no lines");
        assert_eq!(buffer.stderr_tail(), ["fatal: no config"]);
    }
}
