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
    /// Local commands for the sysadmin on the host (users, backups, garbage collection).
    #[command(subcommand)]
    Admin(AdminCommand),
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

/// Where the state dir is: `--data-dir`, else the config's `data_dir`.
#[derive(clap::Args)]
struct StateArgs {
    /// Config file whose `data_dir` is used (default /etc/berth/berth.toml; missing is fine unless given here).
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory (overrides the config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl StateArgs {
    fn config(&self) -> anyhow::Result<berth::Config> {
        let flags = berth::config::Overrides { data_dir: self.data_dir.clone(), ..Default::default() };
        berth::Config::load(self.config.as_deref(), std::env::vars(), &flags).context("config")
    }
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user; the password is read from stdin (or --password-file). Safe while the daemon runs.
    CreateUser {
        #[arg(long)]
        username: String,
        /// Make the user a super-admin (the first one also spends the bootstrap token).
        #[arg(long)]
        super_admin: bool,
        /// Read the password from the first line of this file instead of stdin.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Set a user's password (read from stdin or --password-file) and end their sessions.
    ResetPassword {
        #[arg(long)]
        username: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Write a consistent online backup (database, host key, registry manifests) to one tar.zst file.
    Backup {
        #[arg(long)]
        output: PathBuf,
        /// Include every registry blob (layers, configs, the layer cache).
        #[arg(long)]
        with_blobs: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Restore a backup into an empty or missing state dir, after verifying all of it.
    Restore {
        #[arg(long)]
        input: PathBuf,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Garbage-collect the registry, the layer cache and unpacked layers (only with no daemon running).
    Gc {
        #[command(flatten)]
        state: StateArgs,
    },
}

fn admin(cmd: AdminCommand) -> anyhow::Result<()> {
    use berth::admin;
    match cmd {
        AdminCommand::CreateUser { username, super_admin, password_file, state } => {
            let dir = state.config()?.data_dir;
            let password = admin::read_password(password_file.as_deref())?;
            let user = admin::create_user(&dir, &username, &password, super_admin)?;
            let role = if user.super_admin { "super-admin" } else { "user" };
            eprintln!("created {role} {} ({})", user.username, user.id);
        }
        AdminCommand::ResetPassword { username, password_file, state } => {
            let dir = state.config()?.data_dir;
            let password = admin::read_password(password_file.as_deref())?;
            let ended = admin::reset_password(&dir, &username, &password)?;
            eprintln!("password of {username} set; {ended} sessions ended (API tokens are kept)");
        }
        AdminCommand::Backup { output, with_blobs, state } => {
            let dir = state.config()?.data_dir;
            let s = admin::archive::backup(&dir, &output, with_blobs)?;
            eprintln!(
                "backup done: {} users, {} projects, {} blobs, {} bytes{}",
                s.users,
                s.projects,
                s.blobs,
                s.bytes,
                if s.missing_blobs > 0 {
                    format!(" ({} collected meanwhile, left out)", s.missing_blobs)
                } else {
                    String::new()
                }
            );
        }
        AdminCommand::Restore { input, state } => {
            let dir = state.config()?.data_dir;
            let m = admin::archive::restore(&input, &dir)?;
            eprintln!(
                "restored {} into {} (berth {}, schema {}, {} entries)",
                input.display(),
                dir.display(),
                m.berth_version,
                m.schema_version,
                m.entries.len()
            );
        }
        AdminCommand::Gc { state } => {
            let config = state.config()?;
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().context("start async runtime")?;
            runtime.block_on(admin::gc(&config))?;
        }
    }
    Ok(())
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
        Command::Admin(cmd) => admin(cmd),
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
