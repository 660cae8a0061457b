//! How `cove image …` shows images: pull progress (bars on a terminal, plain lines otherwise)
//! and the `ls` table.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use cove_image::{Event, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn short(digest: &str) -> &str {
    let h = digest.strip_prefix("sha256:").unwrap_or(digest);
    &h[..12.min(h.len())]
}

/// Bars on a terminal, plain lines otherwise (logs, CI), nothing with `--quiet`.
pub(crate) struct Display {
    mode: Mode,
    bars: Mutex<HashMap<String, ProgressBar>>,
    multi: MultiProgress,
}

#[derive(PartialEq, Eq)]
enum Mode {
    Bars,
    Lines,
    Quiet,
}

impl Display {
    pub(crate) fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        };
        Self {
            mode,
            bars: Mutex::new(HashMap::new()),
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        }
    }

    fn bar(&self, key: &str, len: u64, prefix: String) -> ProgressBar {
        let mut bars = self.bars.lock().expect("bars");
        bars.entry(key.to_string())
            .or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(len));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>20} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                b.set_prefix(prefix);
                b
            })
            .clone()
    }

    fn line(&self, s: String) {
        if self.mode == Mode::Lines {
            eprintln!("{s}");
        }
    }
}

impl Progress for Display {
    fn event(&self, ev: &Event) {
        if self.mode == Mode::Quiet {
            return;
        }
        let bars = self.mode == Mode::Bars;
        match ev {
            Event::Resolved {
                digest,
                layers,
                bytes,
            } => self.line(format!(
                "image {}: {layers} layers, {}",
                short(digest),
                mb(*bytes)
            )),
            Event::Installed { digest } => {
                self.line(format!("image {}: already installed", short(digest)));
            }
            Event::LayerCached { digest, size } => {
                self.line(format!("layer {}: cached ({})", short(digest), mb(*size)));
            }
            Event::Download { digest, size } if bars => {
                self.bar(digest, *size, format!("layer {}", short(digest)));
            }
            Event::Download { digest, size } => {
                self.line(format!(
                    "layer {}: downloading {}",
                    short(digest),
                    mb(*size)
                ));
            }
            Event::Downloaded { digest, done } if bars => {
                self.bar(digest, 0, String::new()).set_position(*done);
            }
            Event::Downloaded { .. } => {}
            Event::Unpack {
                index,
                of,
                done,
                size,
            } if bars => {
                let b = self.bar(
                    &format!("unpack-{index}"),
                    *size,
                    format!("unpack {}/{of}", index + 1),
                );
                b.set_position(*done);
                if done == size {
                    b.finish();
                }
            }
            Event::Unpack {
                index,
                of,
                done: 0,
                size,
            } => self.line(format!(
                "unpacking layer {}/{of} ({})",
                index + 1,
                mb(*size)
            )),
            Event::Unpack { .. } => {}
            Event::Disk { bytes } => {
                if bars {
                    let _ = self
                        .multi
                        .println(format!("writing the disk ({})", mb(*bytes)));
                }
                self.line(format!("writing the disk ({})", mb(*bytes)));
            }
            Event::Done { digest, secs } => {
                for b in self.bars.lock().expect("bars").values() {
                    b.finish();
                }
                let msg = format!("image {}: installed in {secs:.1} s", short(digest));
                if bars {
                    let _ = self.multi.println(msg);
                } else {
                    self.line(msg);
                }
            }
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        if self.mode == Mode::Bars {
            let _ = self.multi.clear();
        }
    }
}

/// One image of `cove image ls`.
pub(crate) struct ImageRow<'a> {
    pub names: &'a [String],
    pub digest: &'a str,
    pub bytes: u64,
    pub users: usize,
    pub created_at: i64,
}

/// The `cove image ls` table (local and remote alike): a line per name.
pub(crate) fn print_images<'a>(rows: impl Iterator<Item = ImageRow<'a>>) {
    println!(
        "{:<40}  {:<12}  {:>9}  {:>6}  CREATED",
        "NAME", "ID", "SIZE", "USERS"
    );
    let none = ["<none>".to_string()];
    for i in rows {
        let names = if i.names.is_empty() {
            &none[..]
        } else {
            i.names
        };
        let hex = i.digest.strip_prefix("sha256:").unwrap_or(i.digest);
        for n in names {
            println!(
                "{:<40}  {:<12}  {:>9}  {:>6}  {}",
                n,
                &hex[..12.min(hex.len())],
                mb(i.bytes),
                i.users,
                crate::ago(i.created_at)
            );
        }
    }
}
