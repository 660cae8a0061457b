//! The guest's init. See the library for what it does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cove_agent::{exec::Reaper, fdio::FdIo, init, server};

fn main() {
    let pid1 = std::process::id() == 1;
    let kernel_boot_ms = init::uptime_ms();
    let t0 = Instant::now();
    if pid1 && let Err(e) = init::setup() {
        eprintln!("cove-agent: setup failed: {e}");
        std::thread::sleep(Duration::from_millis(200));
        init::power_off();
    }
    let setup_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let agent = Arc::new(server::Agent {
            reaper: Reaper::start(pid1),
            started: t0,
            kernel_boot_ms,
            setup_ms,
            pid1,
        });
        let port = match init::open_port().and_then(|fd| FdIo::new(fd, false)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("cove-agent: {e}");
                if pid1 {
                    init::power_off();
                }
                std::process::exit(1);
            }
        };
        eprintln!("cove-agent: ready after {kernel_boot_ms} ms of kernel and {setup_ms} ms of setup");
        loop {
            // The host may disconnect (its supervisor restarts, a snapshot is taken); the port
            // reads end of file until it is back, then the next connection says hello again.
            if server::serve(agent.clone(), port.clone(), port.clone()).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Shutdown was asked: the power-off task ends the guest.
        std::future::pending::<()>().await;
    });
}
