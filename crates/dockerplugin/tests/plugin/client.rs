//! A small HTTP/1.1 client over a unix socket, written out by hand so the tests
//! see the bytes dockerd would send and read.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A response: status and body (chunked bodies decoded).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `POST path` with a JSON body, as dockerd's plugin client sends it.
pub fn post(socket: &Path, path: &str, body: &[u8]) -> Reply {
    request(socket, "POST", path, Some(body))
}

/// `POST path` with `serde_json` value `v`.
pub fn call(socket: &Path, path: &str, v: serde_json::Value) -> Reply {
    post(socket, path, v.to_string().as_bytes())
}

/// Any method, an optional body with a `Content-Length`.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
    let mut s = UnixStream::connect(socket).expect("connect");
    let body = body.unwrap_or(b"");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    sent(s.write_all(body));
    read_reply(s)
}

/// A write the server may have cut short by answering (and closing) before it
/// read the whole request, as it does for a refused one: the reply is read all
/// the same.
fn sent(written: std::io::Result<()>) {
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
}

/// [`post_chunked`] that expects the server to read the whole body (every
/// write succeeds), as dockerd expects of a plugin that refuses a layer.
pub fn post_chunked_whole<'a>(
    socket: &Path,
    path: &str,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Reply {
    chunked(socket, path, chunks, |written| {
        written.expect("the server stopped reading the body");
    })
}

/// `POST path` with a chunked body: each item of `chunks` is one HTTP chunk.
pub fn post_chunked<'a>(
    socket: &Path,
    path: &str,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Reply {
    chunked(socket, path, chunks, sent)
}

/// Sends a chunked `POST`, each write's result checked by `check`, and
/// reads the reply.
fn chunked<'a>(
    socket: &Path,
    path: &str,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    check: fn(std::io::Result<()>),
) -> Reply {
    let mut s = UnixStream::connect(socket).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    for chunk in chunks {
        if chunk.is_empty() {
            continue;
        }
        check(write!(s, "{:x}\r\n", chunk.len()));
        check(s.write_all(chunk));
        check(s.write_all(b"\r\n"));
    }
    check(s.write_all(b"0\r\n\r\n"));
    read_reply(s)
}

pub fn read_reply(s: UnixStream) -> Reply {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header");
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).unwrap();
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).unwrap();
        }
    } else if let Some(len) = find("content-length") {
        body.resize(len.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Reply {
        status,
        headers,
        body,
    }
}
