//! A minimal HTTP/1.1 keep-alive client for the load generator.
//!
//! Why not reqwest (which the CLI uses): the generator shares the machine with the
//! servers it measures, so every microsecond it spends per request is taken from
//! them. reqwest parses a URL, consults a pool and hands each request to a separate
//! connection task; this client writes the request bytes on its own socket and parses
//! the status line and the few headers it needs in the same task — about as little
//! work per request as the Redis client beside it. It supports exactly what the
//! bench needs: one request at a time per connection, `Content-Length` or chunked
//! bodies, `Connection: close`, reconnect on the next request after any error.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response body accepted (a guard against a bogus length).
const MAX_BODY: usize = 64 << 20;
/// Longest status or header line accepted.
const MAX_LINE: usize = 16 << 10;
/// Most header lines accepted in one response.
const MAX_HEADERS: usize = 100;

/// One response, reduced to what the bench looks at.
#[derive(Debug, Default, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `X-Ringlab-Context`, when present.
    pub context: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// One keep-alive connection to `host:port`.
pub struct HttpConn {
    addr: String,
    /// Path prefix of the base URL (usually empty).
    prefix: String,
    stream: Option<BufReader<TcpStream>>,
    timeout: Duration,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl HttpConn {
    /// `base` is `http://host:port[/prefix]`; nothing is connected yet.
    pub fn new(base: &str, timeout: Duration) -> Result<HttpConn, String> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("{base:?}: only http:// URLs are supported"))?;
        let (addr, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if addr.is_empty() || !addr.contains(':') {
            return Err(format!("{base:?}: expected http://host:port"));
        }
        Ok(HttpConn {
            addr: addr.to_string(),
            prefix: prefix.to_string(),
            stream: None,
            timeout,
            out: Vec::with_capacity(512),
            line: Vec::with_capacity(256),
        })
    }

    /// Sends one request and reads its response. Errors are short kinds (`connect`,
    /// `timeout`, `io`, `closed`, `protocol`); after one the connection is dropped
    /// and the next request reconnects.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, &'static str> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(method, path, headers, body)).await {
            Ok(Ok((resp, keep))) => {
                if !keep {
                    self.stream = None;
                }
                Ok(resp)
            }
            Ok(Err(kind)) => {
                self.stream = None;
                Err(kind)
            }
            Err(_) => {
                self.stream = None;
                Err("timeout")
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(Response, bool), &'static str> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr.as_str())
                .await
                .map_err(|_| "connect")?;
            let _ = s.set_nodelay(true);
            self.stream = Some(BufReader::new(s));
        }
        let Some(s) = self.stream.as_mut() else {
            return Err("connect");
        };
        self.out.clear();
        let o = &mut self.out;
        o.extend_from_slice(method.as_bytes());
        o.push(b' ');
        o.extend_from_slice(self.prefix.as_bytes());
        o.extend_from_slice(path.as_bytes());
        o.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        o.extend_from_slice(self.addr.as_bytes());
        o.extend_from_slice(b"\r\n");
        for (k, v) in headers {
            o.extend_from_slice(k.as_bytes());
            o.extend_from_slice(b": ");
            o.extend_from_slice(v.as_bytes());
            o.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || method != "GET" {
            o.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        o.extend_from_slice(b"\r\n");
        o.extend_from_slice(body);
        s.get_mut().write_all(&self.out).await.map_err(|_| "io")?;
        read_response(s, &mut self.line, method == "HEAD").await
    }
}

/// Reads one response from `r`; also returns whether the connection may be reused.
pub async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    head: bool,
) -> Result<(Response, bool), &'static str> {
    let mut resp = Response::default();
    read_line(r, line).await?;
    // "HTTP/1.1 200 OK"
    let status_line = std::str::from_utf8(line).map_err(|_| "protocol")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err("protocol");
    }
    resp.status = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or("protocol")?;
    let mut keep = version == "HTTP/1.1";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut headers = 0;
    loop {
        read_line(r, line).await?;
        if line.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err("protocol");
        }
        let text = std::str::from_utf8(line).map_err(|_| "protocol")?;
        let (name, value) = text.split_once(':').ok_or("protocol")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| "protocol")?;
            if n > MAX_BODY {
                return Err("protocol");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep = false;
            } else if v.contains("keep-alive") {
                keep = true;
            }
        } else if name.eq_ignore_ascii_case("x-ringlab-context") {
            resp.context = Some(value.to_string());
        }
    }
    let bodiless = head || resp.status < 200 || resp.status == 204 || resp.status == 304;
    if bodiless {
        return Ok((resp, keep));
    }
    if chunked {
        loop {
            read_line(r, line).await?;
            let size = std::str::from_utf8(line).map_err(|_| "protocol")?;
            let size = size.split(';').next().unwrap_or_default().trim();
            let n = usize::from_str_radix(size, 16).map_err(|_| "protocol")?;
            if n == 0 {
                // Trailers, then the final empty line.
                loop {
                    read_line(r, line).await?;
                    if line.is_empty() {
                        break;
                    }
                }
                break;
            }
            if resp.body.len() + n > MAX_BODY {
                return Err("protocol");
            }
            let start = resp.body.len();
            resp.body.resize(start + n, 0);
            r.read_exact(&mut resp.body[start..])
                .await
                .map_err(|_| "io")?;
            read_line(r, line).await?;
            if !line.is_empty() {
                return Err("protocol");
            }
        }
    } else if let Some(n) = length {
        resp.body.resize(n, 0);
        r.read_exact(&mut resp.body).await.map_err(|_| "io")?;
    } else {
        // No length: the body runs to the end of the connection.
        (&mut *r)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut resp.body)
            .await
            .map_err(|_| "io")?;
        if resp.body.len() > MAX_BODY {
            return Err("protocol");
        }
        keep = false;
    }
    Ok((resp, keep))
}

/// Reads one CRLF- (or LF-) terminated line into `line`, without the terminator.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> Result<(), &'static str> {
    line.clear();
    let n = (&mut *r)
        .take(MAX_LINE as u64)
        .read_until(b'\n', line)
        .await
        .map_err(|_| "io")?;
    if n == 0 {
        return Err("closed");
    }
    if line.last() != Some(&b'\n') {
        return Err("protocol");
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Result<(Response, bool), &'static str> {
        let mut r = tokio::io::BufReader::new(raw);
        read_response(&mut r, &mut Vec::new(), false).await
    }

    #[tokio::test]
    async fn responses_parse() {
        let (r, keep) =
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nX-Ringlab-Context: abc\r\n\r\nxyz")
                .await
                .unwrap();
        assert_eq!(
            (r.status, r.context.as_deref(), &r.body[..], keep),
            (200, Some("abc"), &b"xyz"[..], true)
        );
        let (r, keep) = parse(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        assert_eq!((r.status, r.body.len(), keep), (204, 0, false));
        let (r, _) = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(&r.body[..], b"abcde");
        let (r, keep) = parse(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
            .await
            .unwrap();
        assert_eq!((&r.body[..], keep), (&b"until the end"[..], false));
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        for raw in [
            &b""[..],
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
            b"HTTP/1.1 200 OK",
        ] {
            assert!(
                parse(raw).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(HttpConn::new("https://x:1", Duration::from_secs(1)).is_err());
        assert!(HttpConn::new("http://nohost", Duration::from_secs(1)).is_err());
    }
}
