//! nftables in process: libnftables, the library Debian's `nft` tool is itself a front end of
//! (package libnftables1, installed with nftables), loaded at run time (`libloading`) when
//! present. A ruleset is then applied without a process per sandbox: the fork, exec and
//! start-up of `nft` were most of what a network added to a create. Without the library, [`crate::rules::apply`] runs
//! `nft -f -` as before.
//!
//! Written here rather than taken from a crate: the `nftables` crate drives the `nft` program
//! (JSON over a pipe, still a process each time), and `nftnl`/`rustables` build rules object by
//! object over netlink, which would replace Cove's one-text ruleset (checked by `nft` itself in
//! the tests) with a second description of the same rules. libnftables takes that text as it is.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

type New = unsafe extern "C" fn(u32) -> *mut c_void;
type Free = unsafe extern "C" fn(*mut c_void);
type Flag = unsafe extern "C" fn(*mut c_void) -> c_int;
type DryRun = unsafe extern "C" fn(*mut c_void, bool);
type Run = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type Text = unsafe extern "C" fn(*mut c_void) -> *const c_char;

/// The library's entry points (libnftables.h), resolved once; the library stays loaded for the
/// life of the process, so the function pointers stay valid.
struct Lib {
    _lib: libloading::Library,
    new: New,
    free: Free,
    buffer_output: Flag,
    buffer_error: Flag,
    dry_run: DryRun,
    run: Run,
    error: Text,
}

fn lib() -> Option<&'static Lib> {
    static LIB: OnceLock<Option<Lib>> = OnceLock::new();
    LIB.get_or_init(|| {
        if std::env::var_os("COVE_NFT").is_some() {
            // An operator's own nft program is asked for: use it.
            return None;
        }
        // SAFETY: loading a system library by its soname runs its initialisers, which
        // libnftables has none of that could harm this process; each symbol below is the
        // libnftables function of that name, whose C signature the type it is read as spells
        // (libnftables.h, stable since nftables 0.9).
        unsafe {
            let lib = libloading::Library::new("libnftables.so.1").ok()?;
            Some(Lib {
                new: *lib.get::<New>(b"nft_ctx_new\0").ok()?,
                free: *lib.get::<Free>(b"nft_ctx_free\0").ok()?,
                buffer_output: *lib.get::<Flag>(b"nft_ctx_buffer_output\0").ok()?,
                buffer_error: *lib.get::<Flag>(b"nft_ctx_buffer_error\0").ok()?,
                dry_run: *lib.get::<DryRun>(b"nft_ctx_set_dry_run\0").ok()?,
                run: *lib.get::<Run>(b"nft_run_cmd_from_buffer\0").ok()?,
                error: *lib.get::<Text>(b"nft_ctx_get_error_buffer\0").ok()?,
                _lib: lib,
            })
        }
    })
    .as_ref()
}

/// Applies `ruleset` (or only checks it) in the calling thread's network namespace, as one
/// transaction, like `nft -f`; `None` when the library is not there.
pub(crate) fn run(ruleset: &str, check_only: bool) -> Option<Result<(), String>> {
    let l = lib()?;
    let Ok(text) = CString::new(ruleset) else {
        return Some(Err("the ruleset holds a NUL byte".into()));
    };
    // SAFETY: a context made, used on this thread only and freed here; the buffers it returns
    // are its own and read before it is freed.
    unsafe {
        let ctx = (l.new)(0);
        if ctx.is_null() {
            return Some(Err("nft_ctx_new failed".into()));
        }
        (l.buffer_output)(ctx);
        (l.buffer_error)(ctx);
        (l.dry_run)(ctx, check_only);
        let rc = (l.run)(ctx, text.as_ptr());
        let out = if rc == 0 {
            Ok(())
        } else {
            let e = (l.error)(ctx);
            Err(if e.is_null() {
                format!("libnftables answered {rc}")
            } else {
                CStr::from_ptr(e).to_string_lossy().trim().to_string()
            })
        };
        (l.free)(ctx);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_library_is_there_and_reads_rulesets() {
        // guest/setup.sh installs nftables, which brings the library.
        assert!(super::lib().is_some(), "libnftables.so.1 not found");
        assert_eq!(
            super::run(
                "table inet cove_check {\n chain c {\n accept\n }\n}\n",
                true
            ),
            Some(Ok(()))
        );
        let bad = super::run(
            "table inet cove_check {\n chain c {\n nonsense\n }\n}\n",
            true,
        );
        assert!(
            matches!(&bad, Some(Err(e)) if e.contains("syntax error")),
            "{bad:?}"
        );
    }
}
