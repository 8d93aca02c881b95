//! The `berth` binary: parse arguments, load config, set up logging, run.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "A self-hosted single-node PaaS appliance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Print the version.
    Version,
    /// Supervise one container (started by the daemon, not by hand).
    #[command(hide = true)]
    Shim(ShimCli),
}

#[derive(clap::Args)]
struct ShimCli {
    #[arg(long)]
    id: String,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    runc_root: PathBuf,
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long)]
    oom_file: Option<PathBuf>,
    #[arg(long, default_value_t = 10 << 20)]
    log_max_bytes: u64,
    #[arg(long, default_value_t = 3)]
    log_files: u32,
    #[arg(long)]
    host_key: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (default /etc/berth/berth.toml; missing is fine unless given here).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dev mode: local state dir, unprivileged ports, no ACME.
    #[arg(long)]
    dev: bool,
    /// State directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// API and registry listener, e.g. 127.0.0.1:7420.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// Ingress HTTP listener.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Ingress HTTPS listener.
    #[arg(long)]
    https_listen: Option<SocketAddr>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().with_current_span(false).flatten_event(true).init();
    }
}

/// glibc raises its mmap threshold to the size of the largest block freed, so after
/// one argon2 hash (19 MiB) later hashes come from the heap and that memory stays
/// with the process for good. A fixed 1 MiB threshold keeps such large buffers in
/// mmap, which returns them to the kernel on free, while the registry's 512 KiB I/O
/// chunks stay on the heap and are reused without page faults. Eight arenas: with
/// two, the async workers and the pools' threads queued on the arena locks (a
/// quarter of the CPU under load, 18k against 26k req/s in `bench/api.sh`); the
/// memory more arenas hold after a burst goes back through the `memory-trim`
/// worker's `malloc_trim`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters; it runs before any other
    // thread exists, so nothing is allocating concurrently.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        // Keep up to 8 MiB of freed heap instead of handing it back and faulting it
        // in again for the next I/O chunk.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 8);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Shim(a) => {
            let code = berth::runtime::shim::run(berth::runtime::shim::ShimArgs {
                id: a.id,
                bundle: a.bundle,
                runc_root: a.runc_root,
                state_dir: a.state_dir,
                oom_file: a.oom_file,
                log_max_bytes: a.log_max_bytes,
                log_files: a.log_files,
                host_key: a.host_key,
            });
            std::process::exit(code);
        }
        Command::Version => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve(args) => {
            init_logging();
            let flags = berth::config::Overrides {
                dev: args.dev,
                data_dir: args.data_dir,
                api_listen: args.api_listen,
                http_listen: args.http_listen,
                https_listen: args.https_listen,
            };
            let config = berth::Config::load(args.config.as_deref(), std::env::vars(), &flags).context("config")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .worker_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(4))
                .max_blocking_threads(16)
                .build()
                .context("start async runtime")?;
            runtime.block_on(berth::run(config)).context("berth serve")?;
            Ok(())
        }
    }
}
