//! The `doppel` command line.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use doppel::config::DataConfig;
use doppel::serve::{self, ServeConfig};
use doppel::service::audit::record_command_line;
use doppel::service::convert::{self, Outcome, TreeConverted};
use doppel::service::inventory::{self, NewContainer};
use doppel::{auth, store};

/// mimalloc instead of glibc's allocator: a copy request allocates a lot of small things
/// (headers, JSON, rows), and glibc's malloc and free were about a tenth of doppel's CPU in a
/// burst (perf). `make load`, 4 interleaved runs: POST p99 21.2 -> 18.7 ms (medians),
/// peak memory 40 -> 70 MB. Built without transparent huge pages (`no_thp`): each fresh
/// 2 MiB page is zeroed whole when first touched, which was 45 % of a no-op sync of the
/// reference tree (perf); `make bench`'s no-op sync, `perf stat -r 10`: 0.116 -> 0.106 s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "doppel",
    version,
    about = "Copy containers into other projects and servers, and keep the copies in sync."
)]
struct Cli {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    serve: ServeArgs,
    /// Log as JSON lines instead of readable text.
    #[arg(long, global = true, env = "DOPPEL_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args)]
#[command(next_help_heading = "Where the data is (every subcommand)")]
struct DataArgs {
    /// Where doppel keeps its database and the storage roots of its servers.
    #[arg(long, global = true, env = "DOPPEL_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Database URL; default: a SQLite file in the data dir.
    #[arg(long, global = true, env = "DOPPEL_DATABASE_URL")]
    database_url: Option<String>,
    /// Lay the container trees this host makes (imports, copies, snapshots) down as image
    /// trees of SIZE (e.g. 64G): an XFS filesystem in a sparse file of the storage root,
    /// loop-mounted at the tree, so that a copy of one on its server is a clone of one
    /// file, whatever its number of files. Where the storage root's filesystem has no
    /// reflinks (XFS with reflink=1), trees stay directories. Each image tree holds up to
    /// SIZE, and takes on the host only what it holds (the file is sparse)
    #[arg(long, global = true, env = "DOPPEL_IMAGE_TREES", value_name = "SIZE",
        value_parser = parse_image_size)]
    image_trees: Option<u64>,
}

/// `--image-trees`: a size as `doppel::config::parse_size` reads one, at least 1G (XFS
/// wants room for its log) and at most 1048576G (a pebibyte).
fn parse_image_size(text: &str) -> Result<u64, String> {
    match doppel::config::parse_size(text) {
        Some(size) if size < 1 << 30 => Err(format!("{text:?}: at least 1G")),
        Some(size) if size > 1 << 50 => Err(format!("{text:?}: at most 1048576G")),
        Some(size) => Ok(size),
        None => Err(format!("{text:?}: a size such as 64G (K, M or G)")),
    }
}

/// Global (so that `doppel --addr X` serves without the word `serve`), and shown apart in
/// every subcommand's help, under their own heading, after the subcommand's own options.
#[derive(Args)]
#[command(next_help_heading = "Options of serve (doppel [serve])")]
struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        global = true,
        env = "DOPPEL_ADDR",
        default_value = "127.0.0.1:3000"
    )]
    addr: SocketAddr,
    /// Do not seed demo data on a first start.
    #[arg(long, global = true, env = "DOPPEL_NO_DEMO")]
    no_demo: bool,
    /// How many copy and sync jobs run at once.
    #[arg(long, global = true, env = "DOPPEL_MAX_JOBS", default_value_t = 2)]
    max_jobs: usize,
    /// How many of them at once on one target server.
    #[arg(
        long,
        global = true,
        env = "DOPPEL_MAX_JOBS_PER_SERVER",
        default_value_t = 1
    )]
    max_jobs_per_server: usize,
    /// The built console (`make build` writes it to target/site).
    #[arg(
        long,
        global = true,
        env = "LEPTOS_SITE_ROOT",
        default_value = "target/site"
    )]
    site_root: PathBuf,
    /// Seconds a client may take to send a request's head (or, kept alive, the next one).
    #[arg(
        long,
        global = true,
        env = "DOPPEL_HEADER_TIMEOUT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    header_timeout: u64,
    /// How many client connections are served at once (event streams included).
    #[arg(
        long,
        global = true,
        env = "DOPPEL_MAX_CONNECTIONS",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    max_connections: u64,
    /// Event streams one user may have open at once.
    #[arg(long, global = true, env = "DOPPEL_MAX_STREAMS_PER_USER", default_value_t = 32,
        value_parser = clap::value_parser!(u64).range(1..))]
    max_streams_per_user: u64,
    /// Copy and sync jobs one user may have queued or running at once.
    #[arg(long, global = true, env = "DOPPEL_MAX_QUEUED_JOBS_PER_USER", default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..))]
    max_queued_jobs_per_user: u64,
    /// Copy and sync jobs one project may have queued or running at once.
    #[arg(long, global = true, env = "DOPPEL_MAX_QUEUED_JOBS_PER_PROJECT", default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(1..))]
    max_queued_jobs_per_project: u64,
    /// Do not run containers (they stay stopped, saying why); otherwise doppel runs them
    /// with runc when it is root and runc, ip and nft are installed.
    #[arg(long, global = true, env = "DOPPEL_NO_RUNTIME")]
    no_runtime: bool,
    /// The IPv4 addresses containers' networks are taken from, a /24 per network; no other
    /// interface of this host may use them.
    #[arg(long, global = true, env = "DOPPEL_CONTAINER_NETWORK",
        default_value = doppel::serve::RuntimeConfig::DEFAULT_NETWORK,
        value_parser = doppel::runtime::Ipv4Net::parse)]
    container_network: doppel::runtime::Ipv4Net,
    /// Seconds a job waits for an offline server (another host) it needs before it fails.
    #[arg(long, global = true, env = "DOPPEL_SERVER_WAIT", default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..))]
    server_wait: u64,
    /// Where other hosts join as servers (`doppel agent join https://ADDR TOKEN`), over TLS
    /// with this control plane's certificate; e.g. 0.0.0.0:7443. Unset: no host can join.
    #[arg(long, global = true, env = "DOPPEL_AGENTS_ADDR")]
    agents_addr: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum ServerCommand {
    /// A server on another host: prints the one-time token its host joins with (good for
    /// an hour): `doppel agent join https://<this host's --agents-addr> TOKEN` there.
    Add {
        /// The new server's name.
        name: String,
        /// What it is, for the Servers page.
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Args)]
struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    /// Where the agent listens for its control plane.
    #[arg(long, env = "DOPPEL_AGENT_LISTEN", default_value = "0.0.0.0:7700")]
    listen: SocketAddr,
    /// host:port the control plane calls this agent at; default: the address it joins
    /// from, with the --listen port.
    #[arg(long, env = "DOPPEL_AGENT_ADVERTISE")]
    advertise: Option<String>,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Join a control plane with a token from `doppel server add`, then serve it.
    Join {
        /// The control plane's agent port, e.g. https://cp.example:7443.
        url: String,
        token: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Serve the console and the REST API (the default).
    Serve,
    /// Servers on other hosts.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Run this host as a server of a control plane (its data dir holds its storage root,
    /// its certificate and whom it joined).
    Agent(AgentArgs),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// Create a container whose root is a copy of DIR; prints its id.
    Import {
        /// The directory to copy (it is not changed).
        dir: PathBuf,
        /// The id of the project the container goes into.
        #[arg(long)]
        project: String,
        /// The id of the server (of this host) whose storage root gets the tree.
        #[arg(long)]
        server: String,
        /// The new container's name: letters, digits and hyphens.
        #[arg(long)]
        name: String,
    },
    /// Make the directory trees of this host's containers (and of their snapshots) image
    /// trees of --image-trees SIZE, so that their copies on their server are clones of one
    /// file (trees made before doppel ran with --image-trees stay directories until then).
    /// Run it while doppel is stopped; containers whose process runs are left as they are.
    /// Each tree is copied into its image, checked, then swapped with its directory; an
    /// interrupted conversion is put right by the next run or the next start of doppel.
    ConvertTrees {
        /// Only this container and its snapshots (its id or name; again for more).
        /// Default: every container whose tree is on this host.
        #[arg(long = "container", value_name = "ID_OR_NAME")]
        containers: Vec<String>,
    },
    /// Kill every container of this data dir and remove their network namespaces, veths
    /// and bridges (containers outlive doppel; this is how a test or a wiped host ends them).
    PurgeContainers,
    /// (Internal) The process that runs one container for doppel: `runc run` in its own
    /// session, its output into a bounded log, its end into the bundle's `exit`.
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        runc: PathBuf,
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new API token for a user, alone on stdout.
    Create {
        /// The user's name; the token has every right the user has.
        #[arg(long)]
        user: String,
        /// A label to recognise the token by.
        #[arg(long, default_value = "command line")]
        label: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Read a new password from stdin and set it (ends the user's console sessions).
    SetPassword {
        /// The user's name.
        name: String,
    },
    /// Make a user a platform admin, enabled: the way back when no admin is left.
    MakeAdmin {
        /// The user's name.
        name: String,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Shim {
        runc,
        state,
        bundle,
        id,
    }) = cli.command
    {
        // No async runtime, no logging setup: a small process that lives as long as its
        // container.
        let code = doppel::runtime::shim::run(&doppel::runtime::shim::ShimArgs {
            runc,
            state,
            bundle,
            id,
        });
        return ExitCode::from(code as u8);
    }
    init_logging(cli.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("doppel: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("doppel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data = DataConfig {
        data_dir: cli.data.data_dir,
        database_url: cli.data.database_url,
    };
    if let Some(size) = cli.data.image_trees {
        doppel::config::lay_trees_down_as_images(size);
    }
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::PurgeContainers = command {
        doppel::runtime::purge(&data.data_dir);
        eprintln!("removed every container of {}", data.data_dir.display());
        return Ok(());
    }
    // One serve or agent per data dir, held until this process ends.
    let role = match &command {
        Command::Serve => Some("serve"),
        Command::Agent(_) => Some("agent"),
        Command::ConvertTrees { .. } => Some("convert-trees"),
        _ => None,
    };
    let _data_dir_lock = match role {
        Some(role) => {
            Some(doppel::config::hold_data_dir(&data.data_dir, role).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    if let Command::Agent(args) = command {
        let cfg = doppel::agent::AgentConfig {
            data_dir: data.data_dir,
            listen: args.listen,
            advertise: args.advertise,
            no_runtime: cli.serve.no_runtime,
        };
        if let Some(AgentCommand::Join { url, token }) = args.command {
            let joined = doppel::agent::join(&cfg, &url, &token).await?;
            eprintln!(
                "joined as server {:?}; the control plane calls this host at {}",
                joined.server_name, joined.address
            );
        }
        return doppel::agent::run(&cfg, serve::shutdown_signal()).await;
    }
    if let Command::Serve = command {
        return serve::run(ServeConfig {
            addr: cli.serve.addr,
            data,
            demo: !cli.serve.no_demo,
            site_root: cli.serve.site_root,
            limits: doppel::Limits {
                global: cli.serve.max_jobs,
                per_server: cli.serve.max_jobs_per_server,
                per_user: cli.serve.max_queued_jobs_per_user,
                per_project: cli.serve.max_queued_jobs_per_project,
                server_wait: std::time::Duration::from_secs(cli.serve.server_wait),
            },
            conn: doppel::serve::ConnLimits {
                header_timeout: std::time::Duration::from_secs(cli.serve.header_timeout),
                max_connections: cli.serve.max_connections as usize,
                streams_per_user: cli.serve.max_streams_per_user as usize,
                ..Default::default()
            },
            runtime: doppel::serve::RuntimeConfig {
                disabled: cli.serve.no_runtime,
                network: cli.serve.container_network,
                ..doppel::serve::RuntimeConfig::this_binary()
            },
            agents_addr: cli.serve.agents_addr,
        })
        .await;
    }
    // The admin subcommands work on an install `serve` made: a mistyped data dir is an
    // error, not a new empty install with an admin and a token that work nowhere.
    let db_file = data.data_dir.join("doppel.db");
    if data.database_url.is_none() && !db_file.exists() {
        anyhow::bail!(
            "no doppel database at {}: is --data-dir (DOPPEL_DATA_DIR) right? `doppel serve` \
             makes one on its first start",
            db_file.display()
        );
    }
    let pool = store::connect(&data.database_url()).await?;
    if let Some(password) = auth::bootstrap_admin(&pool).await? {
        eprintln!(
            "created user {:?} with password {password} (shown once)",
            auth::ADMIN_USER
        );
    }
    match command {
        Command::Serve | Command::Shim { .. } | Command::PurgeContainers | Command::Agent(_) => {
            unreachable!("handled above")
        }
        Command::Server(ServerCommand::Add { name, description }) => {
            let token = inventory::add_agent_server(&pool, &data, &name, &description).await?;
            record_command_line(&pool, "server.add", &name, None).await?;
            eprintln!(
                "server {name:?} waits for its host (for an hour). On that host run:\n  doppel agent join https://<this host's --agents-addr> TOKEN\nwith this token:"
            );
            println!("{token}");
        }
        Command::Token(TokenCommand::Create { user, label }) => {
            let token = auth::create_token(&pool, &user, &label).await?;
            record_command_line(&pool, "token.create", &user, None).await?;
            println!("{token}");
        }
        Command::User(UserCommand::SetPassword { name }) => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let password = input.trim_end_matches(['\r', '\n']);
            auth::set_password(&pool, &name, password).await?;
            record_command_line(&pool, "user.reset_password", &name, None).await?;
            eprintln!("password of {name:?} updated");
        }
        Command::User(UserCommand::MakeAdmin { name }) => {
            auth::make_admin(&pool, &name).await?;
            record_command_line(&pool, "user.make_admin", &name, None).await?;
            eprintln!("{name:?} is a platform admin, enabled");
        }
        Command::ConvertTrees { containers } => {
            let Some(size) = doppel::config::image_tree_size() else {
                anyhow::bail!(
                    "say how large the image trees are to be: doppel --image-trees SIZE \
                     convert-trees (e.g. 64G; what doppel is started with from then on)"
                );
            };
            eprintln!(
                "converting the trees of {} into image trees of {} GiB",
                data.data_dir.display(),
                size >> 30
            );
            let trees = convert::convert_trees(
                &pool,
                &data.data_dir,
                size,
                &containers,
                progress_on_stderr(),
                |t| println!("{}", said_of(t)),
            )
            .await?;
            for t in &trees {
                if let Outcome::Converted(_) = t.outcome {
                    record_command_line(&pool, "container.convert_tree", &t.id, None).await?;
                }
            }
            let left = trees
                .iter()
                .filter(|t| matches!(t.outcome, Outcome::Left(_) | Outcome::Failed(_)))
                .count();
            if left > 0 {
                pool.close().await;
                anyhow::bail!("{left} of {} trees stay directories", trees.len());
            }
        }
        Command::Import {
            dir,
            project,
            server,
            name,
        } => {
            let id = inventory::import_container(
                &pool,
                NewContainer {
                    project_id: project.clone(),
                    server_id: server,
                    name,
                    ..Default::default()
                },
                &dir,
            )
            .await?;
            record_command_line(&pool, "container.import", &id, Some(project)).await?;
            println!("{id}");
        }
    }
    pool.close().await;
    Ok(())
}

/// A line of `convert-trees`'s report: what became of one tree.
fn said_of(t: &TreeConverted) -> String {
    let what = match &t.outcome {
        Outcome::Converted(s) => format!(
            "converted: an image tree holding {} files, {:.1} MiB ({:.1} s)",
            s.tree_files,
            s.tree_bytes as f64 / (1 << 20) as f64,
            s.duration_ms as f64 / 1000.0
        ),
        Outcome::Already => "an image tree already".into(),
        Outcome::Left(why) => format!("stays a directory: {why}"),
        Outcome::Failed(e) => format!(
            "failed: {e} (what it left is put right by the next run or doppel's next start)"
        ),
    };
    let snapshot = t
        .snapshot
        .as_ref()
        .map(|s| format!(" snapshot {s}"))
        .unwrap_or_default();
    format!(
        "{} ({}){snapshot} at {}: {what}",
        t.name,
        t.id,
        t.root.display()
    )
}

/// `convert-trees`'s progress on stderr: where a tree's copy of its files starts, then
/// every two seconds (a quick tree says nothing more than its result).
fn progress_on_stderr() -> convert::ConvertProgress {
    use doppel::engine::Phase;
    let last = std::sync::Mutex::new((None, std::time::Instant::now()));
    std::sync::Arc::new(move |name: &str, p: &doppel::engine::Progress| {
        let Ok(mut last) = last.lock() else { return };
        let starts_copying = p.phase == Phase::Transfer && last.0 != Some(Phase::Transfer);
        let said_lately = last.1.elapsed() < std::time::Duration::from_secs(2);
        last.0 = Some(p.phase);
        if !starts_copying && said_lately {
            return;
        }
        last.1 = std::time::Instant::now();
        let of = |total: Option<u64>| total.map(|t| format!(" of {t}")).unwrap_or_default();
        eprintln!(
            "  {name}: {}, {:.1}{} MiB, {}{} files",
            p.phase.as_str(),
            p.bytes_done as f64 / (1 << 20) as f64,
            p.bytes_total
                .map(|t| format!(" of {:.1}", t as f64 / (1 << 20) as f64))
                .unwrap_or_default(),
            p.files_done,
            of(p.files_total)
        );
    })
}
