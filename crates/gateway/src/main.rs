//! `smgr`, the Serverless Managers gateway.
//!
//! Run `smgr --help` for its usage.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use gateway::config::{Config, ServerConfig};
use gateway::{FunctionSetup, Gateway};

/// A proxy allocates and frees a few buffers and header maps per request: mimalloc spends about
/// 15% less CPU in user space per proxied request than the system allocator here (see
/// docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line of `smgr`.
#[derive(Debug, Parser)]
#[command(
    name = "smgr",
    version,
    about = "Serve functions from warm pools over HTTP",
    long_about = "smgr keeps warm pools of function instances and serves them over HTTP. \
                  This build runs functions as child processes (any program serving HTTP on \
                  $PORT) and as containers on a Docker Engine; worker threads and Kubernetes \
                  pods are to come.",
    // With no arguments, print the help on stderr and exit 2 instead of doing nothing.
    arg_required_else_help = true
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the config's functions over HTTP (the bundled demo functions without a config).
    Serve {
        /// The config file (TOML, or YAML/JSON by extension).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The address to listen on; overrides the config's `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Allow listening on a non-loopback address without an admin token.
        #[arg(long)]
        insecure_no_auth: bool,
    },
    /// Check a config file: print it resolved, or every error with its location (exit 2).
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Config tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show the pools of a running gateway.
    Status {
        /// The gateway's address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Run a bundled demo function (smgr runs itself as its demo functions).
    #[command(hide = true)]
    DemoFunction {
        /// `hello` or `echo`.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of the config file.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DemoFunction { name } => match gateway::demo::run_demo_function(&name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("smgr demo-function: {error}");
                ExitCode::from(2)
            }
        },
        Command::Config { command: ConfigCommand::Schema } => {
            let schema = gateway::config::schema();
            println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Check { config } => match load(&config) {
            Ok(loaded) => {
                print!("{}", gateway::config::render_resolved(&loaded));
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Status { url } => status(&url),
        Command::Serve { config, listen, insecure_no_auth } => {
            init_logs(cli.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("smgr: cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(config, listen, insecure_no_auth))
        }
    }
}

fn load(path: &Path) -> Result<Config, gateway::config::ConfigErrors> {
    Config::load(path, std::env::vars())
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    insecure_no_auth: bool,
) -> ExitCode {
    let mut builder = Gateway::builder();
    let mut address = ServerConfig::DEFAULT_LISTEN;
    let mut token = std::env::var("SMGR_ADMIN_TOKEN").ok().filter(|token| !token.is_empty());
    match &config {
        None => {
            let program = match std::env::current_exe() {
                Ok(program) => program,
                Err(error) => {
                    eprintln!("smgr: cannot find its own binary for the demo functions: {error}");
                    return ExitCode::FAILURE;
                }
            };
            for function in gateway::demo::demo_functions(&program) {
                builder = builder.function(function);
            }
            tracing::info!("no --config: serving the demo functions `hello` and `echo`");
        }
        Some(path) => {
            let loaded = match load(path) {
                Ok(loaded) => loaded,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            let base = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let functions = match loaded.resolve(&base) {
                Ok(functions) => functions,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            token = match loaded.admin_token(std::env::vars()) {
                Ok(token) => token,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            let server = &loaded.server;
            address = server.listen;
            builder = builder
                .pool_name(server.pool.clone())
                .state_dir(Some(loaded.state_dir(&base)))
                .max_body(server.max_body.0)
                .request_timeout(server.request_timeout)
                .shutdown_timeout(server.shutdown_timeout)
                .docker(server.docker_host.clone(), server.docker_max_concurrent_creates);
            for function in functions {
                builder = builder.function(FunctionSetup {
                    name: function.name,
                    pool: function.pool,
                    spec: function.spec,
                });
            }
        }
    }
    if let Some(listen) = listen {
        address = listen;
    }
    if !address.ip().is_loopback() && token.is_none() && !insecure_no_auth {
        let how = if config.is_some() {
            "set server.admin_token_env or server.admin_token in the config"
        } else {
            "set SMGR_ADMIN_TOKEN"
        };
        eprintln!(
            "smgr: refusing to listen on {address} without an admin token: {how}, listen on a \
             loopback address, or pass --insecure-no-auth"
        );
        return ExitCode::from(2);
    }
    let gateway = match builder.admin_token(token).start().await {
        Ok(gateway) => gateway,
        Err(error) => {
            eprintln!("smgr: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("smgr: cannot listen on {address}: {error}");
            gateway.shutdown_pools(Duration::from_secs(5)).await;
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(address);
    tracing::info!(%bound, "smgr listening");
    let report = gateway.serve(listener, first_signal(gateway.clone())).await;
    if STOPPING_AT_ONCE.load(Ordering::SeqCst) {
        // The second signal's task ends the process, once it has removed the containers.
        std::future::pending::<()>().await;
    }
    tracing::info!(
        drained = report.drained,
        destroyed = report.instances_destroyed,
        "smgr stopped"
    );
    if report.drained {
        ExitCode::SUCCESS
    } else {
        // The instances are stopped all the same; the supervisor should know that clients
        // were cut off.
        tracing::warn!("requests were still in flight at the shutdown timeout and were cut off");
        ExitCode::FAILURE
    }
}

/// Set at the second signal: the process ends with status 130 whatever the drain does.
static STOPPING_AT_ONCE: AtomicBool = AtomicBool::new(false);

/// Resolves at the first SIGTERM or SIGINT; a second one ends the process at once: child
/// processes die with it (they carry a parent-death signal), and its containers are removed
/// first (for at most 10 s: an engine that does not answer must not keep smgr running).
async fn first_signal(gateway: Gateway) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("signal received: shutting down (a second signal stops at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        STOPPING_AT_ONCE.store(true, Ordering::SeqCst);
        eprintln!("smgr: second signal: stopping at once");
        if let Err(error) = gateway.stop_instances_now(Duration::from_secs(10)).await {
            eprintln!("smgr: could not remove every container: {error}");
        }
        std::process::exit(130);
    });
}

/// `smgr status`: the pools of a running gateway, as a table.
fn status(url: &str) -> ExitCode {
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let token = std::env::var("SMGR_ADMIN_TOKEN").ok();
    let fetched = fetch(address, "/admin/pools", token.as_deref());
    let body = match fetched {
        Ok((200, body)) => body,
        Ok((code, body)) => {
            eprintln!("smgr status: {url}/admin/pools answered {code}: {body}");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("smgr status: cannot reach {url}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&body) else {
        eprintln!("smgr status: not JSON: {body}");
        return ExitCode::FAILURE;
    };
    println!(
        "{:<20} {:>4} {:>4} {:>5} {:>5} {:>5} {:>8} {:>8}",
        "FUNCTION", "MIN", "MAX", "SIZE", "IDLE", "BUSY", "CREATING", "WAITING"
    );
    for pool in value["pools"].as_array().into_iter().flatten() {
        let number =
            |key: &str| pool[key].as_u64().map_or_else(|| "?".to_owned(), |n| n.to_string());
        println!(
            "{:<20} {:>4} {:>4} {:>5} {:>5} {:>5} {:>8} {:>8}",
            pool["function"].as_str().unwrap_or("?"),
            number("min"),
            number("max"),
            number("size"),
            number("idle"),
            number("busy"),
            number("creating"),
            number("waiting"),
        );
    }
    ExitCode::SUCCESS
}

/// A plain HTTP/1.1 GET, blocking: the status code and the body.
fn fetch(address: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((code, body.to_owned()))
}
