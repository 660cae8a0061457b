//! The local terminal: size and raw mode for `-t`.

use std::sync::Mutex;

use cove_protocol::TtySize;
use nix::sys::termios::{self, SetArg, Termios};

static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// This terminal's size, if stdout or stdin is one.
pub fn size() -> Option<TtySize> {
    for fd in [1, 0] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the valid pointer.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some(TtySize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            });
        }
    }
    None
}

/// Raw mode on stdin while alive; the previous mode comes back on drop (or [`restore`]).
#[derive(Debug)]
pub struct RawMode;

impl RawMode {
    /// Enters raw mode if stdin is a terminal.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        *SAVED.lock().expect("lock") = Some(saved);
        Some(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back as it was, if raw mode is on.
pub fn restore() {
    if let Some(t) = SAVED.lock().expect("lock").take() {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t);
    }
}
