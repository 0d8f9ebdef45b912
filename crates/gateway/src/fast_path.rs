//! The HTTP/1.1 path of `/fn/` requests without hyper: the request head is parsed once with
//! `httparse` and copied to the instance as bytes, with the gateway's changes (`Host`,
//! hop-by-hop headers, `X-Forwarded-For`, `X-Request-Id`) made on the way; the instance's answer
//! is parsed once and copied back the same way, its body passed through as it is framed
//! (`Content-Length`, chunked, or until the instance closes). This is how nginx proxies, and it
//! spends a fraction of the CPU of two hyper state machines per request.
//!
//! Every connection starts here. The first request this path does not take — not under
//! `/fn/{a known function}/`, HTTP/1.0, `Expect`, `Upgrade`, a chunked or large request body, a
//! head it cannot parse — goes with the rest of the connection to hyper
//! ([`crate::gateway::serve_hyper`]), which serves every route and answers every error; nothing
//! the client sent is lost on the way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use pool_core::Lease;

use crate::any::AnyManager as Manager;
use crate::gateway::{
    Body, Client, FunctionPool, HOP_BY_HOP, Shared, UpstreamHeaders, error, function_route,
    record_response, serve_hyper, timeout,
};

/// Headers a request or an answer may have on this path; more go to hyper (requests) or are
/// refused as a bad answer.
const MAX_HEADERS: usize = 64;
/// The largest request head this path waits for; a longer one goes to hyper, which refuses it.
const MAX_HEAD: usize = 64 * 1024;
/// Request bodies up to this size are read whole and sent with the head; larger ones take
/// hyper's streaming path.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// Serves one client connection until it closes, the gateway shuts down, or a request goes to
/// hyper with the rest of the connection.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    client: Arc<Client>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut work = Work::default();
    loop {
        // The next request head: wait for it (or for the shutdown, between requests).
        let plan = loop {
            if !buf.is_empty() {
                work.upstream_head.clear();
                match plan(&shared, &client, &buf, &mut work.upstream_head) {
                    Parsed::Partial if buf.len() < MAX_HEAD => {}
                    Parsed::Partial | Parsed::Delegate => {
                        let stream = Rewind { pending: buf.freeze(), stream };
                        return serve_hyper(shared, stream, client, shutdown).await;
                    }
                    Parsed::Request(plan) => break plan,
                }
            }
            room(&mut buf);
            let read = if buf.is_empty() {
                tokio::select! {
                    read = stream.read_buf(&mut buf) => read,
                    _ = stopped(&mut shutdown) => return,
                }
            } else {
                stream.read_buf(&mut buf).await
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        // The body, whole.
        let total = plan.head_len + plan.body_len;
        while buf.len() < total {
            buf.reserve(total - buf.len());
            room(&mut buf);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = buf.split_to(total).split_off(plan.head_len).freeze();
        let close = plan.close || *shutdown.borrow();
        let keep = exchange(&shared, plan, body, close, &mut stream, &mut work).await;
        if !keep || close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Makes room for a read of at least a few pages: `read_buf` reads no more than the spare
/// capacity, and a split-off buffer may have little left.
fn room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// Resolves once the gateway shuts down.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// Buffers kept across the requests of a connection.
#[derive(Default)]
struct Work {
    /// The head for the instance, without its `Host` line and final blank line.
    upstream_head: Vec<u8>,
    /// What goes to the instance, or to the client.
    out: Vec<u8>,
    /// What came from the instance.
    answer: BytesMut,
}

/// A request this path takes.
struct Plan<'s> {
    function: &'s FunctionPool,
    head_len: usize,
    body_len: usize,
    /// Without a body and safe to send twice: a failed first attempt may be retried.
    repeatable: bool,
    /// The client asked to close the connection after this request.
    close: bool,
    /// A `HEAD` request: the answer has no body whatever its head says.
    head_only: bool,
    /// Where the request id's value is in the upstream head.
    request_id: std::ops::Range<usize>,
}

enum Parsed<'s> {
    Partial,
    /// Not for this path: hyper takes the connection.
    Delegate,
    Request(Plan<'s>),
}

/// Reads a request head from `buf` and writes the head for the instance into `out`.
fn plan<'s>(shared: &'s Shared, client: &Client, buf: &[u8], out: &mut Vec<u8>) -> Parsed<'s> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Delegate,
    };
    let (Some(method), Some(path), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Delegate;
    };
    if method == "CONNECT" {
        return Parsed::Delegate;
    }
    let Some((name, target)) = function_route(path) else { return Parsed::Delegate };
    // A name with `#` in it names no function (function names cannot hold one).
    let Some(function) = shared.functions.get(name) else { return Parsed::Delegate };

    // Hop-by-hop headers, and those the `Connection` header names, stay here.
    let Some(connection) = Connection::of(request.headers) else { return Parsed::Delegate };
    let close = connection.close;

    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    if !target.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut body_len: Option<u64> = None;
    let mut forwarded_for: Option<&[u8]> = None;
    let mut request_id: Option<&[u8]> = None;
    for header in request.headers.iter() {
        let name = header.name;
        let is = |other: &str| name.eq_ignore_ascii_case(other);
        if is("transfer-encoding") || is("expect") || is("upgrade") {
            return Parsed::Delegate;
        }
        if is("content-length") {
            match (content_length(header.value), body_len) {
                (Some(length), None) => body_len = Some(length),
                (Some(length), Some(earlier)) if length == earlier => {}
                _ => return Parsed::Delegate,
            }
            continue;
        }
        if is("x-forwarded-for") {
            if forwarded_for.is_some() {
                return Parsed::Delegate;
            }
            forwarded_for = Some(header.value);
            continue;
        }
        if is("x-request-id") {
            request_id.get_or_insert(header.value);
            continue;
        }
        if is("host") || connection.drops(name) {
            continue;
        }
        put_header(out, name.as_bytes(), header.value);
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BUFFERED_BODY || body_len > shared.max_body {
        return Parsed::Delegate;
    }
    if body_len > 0 {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(body_len, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(earlier) = forwarded_for {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.ip.as_bytes());
    out.extend_from_slice(b"\r\nx-request-id: ");
    let id_start = out.len();
    match request_id {
        Some(id) => out.extend_from_slice(id),
        None => shared.new_request_id(out),
    }
    let request_id = id_start..out.len();
    out.extend_from_slice(b"\r\n");
    let head_only = method == "HEAD";
    Parsed::Request(Plan {
        function,
        head_len,
        body_len: usize::try_from(body_len).unwrap_or(usize::MAX),
        repeatable: body_len == 0 && matches!(method, "GET" | "HEAD" | "OPTIONS"),
        close,
        head_only,
        request_id,
    })
}

/// What a message's `Connection` headers say.
struct Connection<'h> {
    close: bool,
    keep_alive: bool,
    /// The other headers they name, which are hop-by-hop too.
    named: [&'h str; 8],
    count: usize,
}

impl<'h> Connection<'h> {
    /// `None` when a value is not text, or names more headers than this path keeps track of.
    fn of(headers: &[httparse::Header<'h>]) -> Option<Self> {
        let mut connection = Self { close: false, keep_alive: false, named: [""; 8], count: 0 };
        for header in headers.iter().filter(|header| header.name.eq_ignore_ascii_case("connection"))
        {
            let value = std::str::from_utf8(header.value).ok()?;
            for token in value.split(',').map(str::trim).filter(|token| !token.is_empty()) {
                if token.eq_ignore_ascii_case("close") {
                    connection.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    connection.keep_alive = true;
                } else {
                    *connection.named.get_mut(connection.count)? = token;
                    connection.count += 1;
                }
            }
        }
        Some(connection)
    }

    /// Whether the header `name` stays on this hop: a hop-by-hop header, or one of those named.
    fn drops(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().chain(&self.named[..self.count]).any(|hop| hop.eq_ignore_ascii_case(name))
    }
}

/// A `Content-Length` value: digits only.
fn content_length(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|value| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|value| value.parse().ok())
}

fn put_status_line(out: &mut Vec<u8>, status: StatusCode, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n`, written into `buf`.
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (an answer to `HEAD`, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

/// An instance's answer, its head read and translated into `work.out`.
struct Answer {
    lease: Lease<Manager>,
    cold: bool,
    stream: TcpStream,
    headers: UpstreamHeaders,
    head: Final,
}

/// A final answer's head, as read.
#[derive(Debug)]
struct Final {
    status: StatusCode,
    framing: Framing,
    /// The instance keeps the connection open after this answer.
    reusable: bool,
    /// How much of the bytes read the head took.
    head_len: usize,
}

/// Why an exchange with an instance failed.
enum Failed {
    /// A kept connection was closed by the instance before it answered: nothing was lost.
    Stale,
    Instance(String),
}

/// Sends one request to an instance of its function and relays the answer to the client.
/// Returns whether the client connection can carry another request.
async fn exchange(
    shared: &Shared,
    plan: Plan<'_>,
    body: Bytes,
    close: bool,
    stream: &mut TcpStream,
    work: &mut Work,
) -> bool {
    let function = plan.function;
    let (started, arrived) = (Instant::now(), SystemTime::now());
    let deadline = pool_core::deadline_after(started, shared.request_timeout);
    let answered = answer(&plan, &body, arrived, deadline, work);
    let answer = tokio::time::timeout_at(deadline, answered)
        .await
        .unwrap_or_else(|_| Err(Box::new(timeout(shared))));
    let mut answer = match answer {
        Ok(answer) => answer,
        Err(response) => {
            let response = *response;
            record_response(shared, function, response.status(), started);
            let request_id = &work.upstream_head[plan.request_id.clone()];
            return write_response(stream, response, request_id, close, &mut work.out).await;
        }
    };
    // The head for the client, and as much of the body as came with it.
    let out = &mut work.out;
    put_header(out, b"x-request-id", &work.upstream_head[plan.request_id.clone()]);
    put_header(out, b"x-smgr-instance", answer.headers.instance.as_bytes());
    let cold: &[u8] = if answer.cold { b"true" } else { b"false" };
    put_header(out, b"x-smgr-cold-start", cold);
    let until_close = answer.head.framing == Framing::UntilClose;
    if close || until_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut body = Relayed::new(answer.head.framing);
    work.answer.advance(answer.head.head_len);
    let mut sent_ok = true;
    let mut head_sent = false;
    loop {
        let taken = match body.take(&work.answer) {
            Ok(taken) => taken,
            Err(()) => {
                tracing::warn!(function = %function.name, instance = %answer.lease.id(), "instance failed: its chunked body is malformed");
                answer.lease.mark_broken();
                if !head_sent {
                    let response = error(
                        StatusCode::BAD_GATEWAY,
                        "instance_failed",
                        "the instance failed: its chunked body is malformed".to_owned(),
                    );
                    // The client gets this answer, not the instance's: it is the one counted.
                    record_response(shared, function, response.status(), started);
                    let request_id = &work.upstream_head[plan.request_id.clone()];
                    write_response(stream, response, request_id, true, &mut work.out).await;
                }
                return false;
            }
        };
        if !head_sent {
            // The instance's answer goes out now: count it. Its head goes with the body's
            // first bytes; later bytes go out straight from the instance's buffer.
            record_response(shared, function, answer.head.status, started);
            work.out.extend_from_slice(&work.answer[..taken]);
        }
        let data = if head_sent { &work.answer[..taken] } else { &work.out[..] };
        if !data.is_empty() && sent_ok {
            sent_ok = stream.write_all(data).await.is_ok();
            head_sent = true;
        }
        work.out.clear();
        work.answer.advance(taken);
        if body.done() {
            break;
        }
        if !sent_ok {
            // The client went away: the instance is fine, its connection is not reusable.
            return false;
        }
        work.answer.clear();
        room(&mut work.answer);
        match answer.stream.read_buf(&mut work.answer).await {
            // An answer framed by its close is never reusable (see `answer_head`).
            Ok(0) if until_close => body.finished(),
            Ok(0) | Err(_) => {
                // The instance went away mid-answer: the client gets a cut answer.
                answer.lease.mark_broken();
                return false;
            }
            Ok(_) => {}
        }
    }
    // Bytes past the end of the answer: the instance broke the protocol.
    let reusable = answer.head.reusable && work.answer.is_empty();
    work.answer.clear();
    if reusable {
        function.give_back_raw(answer.lease.id(), answer.stream, answer.headers);
    }
    drop(answer.lease);
    sent_ok && !until_close
}

/// Acquires an instance, sends it the request and reads its answer's head, within the request
/// timeout; or the response to send instead.
async fn answer(
    plan: &Plan<'_>,
    body: &Bytes,
    arrived: SystemTime,
    deadline: Instant,
    work: &mut Work,
) -> Result<Answer, Box<Response<Body>>> {
    let function = plan.function;
    // One more attempt on another instance as in the hyper path (`forward_inner`).
    let mut retried = false;
    'attempts: loop {
        let (mut lease, address, cold) = function.lease(arrived, deadline).await?;
        let instance = lease.instance();
        // A kept connection first (checked for a close by the instance when the request
        // cannot be sent twice); a fresh one when it turns out closed.
        let mut kept = function.take_raw(instance, !plan.repeatable);
        let failure = loop {
            let (stream, headers, reused) = match kept.take() {
                Some((stream, headers)) => (stream, headers, true),
                None => match function.connect_raw(instance, address).await {
                    Ok((stream, headers)) => (stream, headers, false),
                    Err(cause) => {
                        let response = lease.unreachable(function, &cause);
                        // Nothing was sent: any request may go to another instance.
                        if !retried {
                            retried = true;
                            continue 'attempts;
                        }
                        return Err(Box::new(response));
                    }
                },
            };
            match send(stream, &headers, plan, body, work).await {
                Ok((stream, head)) => {
                    return Ok(Answer { lease: lease.release(), cold, stream, headers, head });
                }
                // The instance closed a kept connection as the request went out: most likely
                // its idle timeout, and it never saw the request; send it on a fresh
                // connection. But it may also have died of the request, so only a request
                // that is safe to repeat goes again.
                Err(Failed::Stale) if reused && plan.repeatable => {}
                // One that is not (sent on a connection just checked for a close, which makes
                // this rare) gets a 502; the instance is not taken for broken, since it may
                // only have closed an idle connection: the next request finds out.
                Err(Failed::Stale) if reused => {
                    tracing::warn!(
                        function = %function.name, %instance,
                        "the instance closed a kept connection as a request went out"
                    );
                    return Err(Box::new(error(
                        StatusCode::BAD_GATEWAY,
                        "instance_failed",
                        "the instance closed the connection as the request went out; it was not \
                         sent again, since it is not safe to repeat"
                            .to_owned(),
                    )));
                }
                Err(Failed::Stale) => {
                    break "the instance closed the connection without answering".to_owned();
                }
                Err(Failed::Instance(cause)) => break cause,
            }
        };
        let response = lease.failed(function, &failure);
        if plan.repeatable && !retried {
            retried = true;
            continue;
        }
        return Err(Box::new(response));
    }
}

/// Writes the request to `stream` and reads the answer's head, translated into `work.out`.
async fn send(
    mut stream: TcpStream,
    headers: &UpstreamHeaders,
    plan: &Plan<'_>,
    body: &Bytes,
    work: &mut Work,
) -> Result<(TcpStream, Final), Failed> {
    let out = &mut work.out;
    out.clear();
    out.extend_from_slice(&work.upstream_head);
    put_header(out, b"host", headers.host.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    if stream.write_all(out).await.is_err() {
        return Err(Failed::Stale);
    }
    out.clear();
    work.answer.clear();
    loop {
        room(&mut work.answer);
        match stream.read_buf(&mut work.answer).await {
            Ok(0) if work.answer.is_empty() => return Err(Failed::Stale),
            Err(_) if work.answer.is_empty() => return Err(Failed::Stale),
            Ok(0) => return Err(Failed::Instance("the answer ended in its head".to_owned())),
            Err(cause) => return Err(Failed::Instance(cause.to_string())),
            Ok(_) => {}
        }
        loop {
            match answer_head(&work.answer, plan.head_only, &mut work.out) {
                Head::Partial if work.answer.len() < MAX_HEAD => break,
                Head::Partial => {
                    return Err(Failed::Instance("the answer's head is too long".to_owned()));
                }
                Head::Invalid(why) => return Err(Failed::Instance(why.to_owned())),
                Head::Informational(length) => {
                    // Passed on before the final answer's head.
                    work.answer.advance(length);
                }
                Head::Final(head) => return Ok((stream, head)),
            }
        }
    }
}

enum Head {
    Partial,
    Invalid(&'static str),
    /// A 1xx answer of this length, copied to `out`; the final one follows.
    Informational(usize),
    Final(Final),
}

/// Reads an answer head from `buf` and appends the head for the client to `out`, without its
/// final blank line.
fn answer_head(buf: &[u8], head_only: bool, out: &mut Vec<u8>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let head_len = match answer.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Invalid("the answer's head is not valid HTTP/1"),
    };
    let (Some(version), Some(code)) = (answer.version, answer.code) else {
        return Head::Invalid("the answer's head is not valid HTTP/1");
    };
    let Ok(status) = StatusCode::from_u16(code) else {
        return Head::Invalid("the answer's status is not valid");
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Head::Invalid("the instance switched protocols unasked");
    }
    if status.is_informational() {
        out.extend_from_slice(&buf[..head_len]);
        return Head::Informational(head_len);
    }
    let Some(connection) = Connection::of(answer.headers) else {
        return Head::Invalid("the answer's connection header is not valid");
    };
    // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only when asked.
    let mut reusable = !connection.close && (version == 1 || connection.keep_alive);
    put_status_line(out, status, answer.reason.unwrap_or(""));
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut dated = false;
    for header in answer.headers.iter() {
        let name = header.name;
        let is = |other: &str| name.eq_ignore_ascii_case(other);
        if is("transfer-encoding") {
            // Only the last coding says how the body ends.
            let last = header.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                other_coding = true;
            }
            // Passed on as it is: the body keeps its framing.
            put_header(out, name.as_bytes(), header.value);
            continue;
        }
        if is("content-length") {
            match (content_length(header.value), length) {
                (Some(value), None) => length = Some(value),
                (Some(value), Some(earlier)) if value == earlier => continue,
                _ => return Head::Invalid("the answer's content-length is not valid"),
            }
            put_header(out, name.as_bytes(), header.value);
            continue;
        }
        if is("x-request-id") || is("x-smgr-instance") || is("x-smgr-cold-start") {
            continue;
        }
        if connection.drops(name) {
            continue;
        }
        dated |= is("date");
        put_header(out, name.as_bytes(), header.value);
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date());
        out.extend_from_slice(b"\r\n");
    }
    let no_body =
        head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if other_coding && !chunked {
        Framing::UntilClose
    } else if chunked {
        Framing::Chunked
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }
    Head::Final(Final { status, framing, reusable, head_len })
}

/// What is left of an answer's body as it is relayed, to know where it ends.
enum Relayed {
    Done,
    /// Bytes left of a `Content-Length` body.
    Bytes(u64),
    Chunks(Chunks),
    UntilClose,
}

impl Relayed {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Relayed::Done,
            Framing::Length(length) => Relayed::Bytes(length),
            Framing::Chunked => Relayed::Chunks(Chunks::default()),
            Framing::UntilClose => Relayed::UntilClose,
        }
    }

    /// How many bytes of `data` belong to the body; `Err` when a chunked body is malformed.
    fn take(&mut self, data: &[u8]) -> Result<usize, ()> {
        let taken = match self {
            Relayed::Done => 0,
            Relayed::Bytes(left) => {
                let taken = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= taken as u64;
                taken
            }
            Relayed::Chunks(chunks) => chunks.feed(data)?,
            Relayed::UntilClose => data.len(),
        };
        if matches!(self, Relayed::Bytes(0) | Relayed::Chunks(Chunks::Done)) {
            *self = Relayed::Done;
        }
        Ok(taken)
    }

    fn done(&self) -> bool {
        matches!(self, Relayed::Done)
    }

    /// The instance closed the connection: the end of an `UntilClose` body.
    fn finished(&mut self) {
        *self = Relayed::Done;
    }
}

/// Where a chunked body stands (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// In a chunk size line: the size so far, and whether it has a digit yet.
    Size(u64, bool),
    /// Past the size, in chunk extensions.
    Extension(u64),
    /// The size line's LF.
    SizeLf(u64),
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final blank line.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks::Size(0, false)
    }
}

impl Chunks {
    /// Consumes `data` up to the end of the body (then the state is `Done`); returns how much
    /// it took. `Err` when the body is not valid chunked coding.
    fn feed(&mut self, data: &[u8]) -> Result<usize, ()> {
        let mut at = 0;
        while at < data.len() && *self != Chunks::Done {
            if let Chunks::Data(left) = *self {
                let taken = left.min((data.len() - at) as u64);
                at += taken as usize;
                *self = if taken == left { Chunks::DataCr } else { Chunks::Data(left - taken) };
                continue;
            }
            let byte = data[at];
            at += 1;
            *self = match (*self, byte) {
                (Chunks::Size(size, _), b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = u64::from(char::from(byte).to_digit(16).ok_or(())?);
                    let size = size.checked_mul(16).and_then(|s| s.checked_add(digit)).ok_or(())?;
                    Chunks::Size(size, true)
                }
                (Chunks::Size(size, true), b';' | b' ' | b'\t') => Chunks::Extension(size),
                (Chunks::Size(size, true) | Chunks::Extension(size), b'\r') => Chunks::SizeLf(size),
                (Chunks::Extension(_), b'\n') => return Err(()),
                (Chunks::Extension(size), _) => Chunks::Extension(size),
                (Chunks::SizeLf(0), b'\n') => Chunks::TrailerStart,
                (Chunks::SizeLf(size), b'\n') => Chunks::Data(size),
                (Chunks::DataCr, b'\r') => Chunks::DataLf,
                (Chunks::DataLf, b'\n') => Chunks::Size(0, false),
                (Chunks::TrailerStart, b'\r') => Chunks::EndLf,
                (Chunks::TrailerStart | Chunks::TrailerLine, b'\n') => return Err(()),
                (Chunks::TrailerLine, b'\r') => Chunks::TrailerLf,
                (Chunks::TrailerStart | Chunks::TrailerLine, _) => Chunks::TrailerLine,
                (Chunks::TrailerLf, b'\n') => Chunks::TrailerStart,
                (Chunks::EndLf, b'\n') => Chunks::Done,
                _ => return Err(()),
            };
        }
        Ok(at)
    }
}

/// Writes a response the gateway made (an error) to the client. Returns whether the
/// connection can carry another request.
async fn write_response(
    stream: &mut TcpStream,
    response: Response<Body>,
    request_id: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) -> bool {
    let (head, body) = response.into_parts();
    let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
        return false;
    };
    out.clear();
    put_status_line(out, head.status, head.status.canonical_reason().unwrap_or(""));
    for (name, value) in &head.headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    put_header(out, b"x-request-id", request_id);
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa(body.len() as u64, &mut [0; 20]));
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(&date());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    let sent = stream.write_all(out).await.is_ok();
    out.clear();
    sent
}

/// The `Date` header's value, made at most once a second per thread.
fn date() -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    CACHED.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut text = [0; 29];
        let formatted = httpdate::fmt_http_date(now);
        let bytes = formatted.as_bytes();
        text[..bytes.len().min(29)].copy_from_slice(&bytes[..bytes.len().min(29)]);
        cached.set((second, text));
        text
    })
}

/// A connection handed to hyper with the bytes already read from it.
pub(crate) struct Rewind {
    pending: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let length = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending[..length]);
            self.pending.advance(length);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNKED: &[u8] = b"5;name=value\r\nhello\r\n1b\r\n, and twenty-one more bytes\r\n0\r\nx-checksum: 42\r\n\r\n";

    /// Feeds `data` in pieces cut at `cuts`; returns what was taken and whether it ended.
    fn feed_in_pieces(data: &[u8], cuts: &[usize]) -> Result<(usize, bool), ()> {
        let mut chunks = Chunks::default();
        let mut taken = 0;
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&data.len())) {
            taken += chunks.feed(&data[start..end])?;
            if chunks == Chunks::Done {
                return Ok((taken, true));
            }
            start = end;
        }
        Ok((taken, false))
    }

    #[test]
    fn a_chunked_body_ends_where_it_ends_however_it_is_cut() {
        let mut data = CHUNKED.to_vec();
        data.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for cut in 0..=CHUNKED.len() {
            assert_eq!(feed_in_pieces(&data, &[cut]), Ok((CHUNKED.len(), true)), "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..data.len()).collect();
        assert_eq!(feed_in_pieces(&data, &every_byte), Ok((CHUNKED.len(), true)));
        // Not there yet.
        assert_eq!(
            feed_in_pieces(&CHUNKED[..CHUNKED.len() - 1], &[]),
            Ok((CHUNKED.len() - 1, false))
        );
    }

    #[test]
    fn a_malformed_chunked_body_is_refused() {
        for bad in [
            &b"xyz\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"5\nhello\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\nbroken\n",
        ] {
            assert_eq!(Chunks::default().feed(bad), Err(()), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn head(answer: &[u8], head_only: bool) -> (Head, String) {
        let mut out = Vec::new();
        let head = answer_head(answer, head_only, &mut out);
        (head, String::from_utf8(out).unwrap())
    }

    #[test]
    fn an_answer_head_loses_its_hop_by_hop_headers_and_says_how_its_body_ends() {
        let answer = b"HTTP/1.1 201 Made\r\nContent-Length: 3\r\nConnection: keep-alive, x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n\r\nabc";
        let (parsed, out) = head(answer, false);
        let Head::Final(Final { status, framing, reusable, head_len }) = parsed else {
            panic!("a complete head")
        };
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(framing, Framing::Length(3));
        assert!(reusable);
        assert_eq!(head_len, answer.len() - 3);
        assert_eq!(
            out,
            "HTTP/1.1 201 Made\r\nContent-Length: 3\r\nX-Kept: yes\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n"
        );

        let (parsed, out) =
            head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false);
        assert!(matches!(
            parsed,
            Head::Final(Final { framing: Framing::Chunked, reusable: true, .. })
        ));
        assert!(out.contains("Transfer-Encoding: gzip, chunked\r\n"), "{out}");
        assert!(out.contains("date: "), "a date is added when the instance sends none: {out}");

        let (parsed, _) = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", false);
        assert!(matches!(
            parsed,
            Head::Final(Final { framing: Framing::UntilClose, reusable: false, .. })
        ));
        let (parsed, _) = head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false);
        assert!(matches!(parsed, Head::Final(Final { reusable: false, .. })), "HTTP/1.0 closes");
        let (parsed, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", true);
        assert!(matches!(parsed, Head::Final(Final { framing: Framing::Empty, .. })), "HEAD");
        let (parsed, _) = head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n", false);
        assert!(matches!(parsed, Head::Final(Final { framing: Framing::Empty, .. })));
        let (parsed, out) =
            head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200", false);
        assert!(matches!(parsed, Head::Informational(40)));
        assert_eq!(out, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
    }

    #[test]
    fn a_broken_answer_head_is_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad, false).0, Head::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(head(b"HTTP/1.1 200 OK\r\nConte", false).0, Head::Partial));
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 65_536, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }
}
