//! The CLI clients: `ringlab put|get|delete|status|leave|remove --node http://HOST:PORT`.
//! They speak the HTTP API and print its JSON errors plainly; any failure exits
//! non-zero.

use anyhow::Context;
use base64::Engine as _;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::ExitCode;

/// The node to talk to.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArg {
    /// HTTP address of any node.
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    pub node: String,
}

/// `ringlab put`.
#[derive(clap::Args, Debug, Clone)]
pub struct PutArgs {
    /// Key (any UTF-8 text; sent percent-encoded).
    pub key: String,
    /// Value; `-` reads it from stdin.
    pub value: String,
    /// Context from a previous get or put (omit for a blind write, which may create siblings).
    #[arg(long)]
    pub context: Option<String>,
    /// Write quorum for this request (1..=N).
    #[arg(long)]
    pub w: Option<usize>,
    #[command(flatten)]
    pub node: NodeArg,
}

/// `ringlab get`.
#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// Key.
    pub key: String,
    /// Read quorum for this request (1..=N).
    #[arg(long)]
    pub r: Option<usize>,
    #[command(flatten)]
    pub node: NodeArg,
}

/// `ringlab delete`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeleteArgs {
    /// Key.
    pub key: String,
    /// Context from a previous get (what the delete covers).
    #[arg(long)]
    pub context: Option<String>,
    /// Write quorum for this request (1..=N).
    #[arg(long)]
    pub w: Option<usize>,
    #[command(flatten)]
    pub node: NodeArg,
}

/// `ringlab remove`.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoveArgs {
    /// Id of the dead member to take out of the ring (e.g. `D`).
    pub id: String,
    /// HTTP address of a running node (not the one removed).
    #[command(flatten)]
    pub node: NodeArg,
}

/// Percent-encodes every byte outside the unreserved set.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn url(node: &str, key: &str, param: Option<(&str, usize)>) -> String {
    let base = node.trim_end_matches('/');
    let mut u = format!("{base}/kv/{}", encode_key(key));
    if let Some((name, v)) = param {
        u.push_str(&format!("?{name}={v}"));
    }
    u
}

fn http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")
}

async fn send(node: &str, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    req.send()
        .await
        .with_context(|| format!("cannot reach node {node}"))
}

/// Prints the API's JSON error (or the raw body) and returns the failure code.
async fn report_error(r: reqwest::Response) -> ExitCode {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("error").is_some() => {
            let kind = v["error"].as_str().unwrap_or("error");
            let msg = v["message"].as_str().unwrap_or("");
            let mut line = format!("error ({}): {kind}: {msg}", status.as_u16());
            if let (Some(n), Some(g)) = (v["needed"].as_u64(), v["got"].as_u64()) {
                line.push_str(&format!(" (needed {n}, got {g})"));
            }
            eprintln!("{line}");
        }
        _ => eprintln!("error ({status}): {}", text.trim()),
    }
    ExitCode::FAILURE
}

fn context_of(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("x-ringlab-context")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `ringlab put`.
pub async fn put(a: PutArgs) -> anyhow::Result<ExitCode> {
    let value = if a.value == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("cannot read the value from stdin")?;
        b
    } else {
        a.value.into_bytes()
    };
    let mut req = http()?
        .put(url(&a.node.node, &a.key, a.w.map(|w| ("w", w))))
        .body(value);
    if let Some(c) = &a.context {
        req = req.header("X-Ringlab-Context", c);
    }
    let r = send(&a.node.node, req).await?;
    if !r.status().is_success() {
        return Ok(report_error(r).await);
    }
    crate::outln!("{}", context_of(&r).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// `ringlab get`.
pub async fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    let req = http()?.get(url(&a.node.node, &a.key, a.r.map(|r| ("r", r))));
    let r = send(&a.node.node, req).await?;
    let ctx = context_of(&r);
    match r.status().as_u16() {
        200 => {
            let body = r.bytes().await.context("reading the value")?;
            let mut out = std::io::stdout();
            out.write_all(&body)?;
            if !body.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            if let Some(c) = ctx {
                eprintln!("context: {c}");
            }
            Ok(ExitCode::SUCCESS)
        }
        300 => {
            let v: Value = r.json().await.context("reading the siblings")?;
            let siblings = v["siblings"].as_array().cloned().unwrap_or_default();
            eprintln!(
                "{} siblings (write with this context to resolve them)",
                siblings.len()
            );
            for (i, s) in siblings.iter().enumerate() {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(s["value"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                crate::outln!("[{i}] {}", String::from_utf8_lossy(&raw));
            }
            eprintln!("context: {}", v["context"].as_str().unwrap_or(""));
            Ok(ExitCode::SUCCESS)
        }
        404 => {
            eprintln!("not found");
            if let Some(c) = ctx {
                eprintln!("context: {c}");
            }
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(report_error(r).await),
    }
}

/// `ringlab delete`.
pub async fn delete(a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut req = http()?.delete(url(&a.node.node, &a.key, a.w.map(|w| ("w", w))));
    if let Some(c) = &a.context {
        req = req.header("X-Ringlab-Context", c);
    }
    let r = send(&a.node.node, req).await?;
    if !r.status().is_success() {
        return Ok(report_error(r).await);
    }
    crate::outln!("deleted");
    Ok(ExitCode::SUCCESS)
}

/// `ringlab leave`: decommissions the node (`POST /admin/leave`).
pub async fn leave(a: NodeArg) -> anyhow::Result<ExitCode> {
    admin(&a.node, "leave").await
}

/// `ringlab remove ID`: takes a dead member out of the ring (`POST /admin/remove/ID`).
pub async fn remove(a: RemoveArgs) -> anyhow::Result<ExitCode> {
    admin(&a.node.node, &format!("remove/{}", encode_key(&a.id))).await
}

async fn admin(node: &str, path: &str) -> anyhow::Result<ExitCode> {
    let base = node.trim_end_matches('/');
    let r = send(node, http()?.post(format!("{base}/admin/{path}"))).await?;
    if !r.status().is_success() {
        return Ok(report_error(r).await);
    }
    let v: Value = r.json().await.context("reading the answer")?;
    crate::outln!("{}", v["message"].as_str().unwrap_or("accepted"));
    Ok(ExitCode::SUCCESS)
}

/// `ringlab status`: the node's `/cluster`, as a table.
pub async fn status(a: NodeArg) -> anyhow::Result<ExitCode> {
    let base = a.node.trim_end_matches('/');
    let r = send(&a.node, http()?.get(format!("{base}/cluster"))).await?;
    if !r.status().is_success() {
        return Ok(report_error(r).await);
    }
    let v: Value = r.json().await.context("reading /cluster")?;
    crate::out!("{}", format_status(&v));
    Ok(ExitCode::SUCCESS)
}

/// The table `ringlab status` prints.
pub fn format_status(v: &Value) -> String {
    let partitions: Vec<&str> = v["partitions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = format!(
        "node {}  ring v{}  n={}  partitions={}",
        v["node"].as_str().unwrap_or("?"),
        v["ring_version"],
        v["n"],
        partitions.len()
    );
    if let Some(p) = v["pending_ring_version"].as_u64() {
        out.push_str(&format!("  (moving to ring v{p})"));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<6} {:<12} {:<6} {:>4} {:>6}  {:<22} {}\n",
        "ID", "STATUS", "ZONE", "GEN", "PARTS", "PEER", "HTTP"
    ));
    for m in v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let id = m["id"].as_str().unwrap_or("?");
        let owned = partitions.iter().filter(|p| **p == id).count();
        out.push_str(&format!(
            "{:<6} {:<12} {:<6} {:>4} {:>6}  {:<22} {}\n",
            id,
            m["status"].as_str().unwrap_or("?"),
            m["zone"].as_str().unwrap_or(""),
            m["generation"],
            owned,
            m["peer_addr"].as_str().unwrap_or(""),
            m["http_addr"].as_str().unwrap_or(""),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(encode_key("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_key("é"), "%C3%A9");
        assert_eq!(
            url("http://h:1/", "k", Some(("r", 2))),
            "http://h:1/kv/k?r=2"
        );
    }

    #[test]
    fn status_table_counts_partitions() {
        let v = serde_json::json!({
            "node": "A", "ring_version": 3, "n": 3,
            "partitions": ["A", "B", "A", "C"],
            "nodes": [
                {"id": "A", "status": "up", "zone": "z1", "generation": 2,
                 "peer_addr": "127.0.0.1:7001", "http_addr": "127.0.0.1:8001"},
                {"id": "B", "status": "unreachable", "zone": "z2", "generation": 1,
                 "peer_addr": "127.0.0.1:7002", "http_addr": "127.0.0.1:8002"}
            ]
        });
        let t = format_status(&v);
        assert!(t.starts_with("node A  ring v3  n=3  partitions=4\n"), "{t}");
        let a = t.lines().nth(2).unwrap();
        assert!(a.starts_with("A      up"), "{a}");
        assert!(a.contains("     2  127.0.0.1:7001"), "{a}");
        assert!(t.lines().nth(3).unwrap().contains("unreachable"));
    }
}
