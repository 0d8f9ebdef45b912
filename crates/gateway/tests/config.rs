//! The config files of `tests/config/`, read through the library as `smgr` reads them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway::config::{
    BackendKind, ByteSize, Config, ConfigError, Format, Readiness, render_resolved, schema,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config").join(name)
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
}

#[test]
fn the_issues_example_config_loads_and_resolves_against_its_directory() {
    let path = fixture("smgr.toml");
    let config = Config::load(&path, no_env()).unwrap();

    assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.server.admin_token_env.as_deref(), Some("SMGR_ADMIN_TOKEN"));
    assert_eq!(config.server.max_body, ByteSize::mib(6));
    assert_eq!(config.server.request_timeout, Duration::from_secs(30));
    assert_eq!(config.defaults.idle_timeout, Some(Duration::from_secs(300)));
    let hello = &config.functions["hello"];
    assert_eq!(hello.backend, BackendKind::Process);
    assert_eq!(hello.readiness, Readiness::Http("/healthz".into()));
    assert_eq!(hello.min_instances, Some(1));

    let config_dir = path.parent().unwrap();
    let resolved = config.resolve(config_dir).unwrap();
    assert_eq!(resolved.len(), 1);
    let hello = &resolved[0];
    assert_eq!(hello.name.as_str(), "hello");
    assert_eq!(hello.spec.as_process().unwrap().program, Path::new("python3"));
    assert_eq!(hello.spec.as_process().unwrap().args, ["examples/functions/hello.py"]);
    // The function runs in the config's directory, so its script's relative path is the
    // config's.
    let working_dir = hello.spec.as_process().unwrap().working_dir.as_deref().unwrap();
    assert_eq!(working_dir, config_dir);
    assert_eq!(
        working_dir.join(&hello.spec.as_process().unwrap().args[0]),
        config_dir.join("examples/functions/hello.py")
    );
    assert_eq!(hello.spec.as_process().unwrap().env["GREETING"], "hello");
    assert_eq!(
        hello.spec.as_process().unwrap().readiness,
        backend_process::Readiness::Http("/healthz".into())
    );
    assert_eq!((hello.pool.min, hello.pool.max), (1, 4));
    assert_eq!(hello.pool.queue_limit, 64);
    assert_eq!(hello.pool.acquire_timeout, Some(Duration::from_secs(10)));
    assert_eq!(hello.pool.idle_timeout, Some(Duration::from_secs(300)));
    hello.pool.validate().unwrap();
}

#[test]
fn yaml_and_json_configs_say_the_same_as_toml() {
    let toml = Config::load(&fixture("smgr.toml"), no_env()).unwrap();
    for name in ["smgr.yaml", "smgr.json"] {
        let other = Config::load(&fixture(name), no_env()).unwrap();
        assert_eq!(other, toml, "{name}");
    }
    assert_eq!(Format::from_path(Path::new("a/b.YML")), Some(Format::Yaml));
    assert_eq!(Format::from_path(Path::new("smgr.conf")), None);
}

#[test]
fn a_broken_config_reports_every_error_with_file_line_column_and_key() {
    let path = fixture("broken.toml");
    let errors = Config::load(&path, no_env()).unwrap_err();
    let at = |error: &ConfigError| (error.line, error.column, error.key.clone());
    let found: Vec<_> = errors.iter().map(at).collect();
    assert_eq!(
        found,
        [
            (Some(3), Some(10), "server.listen".to_owned()),
            (Some(4), Some(12), "server.max_body".to_owned()),
            (Some(8), Some(1), "defaults.idle_timout".to_owned()),
            (Some(12), Some(17), "functions.hello.min_instances".to_owned()),
            (Some(15), Some(11), "functions.world.backend".to_owned()),
        ]
    );
    assert!(errors.iter().all(|error| error.file.as_deref() == Some(path.as_path())));
    let shown = errors.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    let file = path.display();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0], format!("{file}:3:10: server.listen: invalid socket address syntax"));
    assert_eq!(
        lines[3],
        format!(
            "{file}:12:17: functions.hello.min_instances: min_instances (3) must not exceed \
             max_instances (2)"
        )
    );
    assert_eq!(
        lines[4],
        format!(
            "{file}:15:11: functions.world.backend: backend `k8s` is not available in this \
             build"
        )
    );
}

#[test]
fn the_environment_overrides_a_loaded_config() {
    let env = vars(&[
        ("SMGR_SERVER__LISTEN", "0.0.0.0:9000"),
        ("SMGR_DEFAULTS__MAX_INSTANCES", "8"),
        ("SMGR_FUNCTIONS__HELLO__MAX_INSTANCES", "6"),
        ("SMGR_ADMIN_TOKEN", "s3cret"),
    ]);
    let config = Config::load(&fixture("smgr.yaml"), env.clone()).unwrap();
    assert_eq!(config.server.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(config.defaults.max_instances, 8);
    assert_eq!(config.functions["hello"].max_instances, Some(6));
    // SMGR_ADMIN_TOKEN is no override, but the variable admin_token_env names.
    assert_eq!(config.admin_token(env).unwrap().as_deref(), Some("s3cret"));

    let errors = Config::load(&fixture("smgr.json"), vars(&[("SMGR_FUNCTIONS__BYE__MIN", "1")]))
        .unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].key, "SMGR_FUNCTIONS__BYE__MIN");
    assert_eq!(errors.0[0].file, None);
    assert!(errors.0[0].reason.contains("no function is named `BYE`"), "{errors}");
}

#[test]
fn the_rendered_config_reads_back() {
    let config = Config::load(&fixture("smgr.toml"), no_env()).unwrap();
    let rendered = render_resolved(&config);
    let back = Config::parse(&rendered, Format::Toml, None, no_env()).unwrap();
    assert_eq!(back, config.filled());
    assert_eq!(back.functions["hello"].max_instances, Some(4));
    assert_eq!(
        back.resolve(Path::new("/srv")).unwrap(),
        config.resolve(Path::new("/srv")).unwrap()
    );
}

#[test]
fn the_config_schema_is_json_describing_the_functions() {
    let schema = schema();
    let text = serde_json::to_string_pretty(&schema).unwrap();
    let reparsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(reparsed["properties"]["functions"].is_object(), "{text}");
    assert!(text.contains("\"$schema\""), "{text}");
}

#[test]
fn a_queue_limit_of_zero_is_taken_and_reaches_the_pool() {
    let text = "[functions.hello]\ncommand = [\"x\"]\nqueue_limit = 0\n";
    let config = Config::parse(text, Format::Toml, None, no_env()).unwrap();
    let resolved = config.resolve(Path::new("/")).unwrap();
    assert_eq!(resolved[0].pool.queue_limit, 0);
}

#[test]
fn docs_configuration_names_every_key_of_the_schema() {
    fn keys(value: &serde_json::Value, found: &mut std::collections::BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(properties)) = map.get("properties") {
                    found.extend(properties.keys().cloned());
                }
                map.values().for_each(|value| keys(value, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|value| keys(value, found)),
            _ => {}
        }
    }
    let mut found = std::collections::BTreeSet::new();
    keys(&schema(), &mut found);
    assert!(found.len() > 30, "the schema's keys were not found: {found:?}");
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    // Each key as a key: in its table's cell (`key`), in a section header ([key]), or in the
    // form of an inline table's value (`{ memory = SIZE, cpus = NUMBER }`, `{ path, source or
    // contents, mode }`).
    let named = |key: &str| {
        [
            format!("`{key}`"),
            format!("[{key}"),
            format!("{key} ="),
            format!("{{ {key}"),
            format!(", {key}"),
            format!(" or {key}"),
        ]
        .iter()
        .any(|form| docs.contains(form.as_str()))
    };
    let missing: Vec<_> = found.iter().filter(|key| !named(key)).collect();
    assert!(missing.is_empty(), "docs/configuration.md does not name {missing:?}");
}
