//! The `rooms-sync` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: every request allocates and frees a few short-lived
/// buffers (hyper's 8 KiB read buffer among them), and glibc's malloc, free and consolidation
/// were 8% of the service's CPU samples while it answered Graph's validation echo
/// (docs/benchmarks.md, fifth round).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    rooms_sync::cli::main()
}
