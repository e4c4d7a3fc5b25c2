//! Tests of the whole validation: defaults, precedence, origins, every problem at once.

use super::environment::{default_name, host_name};
use super::file::read_file;
use super::*;
use orcastrate_broker::names;

fn base_file() -> FileConfig {
    let key = orcastrate_broker::OrderSigner::generate().public_key_base64();
    toml::from_str(&format!(
        r#"
        name = "web-1"
        server = "mqtt://127.0.0.1:1883"
        token = "t0k"
        repo = "Octo-Org/Web"
        env = "production"
        root = "{}"
        gateway_public_keys = ["{key}"]
        "#,
        std::env::temp_dir()
            .join("orcastrate-agent-config-test")
            .display()
    ))
    .unwrap()
}

/// Start-up's merge in this process's environment.
fn merge(cli: &Cli, file: &FileConfig, origin: &str) -> Result<Settings, ConfigError> {
    Settings::merge(cli, file, origin, &Environment::current())
}

#[test]
fn urls() {
    assert_eq!(
        parse_http_url("http://127.0.0.1:3000/health").unwrap(),
        HttpTarget {
            host: "127.0.0.1".into(),
            port: 3000,
            path: "/health".into()
        }
    );
    assert_eq!(parse_http_url("http://localhost").unwrap().port, 80);
    assert_eq!(parse_http_url("http://[::1]:8/x").unwrap().host, "::1");
    assert!(parse_http_url("https://x/").unwrap_err().contains("curl"));
    assert!(parse_http_url("ftp://x/").is_err());
    assert!(parse_http_url("http://:80/").is_err());
    assert!(parse_http_url("http://h:x/").is_err());
}

#[test]
fn defaults_apply() {
    let s = merge(&Cli::default(), &base_file(), "agent.toml").unwrap();
    assert_eq!(s.repo, "octo-org/web");
    assert_eq!(s.steps.install, "npm install");
    assert_eq!(s.steps.build, "");
    assert_eq!(s.steps.start, "npm run start");
    assert_eq!(s.steps.stop_timeout, Duration::from_secs(10));
    assert_eq!(s.keep_releases, 5);
    assert_eq!(s.health.timeout, Duration::from_secs(30));
    assert_eq!(s.health.interval, Duration::from_secs(15));
    assert_eq!(s.health.check, HealthCheck::Running);
    assert_eq!(s.on_shutdown, OnShutdown::Keep);
    assert_eq!(s.git_url, "https://github.com/octo-org/web.git");
    assert_eq!(s.prefix, "orcastrate");
}

#[test]
fn flag_beats_file() {
    let cli = Cli {
        repo: Some("other/repo".into()),
        server: vec!["mqtt://a:1".into(), " mqtt://b:2".into()],
        ..Cli::default()
    };
    let s = merge(&cli, &base_file(), "agent.toml").unwrap();
    assert_eq!(s.repo, "other/repo");
    assert_eq!(s.servers, vec!["mqtt://a:1", "mqtt://b:2"]);
}

#[test]
fn errors_name_origin_and_key() {
    let mut f = base_file();
    f.env = Some("Prod.1".into());
    let e = merge(&Cli::default(), &f, "/etc/agent.toml").unwrap_err();
    assert_eq!(e.origin, "/etc/agent.toml");
    assert_eq!(e.key, "env");

    let mut f = base_file();
    f.health = Some(HealthFile {
        timeout_s: Some(0),
        ..HealthFile::default()
    });
    let e = merge(&Cli::default(), &f, "a.toml").unwrap_err();
    assert_eq!(e.key, "health.timeout_s");

    let mut f = base_file();
    f.gateway_public_keys = None;
    let e = merge(&Cli::default(), &f, "a.toml").unwrap_err();
    assert_eq!(e.key, "gateway_public_keys");

    let mut f = base_file();
    f.shared = Some(SharedFile {
        files: Some(vec!["../etc/passwd".into()]),
        dirs: None,
    });
    let e = merge(&Cli::default(), &f, "a.toml").unwrap_err();
    assert_eq!(e.key, "shared.files");

    let mut f = base_file();
    f.on_shutdown = Some("maybe".into());
    assert_eq!(
        merge(&Cli::default(), &f, "a.toml").unwrap_err().key,
        "on_shutdown"
    );
}

#[test]
fn unknown_keys_are_refused_with_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "name = \"a\"\n\n[steps]\ninstal = \"x\"\n").unwrap();
    let e = read_file(&path).unwrap_err();
    assert_eq!(e.key, "line 4");
    assert!(e.problem.contains("instal"), "{e}");
}

#[test]
fn the_example_config_names_every_key() {
    // Every commented `key = value` line, uncommented, is a key the agent knows, and
    // together they set every key (a key missing from the example stays None). An opt-in
    // table is shipped commented (`# [proxy]`) and uncommented here too.
    let uncommented: String = crate::EXAMPLE_CONFIG
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest
            }
            Some(rest)
                if rest.starts_with('[')
                    && rest.ends_with(']')
                    && rest[1..rest.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_') =>
            {
                rest
            }
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let file: FileConfig = toml::from_str(&uncommented).unwrap();
    let shown = format!("{file:?}");
    assert!(
        !shown.contains("None"),
        "a key is not in the example: {shown}"
    );

    // As shipped (everything commented) it parses too.
    toml::from_str::<FileConfig>(crate::EXAMPLE_CONFIG).unwrap();
}

#[test]
fn secrets_from_files_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "from-file\n").unwrap();
    let mut f = base_file();
    f.token = None;
    f.token_file = Some("token".into());
    let cli = Cli {
        config: Some(dir.path().join("agent.toml")),
        ..Cli::default()
    };
    assert_eq!(merge(&cli, &f, "a.toml").unwrap().token, "from-file");

    f.token = Some("both".into());
    assert_eq!(merge(&cli, &f, "a.toml").unwrap_err().key, "token");

    f.token = None;
    f.token_file = Some("missing".into());
    let e = merge(&cli, &f, "a.toml").unwrap_err();
    assert_eq!(e.key, "token_file");
    assert!(e.problem.contains("missing"), "{e}");

    let mut f = base_file();
    f.run_as = Some("no-such-user-here".into());
    assert_eq!(
        merge(&Cli::default(), &f, "a.toml").unwrap_err().key,
        "run_as"
    );
}

#[test]
fn default_names_are_valid() {
    assert_eq!(default_name("Web.Host_1"), "web-host_1");
    assert_eq!(default_name("--"), "agent");
    assert!(names::agent(&default_name(&host_name())).is_ok());
}

/// An environment with nothing set, the working directory `/work`.
fn bare_env() -> Environment {
    Environment {
        vars: Default::default(),
        args: vec!["orcastrate-agent".into()],
        credentials_directory: None,
        working_dir: Ok("/work".into()),
        host_name: "Web.Host".into(),
        uid: 1000,
        passwd: Ok("web:x:1000:1000::/home/web:/bin/sh\n".into()),
        group: String::new(),
    }
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let mut f = base_file();
    f.env = Some("Prod.1".into());
    f.keep_releases = Some(0);
    f.on_shutdown = Some("maybe".into());
    f.prefix = Some("orcastrate/".into());
    f.steps = Some(StepsFile {
        install: Some("a\nb".into()),
        start: Some(" ".into()),
        ..StepsFile::default()
    });
    f.health = Some(HealthFile {
        http: Some("https://x/".into()),
        timeout_s: Some(0),
        ..HealthFile::default()
    });
    f.git = Some(GitFile {
        fetch_attempts: Some(99),
        ..GitFile::default()
    });
    let e = Settings::validate(&Cli::default(), &f, "a.toml", &bare_env()).unwrap_err();
    let keys: Vec<&str> = e.all().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "env",
            "prefix",
            "keep_releases",
            "on_shutdown",
            "steps.install",
            "steps.start",
            "health.http",
            "health.timeout_s",
            "git.fetch_attempts"
        ],
        "{e}"
    );
    assert!(e.all().all(|p| p.origin == "a.toml"), "{e}");
    assert_eq!(e.to_string().lines().count(), 9, "{e}");
    // The first problem keeps the single-problem shape.
    assert_eq!((e.origin.as_str(), e.key.as_str()), ("a.toml", "env"));
}

#[test]
fn a_missing_repo_is_one_problem_not_two() {
    let mut f = base_file();
    f.repo = None;
    let e = Settings::validate(&Cli::default(), &f, "a.toml", &bare_env()).unwrap_err();
    assert_eq!(e.key, "repo");
    assert!(e.more.is_empty(), "{e}");
}

#[test]
fn the_origin_is_the_flag_when_the_flag_beat_its_variable() {
    let mut f = base_file();
    f.env = None;
    let cli = Cli {
        environment: Some("Bad.Env".into()),
        ..Cli::default()
    };
    let mut env = bare_env();
    env.vars.insert("ENVIRONMENT".into());
    let e = Settings::validate(&cli, &f, "a.toml", &env).unwrap_err();
    assert_eq!(e.origin, "environment variable ENVIRONMENT");

    env.args.extend(["--env".into(), "Bad.Env".into()]);
    let e = Settings::validate(&cli, &f, "a.toml", &env).unwrap_err();
    assert_eq!(e.origin, "--env");

    env.args = vec!["orcastrate-agent".into(), "--env=Bad.Env".into()];
    let e = Settings::validate(&cli, &f, "a.toml", &env).unwrap_err();
    assert_eq!(e.origin, "--env");
}

#[test]
fn validation_creates_nothing_and_reads_the_environment_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("not-yet");
    let mut f = base_file();
    f.root = Some(root.clone());
    f.name = None;
    let s = Settings::validate(&Cli::default(), &f, "a.toml", &bare_env()).unwrap();
    assert_eq!(s.root, root);
    assert!(!root.exists());
    assert_eq!((s.name.as_str(), s.host.as_str()), ("web-host", "Web.Host"));

    f.root = Some("data".into());
    let s = Settings::validate(&Cli::default(), &f, "a.toml", &bare_env()).unwrap();
    assert_eq!(s.root, Path::new("/work/data"));

    // Start-up creates it.
    f.root = Some(root.clone());
    let s = merge(&Cli::default(), &f, "a.toml").unwrap();
    assert!(root.is_dir());
    assert_eq!(s.root, root.canonicalize().unwrap());
}

#[test]
fn run_as_is_looked_up_in_the_environment_given() {
    let mut f = base_file();
    f.run_as = Some("web".into());
    let mut env = bare_env();
    // The agent's own user: nothing to switch.
    let s = Settings::validate(&Cli::default(), &f, "a.toml", &env).unwrap();
    assert_eq!(s.run_as, None);
    env.uid = 0;
    let s = Settings::validate(&Cli::default(), &f, "a.toml", &env).unwrap();
    assert_eq!(s.run_as.map(|u| (u.uid, u.gid)), Some((1000, 1000)));
    env.uid = 1234;
    let e = Settings::validate(&Cli::default(), &f, "a.toml", &env).unwrap_err();
    assert_eq!(e.key, "run_as");
    assert!(e.problem.contains("root"), "{e}");
}

#[test]
fn the_prefix_follows_the_gateways_rule() {
    for ok in ["orcastrate", "acme/deploys"] {
        let mut f = base_file();
        f.prefix = Some(ok.into());
        let s = Settings::validate(&Cli::default(), &f, "a.toml", &bare_env()).unwrap();
        assert_eq!(s.prefix, ok);
    }
    // The agent used to trim a trailing '/' and allow a leading one and '$'; the gateway
    // refuses them, and both now follow one rule.
    for bad in ["orcastrate/", "/orcastrate", "$SYS/x", "a/#"] {
        let mut f = base_file();
        f.prefix = Some(bad.into());
        let e = Settings::validate(&Cli::default(), &f, "a.toml", &bare_env()).unwrap_err();
        assert_eq!(
            (e.origin.as_str(), e.key.as_str()),
            ("a.toml", "prefix"),
            "{e}"
        );
        assert!(
            e.problem.contains("not a topic prefix") && e.problem.contains("[mqtt] prefix"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn websocket_servers_and_a_ca_file() {
    let mut file = base_file();
    file.server = Some(ServerList::Many(vec![
        "wss://deploy.example.com/mqtt".into(),
        "ws://10.0.0.1:8080/mqtt".into(),
        "mqtt://10.0.0.1:1883".into(),
    ]));
    let s = merge(&Cli::default(), &file, "agent.toml").unwrap();
    assert_eq!(s.servers.len(), 3);
    assert_eq!(s.ca_file, None);
    file.ca_file = Some("/nonexistent/ca.pem".into());
    let e = merge(&Cli::default(), &file, "agent.toml").unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    file.ca_file = None;
    file.server = Some(ServerList::One("wss://h/mqtt?token=x".into()));
    let e = merge(&Cli::default(), &file, "agent.toml").unwrap_err();
    assert!(e.to_string().contains("server"), "{e}");
}

#[test]
fn proxy_section() {
    let with = |proxy: Option<ProxyFile>, http: Option<&str>| {
        let mut f = base_file();
        f.proxy = proxy;
        f.health = Some(HealthFile {
            http: http.map(str::to_owned),
            ..HealthFile::default()
        });
        merge(&Cli::default(), &f, "a.toml")
    };
    let proxy = |listen: Option<&str>, drain_s: Option<i64>, port_var: Option<&str>| {
        Some(ProxyFile {
            listen: listen.map(str::to_owned),
            drain_s,
            port_var: port_var.map(str::to_owned),
            proxy_protocol: None,
        })
    };
    // Off by default.
    assert!(with(None, None).unwrap().proxy.is_none());
    // Defaults, and {port} in the health URL.
    let s = with(
        proxy(Some("0.0.0.0:3000"), None, None),
        Some("http://127.0.0.1:{port}/healthz"),
    )
    .unwrap();
    let p = s.proxy.clone().unwrap();
    assert_eq!(p.listen, "0.0.0.0:3000".parse().unwrap());
    assert_eq!(p.drain, std::time::Duration::from_secs(DEFAULT_DRAIN_S));
    assert_eq!(p.port_var, DEFAULT_PORT_VAR);
    assert_eq!(p.protocol, None);
    assert_eq!(
        health_on(&s, Some(4100)),
        HealthCheck::Http("http://127.0.0.1:4100/healthz".into())
    );
    // A PROXY protocol header: the health check of {port} sends one too.
    let mut file = proxy(Some("0.0.0.0:3000"), None, None);
    for (given, expected) in [("v1", ProxyProtocol::V1), ("v2", ProxyProtocol::V2)] {
        file.as_mut().unwrap().proxy_protocol = Some(given.into());
        let s = with(file.clone(), Some("http://127.0.0.1:{port}/healthz")).unwrap();
        assert_eq!(s.proxy.as_ref().unwrap().protocol, Some(expected));
        assert_eq!(
            health_on(&s, Some(4100)),
            HealthCheck::HttpBehindProxy("http://127.0.0.1:4100/healthz".into(), expected)
        );
        // A fixed port is not the app's proxied one: no header.
        let s = with(file.clone(), Some("http://127.0.0.1:9000/healthz")).unwrap();
        assert_eq!(
            health_on(&s, Some(4100)),
            HealthCheck::Http("http://127.0.0.1:9000/healthz".into())
        );
    }
    file.as_mut().unwrap().proxy_protocol = Some("2".into());
    let e = with(file, None).unwrap_err();
    assert_eq!(e.key, "proxy.proxy_protocol");
    assert!(
        e.problem.contains("\"v1\"") && e.problem.contains("\"v2\""),
        "{e}"
    );
    // Each problem names its key.
    let key = |r: Result<Settings, ConfigError>| r.unwrap_err().key;
    assert_eq!(key(with(proxy(None, None, None), None)), "proxy.listen");
    assert_eq!(
        key(with(proxy(Some("3000"), None, None), None)),
        "proxy.listen"
    );
    assert_eq!(
        key(with(proxy(Some("127.0.0.1:3000"), Some(-1), None), None)),
        "proxy.drain_s"
    );
    assert_eq!(
        key(with(
            proxy(Some("127.0.0.1:3000"), None, Some("MY-PORT")),
            None
        )),
        "proxy.port_var"
    );
    // {port} only exists behind the proxy.
    let e = with(None, Some("http://127.0.0.1:{port}/")).unwrap_err();
    assert_eq!(e.key, "health.http");
    assert!(e.problem.contains("[proxy]"), "{e}");
}
