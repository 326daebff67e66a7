//! A `hypercell serve` of a test's own on a loopback port the kernel picks, and a
//! plain HTTP/1.1 client that keeps its connection open between requests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use crate::binary::*;
use crate::daemon::{PATIENCE, lines_of, wait_for};

/// A running `hypercell serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its stderr, line by line: errors and handlers' stderr.
    pub errors: mpsc::Receiver<String>,
    /// Its stdout, line by line: the access log.
    pub access: mpsc::Receiver<String>,
}

impl Server {
    /// Serves `handler` with `flags` and waits until it says where it listens.
    pub fn start(handler: &Path, flags: &[&str]) -> Self {
        Self::start_within(handler, flags, PATIENCE)
    }

    /// [`Server::start`], for a handler whose compiling may take up to `patience` (an
    /// unoptimised test build's Cranelift takes minutes for CPython).
    pub fn start_within(handler: &Path, flags: &[&str], patience: Duration) -> Self {
        let mut child = hypercell(&scratch().join("cache"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .arg(handler)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let errors = lines_of(child.stderr.take().unwrap());
        let access = lines_of(child.stdout.take().unwrap());
        let line = errors
            .recv_timeout(patience)
            .expect("the server says it serves");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            errors,
            access,
        }
    }

    /// A new connection to the server.
    pub fn connect(&self) -> Connection {
        Connection::open(self.addr)
    }

    /// The next error line that `wanted` accepts.
    pub fn error_line(&self, wanted: impl Fn(&str) -> bool) -> String {
        wait_for(&self.errors, wanted)
    }

    /// The access-log line of request `id`.
    pub fn access_line(&self, id: &str) -> String {
        let marker = format!(" req={id} ");
        wait_for(&self.access, |line| line.contains(&marker))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill with a valid signal on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 connection.
pub struct Connection {
    stream: BufReader<TcpStream>,
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Connection {
    pub fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Self {
            stream: BufReader::new(stream),
        }
    }

    pub fn get(&mut self, target: &str) -> Reply {
        self.request("GET", target, &[], b"")
    }

    /// Sends a request and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: test.example:8080\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).unwrap();
        // A server that refuses the body may answer before it is all sent.
        let _ = stream.write_all(body);
        self.read_reply()
    }

    fn read_reply(&mut self) -> Reply {
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').unwrap();
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let reply_len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; reply_len];
        self.stream.read_exact(&mut body).unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// FNV-1a, as the test handler hashes bodies.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3)
    })
}
