//! Helpers for tests against a real Docker Engine (feature `testkit`): whether the tests run,
//! and images built `FROM scratch` from one-file std-only Rust programs — the fixture function
//! of the tests, or an example function — since no image can be pulled where the tests run.
//!
//! Docker tests skip with a loud message when no engine answers, unless
//! `SMGR_REQUIRE_DOCKER=1` (which CI sets): then they fail.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, TagImageOptions};
use futures_util::StreamExt;

use crate::tar::TarBuilder;

/// The fixture function's source: the process backend's `smgr-fixture`, std only.
const FIXTURE_SOURCE: &str = include_str!("../../backend-process/src/bin/smgr-fixture.rs");

/// Whether Docker tests must run rather than skip: `SMGR_REQUIRE_DOCKER=1`.
pub fn required() -> bool {
    std::env::var("SMGR_REQUIRE_DOCKER").is_ok_and(|value| value == "1")
}

/// The engine's address as the backend would pick it without a configured host.
pub fn engine_host() -> String {
    crate::backend::engine_host(None)
}

/// Whether an engine answers `GET /_ping` at [`engine_host`]; why not, when it does not.
pub fn engine_answers() -> Result<(), String> {
    engine_answers_at(&engine_host())
}

/// Whether an engine answers `GET /_ping` at `host` (`unix://`, `tcp://` or `http://`, as
/// [`DockerBackend::connect`](crate::DockerBackend::connect) takes them).
fn engine_answers_at(host: &str) -> Result<(), String> {
    let request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    let mut answer = Vec::new();
    let exchanged = if let Some(path) = host.strip_prefix("unix://") {
        std::os::unix::net::UnixStream::connect(path).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(request)?;
            stream.read_to_end(&mut answer)
        })
    } else if let Some(address) = crate::backend::tcp_authority(host) {
        std::net::TcpStream::connect(address).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(request)?;
            stream.read_to_end(&mut answer)
        })
    } else {
        return Err(format!("engine address {host:?} is neither unix://, tcp:// nor http://"));
    };
    exchanged.map_err(|error| format!("{host}: {error}"))?;
    let answer = String::from_utf8_lossy(&answer);
    if answer.starts_with("HTTP/") && answer.contains(" 200 ") && answer.ends_with("OK") {
        Ok(())
    } else {
        Err(format!("{host}: not a Docker Engine's answer to /_ping: {answer:?}"))
    }
}

/// `true` when `test` should skip: no engine answers and [`required`] is off (a loud message
/// says so on stderr). Panics when no engine answers and the tests are required.
pub fn skip_without_engine(test: &str) -> bool {
    match engine_answers() {
        Ok(()) => false,
        Err(why) if required() => {
            panic!("{test}: SMGR_REQUIRE_DOCKER=1 but no Docker Engine answers: {why}")
        }
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED {test}: no Docker Engine answers ({why}).\n*** Start dockerd, \
                 or run `cargo xtask ci`, which starts one; SMGR_REQUIRE_DOCKER=1 makes this a \
                 failure.\n"
            );
            true
        }
    }
}

/// The image of the fixture function (`smgr-fixture` of the process backend, which takes
/// `--any-address` to listen on every interface): see [`scratch_image`].
pub async fn fixture_image(docker: &Docker, work_dir: &Path) -> Result<String, String> {
    scratch_image(docker, "smgr-fixture", FIXTURE_SOURCE, work_dir).await
}

/// An image `FROM scratch` of a one-file Rust program that uses std alone: `source` is
/// compiled statically with `rustc` into `work_dir` and becomes the image's entrypoint. The
/// image is `<name>:<hash of the source and the compiler>`, built only when the engine does not
/// have it yet, and also tagged `<name>:latest`; parallel callers (test processes) wait for one
/// another through a lock file in `work_dir`. Returns the hash tag.
pub async fn scratch_image(
    docker: &Docker,
    name: &str,
    source: &str,
    work_dir: &Path,
) -> Result<String, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(&rustc)
        .arg("--version")
        .output()
        .map_err(|error| format!("running {rustc} --version: {error}"))?;
    let hash = fnv1a(source.as_bytes(), fnv1a(&version.stdout, 0xcbf2_9ce4_8422_2325));
    let tag = format!("{name}:{hash:016x}");
    if docker.inspect_image(&tag).await.is_ok() {
        return tag_latest(docker, name, tag).await;
    }
    std::fs::create_dir_all(work_dir)
        .map_err(|error| format!("creating {}: {error}", work_dir.display()))?;
    let lock_path = work_dir.join(format!("{name}-image.lock"));
    let lock = std::fs::File::create(&lock_path)
        .map_err(|error| format!("creating {}: {error}", lock_path.display()))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("locking {}: {error}", lock_path.display()))?;
    if docker.inspect_image(&tag).await.is_ok() {
        return tag_latest(docker, name, tag).await;
    }
    let binary = work_dir.join(format!("{name}-{hash:016x}"));
    let source_file = work_dir.join(format!("{name}-{hash:016x}.rs"));
    std::fs::write(&source_file, source)
        .map_err(|error| format!("writing {}: {error}", source_file.display()))?;
    let compiled = Command::new(&rustc)
        .args(["--edition", "2024", "-O", "-C", "target-feature=+crt-static", "-C"])
        .arg("strip=symbols")
        .arg(&source_file)
        .arg("-o")
        .arg(&binary)
        .output()
        .map_err(|error| format!("running {rustc}: {error}"))?;
    if !compiled.status.success() {
        return Err(format!(
            "compiling {} statically failed: {}",
            source_file.display(),
            String::from_utf8_lossy(&compiled.stderr)
        ));
    }
    let program =
        std::fs::read(&binary).map_err(|error| format!("reading {}: {error}", binary.display()))?;
    let mut context = TarBuilder::new();
    let dockerfile = format!("FROM scratch\nCOPY program /{name}\nENTRYPOINT [\"/{name}\"]\n");
    context.file("Dockerfile", 0o644, dockerfile.as_bytes())?;
    context.file("program", 0o755, &program)?;
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".to_owned(),
        t: Some(tag.clone()),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    let mut build =
        docker.build_image(options, None, Some(bollard::body_full(context.finish().into())));
    while let Some(step) = build.next().await {
        let step = step.map_err(|error| format!("building image {tag}: {error}"))?;
        if let Some(detail) = step.error_detail {
            return Err(format!("building image {tag}: {}", detail.message.unwrap_or_default()));
        }
    }
    drop(lock);
    tag_latest(docker, name, tag).await
}

/// Tags `tag` as `<name>:latest` too; `tag` back.
async fn tag_latest(docker: &Docker, name: &str, tag: String) -> Result<String, String> {
    let options = TagImageOptions { repo: Some(name.to_owned()), tag: Some("latest".to_owned()) };
    docker
        .tag_image(&tag, Some(options))
        .await
        .map_err(|error| format!("tagging {tag} as {name}:latest: {error}"))?;
    Ok(tag)
}

fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine stand-in on a local port that answers one `/_ping` with `answer`.
    fn pinged(answer: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(answer.as_bytes());
        });
        address.to_string()
    }

    #[test]
    fn an_engine_is_asked_at_tcp_and_http_addresses_alike() {
        const OK: &str = "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK";
        assert_eq!(engine_answers_at(&format!("tcp://{}", pinged(OK))), Ok(()));
        assert_eq!(engine_answers_at(&format!("http://{}", pinged(OK))), Ok(()));
        let other =
            engine_answers_at(&format!("http://{}", pinged("HTTP/1.0 404 Not Found\r\n\r\n")));
        assert!(other.unwrap_err().contains("not a Docker Engine's answer"));
        let error = engine_answers_at("npipe:////./pipe/docker_engine").unwrap_err();
        assert!(error.contains("neither unix://, tcp:// nor http://"), "{error}");
    }
}
