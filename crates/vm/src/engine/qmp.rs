//! A small QMP client: one command at a time, events skipped.
//!
//! Written here rather than taken from a crate: the published QMP crates are either synchronous
//! or pull in a whole generated schema, and cove-vm needs six commands.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// A QMP command that failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed.
    #[error("QMP connection")]
    Io(#[from] std::io::Error),
    /// QEMU answered with an error.
    #[error("QEMU refused {command}: {message}")]
    Refused {
        /// The command.
        command: String,
        /// QEMU's description.
        message: String,
    },
    /// QEMU closed the connection.
    #[error("QEMU closed its QMP connection")]
    Closed,
    /// No answer in time.
    #[error("QEMU did not answer {0} in time")]
    Timeout(String),
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
    /// Each command carries an id; an answer with another id (a late one, after a timeout)
    /// is skipped, never taken for the current command's.
    next_id: u64,
    /// The running QEMU's version, as its greeting states it.
    version: Option<String>,
}

impl Qmp {
    /// Connects (waiting up to 10 s for the socket) and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match UnixStream::connect(path).await {
                Ok(c) => break c,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (r, w) = conn.into_split();
        let mut q = Self {
            lines: BufReader::new(r).lines(),
            w,
            next_id: 0,
            version: None,
        };
        // The greeting, then capabilities.
        let greeting = q.lines.next_line().await?.ok_or(QmpError::Closed)?;
        q.version = serde_json::from_str::<Value>(&greeting)
            .ok()
            .and_then(|g| version_line(&g["QMP"]["version"]));
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    /// The running QEMU's version in the words of `qemu --version`'s first line.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).expect("serializes");
        line.push(b'\n');
        self.w.write_all(&line).await?;
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let Some(l) = self.lines.next_line().await? else {
                    return Err(QmpError::Closed);
                };
                let Ok(v) = serde_json::from_str::<Value>(&l) else {
                    continue;
                };
                if v.get("id").and_then(Value::as_u64) != Some(id) {
                    continue; // an event, or a late answer to an earlier command
                }
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = v.get("error") {
                    return Err(QmpError::Refused {
                        command: command.to_string(),
                        message: e["desc"].as_str().unwrap_or("unknown error").to_string(),
                    });
                }
                // Anything else is an event.
            }
        })
        .await;
        answer.map_err(|_| QmpError::Timeout(command.to_string()))?
    }

    /// Polls `query-migrate` until the migration ends; returns its final status.
    pub async fn wait_migration(&mut self) -> Result<String, QmpError> {
        loop {
            let v = self.execute("query-migrate", None).await?;
            let status = v["status"].as_str().unwrap_or("none").to_string();
            match status.as_str() {
                "completed" => return Ok(status),
                "failed" | "cancelled" => {
                    return Err(QmpError::Refused {
                        command: "migrate".into(),
                        message: v["error-desc"].as_str().unwrap_or(&status).to_string(),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
}

/// `qemu --version`'s first line from QMP's version object (`{"qemu": {"major", "minor",
/// "micro"}, "package"}`): "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)",
/// the package in parentheses only when there is one, as QEMU prints it.
pub fn version_line(v: &Value) -> Option<String> {
    let n = |k: &str| v["qemu"][k].as_u64();
    let mut line = format!(
        "QEMU emulator version {}.{}.{}",
        n("major")?,
        n("minor")?,
        n("micro")?
    );
    match v["package"].as_str() {
        Some(p) if !p.is_empty() => line.push_str(&format!(" ({p})")),
        _ => {}
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lines_read_as_qemu_prints_them() {
        // A greeting's version object as Debian's QEMU 7.2 sends it, and `--version`'s line.
        let v = json!({"qemu": {"micro": 22, "minor": 2, "major": 7},
                       "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"});
        assert_eq!(
            version_line(&v).unwrap(),
            "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
        );
        let bare = json!({"qemu": {"micro": 0, "minor": 0, "major": 9}, "package": ""});
        assert_eq!(version_line(&bare).unwrap(), "QEMU emulator version 9.0.0");
        assert!(version_line(&json!({"qemu": {"major": 9}})).is_none());
    }
}
