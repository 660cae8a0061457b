//! The guest's init. See the library for what it does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cove_agent::{exec::Reaper, fdio::FdIo, init, server};

fn main() {
    let pid1 = std::process::id() == 1;
    if !pid1 && std::env::var_os(init::WARM_UP_ENV).is_some() {
        return;
    }
    // `COVE_FIRST_LINE=1` on the kernel command line (the kernel hands it to init's environment)
    // marks the moment init runs: the boot benchmark times plain QEMU to this line.
    if std::env::var_os("COVE_FIRST_LINE").is_some() {
        eprintln!("cove-agent: init started");
    }
    let kernel_boot_ms = init::uptime_ms();
    let t0 = Instant::now();
    let mut times = init::SetupTimes::default();
    let mut early_port = None;
    if pid1 {
        match init::setup(&mut times) {
            Ok(p) => early_port = p,
            Err(e) => {
                eprintln!("cove-agent: setup failed: {e}");
                std::thread::sleep(Duration::from_millis(200));
                init::power_off();
            }
        }
    }
    let setup_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    times.mark("runtime");
    rt.block_on(async move {
        let reaper = Reaper::start(pid1);
        times.mark("reaper");
        let fd = match early_port {
            Some(fd) => Ok(fd),
            // The port was not there yet: look again once the root thread has moved /dev and
            // /sys into the new root, so the lookup never sees them half-moved.
            None => {
                // A failed root stops the guest; the port lookup below then simply waits.
                let _ = init::wait_root();
                init::open_port()
            }
        };
        let port = match fd.and_then(|fd| FdIo::new(fd, false)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("cove-agent: {e}");
                if pid1 {
                    init::power_off();
                }
                std::process::exit(1);
            }
        };
        times.mark("port");
        let agent = Arc::new(server::Agent {
            reaper,
            started: t0,
            kernel_boot_ms,
            setup_ms,
            setup_steps: times.to_string(),
            pid1,
            table: Arc::default(),
        });
        // Nothing is printed until the host's hello is answered: under emulation every console
        // line costs the guest milliseconds (the UART interrupts per character).
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
