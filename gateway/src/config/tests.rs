//! Tests of the whole validation: environment alone, each section's problems, the shipped
//! example, and every problem of a file at once.

use std::path::Path;
use std::time::Duration;

use orcastrate_broker::guard::Quotas;

use super::*;

fn parse(toml_text: &str, env: &dyn Env) -> Result<Settings, ConfigError> {
    Settings::build(
        toml::from_str(toml_text).unwrap(),
        Some("gw.toml".into()),
        env,
        &Overrides::default(),
    )
}

/// A file's settings with no variable of ours in the environment.
fn file_only(toml_text: &str) -> Result<Settings, ConfigError> {
    parse(toml_text, &[("X", "y")])
}

/// A file's problems as a user sees them, with no variable of ours in the environment.
fn problems_of(toml_text: &str) -> String {
    file_only(toml_text).unwrap_err().to_string()
}

#[test]
fn runs_from_environment_alone() {
    let env = [
        ("GITHUB_SECRET", "s3cret"),
        ("TOKENS", "token-aaaa1, token-bbbb2"),
        ("TRUSTED_NAMES", "web-1, web-2"),
        ("PORT", "9000"),
        ("ORCASTRATE_REPOS", "Octo-Org/Web@main=production"),
    ];
    let s = Settings::load(None, &env, &Overrides::default()).unwrap();
    assert_eq!(s.http_listen.port(), 9000);
    assert_eq!(s.access.clients.len(), 2);
    assert_eq!(s.access.clients[1].name, "web-2");
    assert_eq!(s.access.clients[1].token, "token-bbbb2");
    assert_eq!(s.access.env_for("octo-org/web", "main"), Some("production"));
}

#[test]
fn missing_secret_names_the_key() {
    let e = problems_of("");
    assert!(
        e.contains("[github] secret") && e.contains("GITHUB_SECRET"),
        "{e}"
    );
}

/// A file with the one client `web-1`.
const WEB_1: &str = r#"
    [github]
    secret = "x"
    [[clients]]
    name = "web-1"
    token = "12345678"
"#;

#[test]
fn duplicate_clients_refused() {
    let env = [("TOKENS", "abcdefgh"), ("TRUSTED_NAMES", "web-1")];
    let e = parse(WEB_1, &env).unwrap_err().to_string();
    assert!(e.contains("defined twice"), "{e}");
}

#[test]
fn bad_names_refused() {
    let text = r#"
        [github]
        secret = "x"
        [[repos]]
        name = "octo-org/web"
        branches = { main = "Prod.1" }
    "#;
    let e = problems_of(text);
    assert!(
        e.contains("invalid env") && e.contains("branches.main"),
        "{e}"
    );
    let e = problems_of("[github]\nsecret='x'\n[[clients]]\nname='a/b'\ntoken='12345678'\n");
    assert!(e.contains("[[clients]] name"), "{e}");
    let e = toml::from_str::<FileConfig>("[github]\nsecret='x'\nbogus=1\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
}

#[test]
fn tokens_and_names_must_pair() {
    let env = [
        ("GITHUB_SECRET", "x"),
        ("TOKENS", "a1234567,b1234567"),
        ("TRUSTED_NAMES", "a"),
    ];
    let e = Settings::load(None, &env, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("same number"), "{e}");
}

#[test]
fn scopes_parse() {
    let text = format!("{WEB_1}scopes = [\"Octo-Org/web/production\"]\n");
    let s = file_only(&text).unwrap();
    let c = s.access.client("web-1").unwrap();
    assert!(c.may_report("octo-org/web", "production"));
    assert!(!c.may_report("octo-org/web", "staging"));
}

const EXTERNAL: &str = r#"
    [github]
    secret = "x"
    [mqtt]
    mode = "external"
    url = "mqtt://10.0.0.5:1883"
    username = "orcastrate-gateway"
    password = "gateway-password"
"#;

#[test]
fn external_mode_needs_url_username_and_password() {
    let s = file_only(EXTERNAL).unwrap();
    let MqttMode::External(e) = &s.mqtt else {
        panic!("not external: {:?}", s.mqtt)
    };
    assert_eq!(
        (e.url.as_str(), e.username.as_str(), e.password.as_str()),
        (
            "mqtt://10.0.0.5:1883",
            "orcastrate-gateway",
            "gateway-password"
        )
    );
    assert!(!format!("{e:?}").contains("gateway-password"));
    let env = [("ORCASTRATE_MQTT_PASSWORD", "from-env")];
    let MqttMode::External(e) = parse(EXTERNAL, &env).unwrap().mqtt else {
        unreachable!()
    };
    assert_eq!(e.password, "from-env");

    for (drop, expect) in [
        ("url = ", "needs url"),
        ("username = ", "needs username"),
        ("password = ", "needs password"),
    ] {
        let text: String = EXTERNAL
            .lines()
            .filter(|l| !l.trim_start().starts_with(drop))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = problems_of(&text);
        assert!(e.contains(expect) && e.contains("gw.toml"), "{e}");
    }
}

#[test]
fn external_mode_refuses_embedded_keys_bad_urls_and_a_shared_name() {
    let cases = [
        ("listen = \"0.0.0.0:1883\"", "remove listen"),
        ("url = \"http://x\"", "use mqtt://host:port"),
        (
            "ca_file = \"/nonexistent/ca.pem\"",
            "only used with an mqtts:// url",
        ),
    ];
    for (line, expect) in cases {
        let text = EXTERNAL
            .replace("url = \"mqtt://10.0.0.5:1883\"", "")
            .replace("[mqtt]", &format!("[mqtt]\n{line}"));
        let text = if line.starts_with("url") {
            text
        } else {
            text.replace("[mqtt]", "[mqtt]\nurl = \"mqtt://10.0.0.5:1883\"")
        };
        let e = problems_of(&text);
        assert!(e.contains(expect), "{line}: {e}");
    }
    let text = EXTERNAL
        .replace("mqtt://", "mqtts://")
        .replace("[mqtt]", "[mqtt]\nca_file = \"/nonexistent/ca.pem\"");
    let e = problems_of(&text);
    assert!(
        e.contains("ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );

    let text =
        format!("{EXTERNAL}\n[[clients]]\nname = \"orcastrate-gateway\"\ntoken = \"12345678\"\n");
    let e = problems_of(&text);
    assert!(e.contains("also a [[clients]] name"), "{e}");

    let e = problems_of("[github]\nsecret='x'\n[mqtt]\nurl='mqtt://a:1'\n");
    assert!(e.contains("url is for mode = \"external\""), "{e}");
}

#[test]
fn http_limits_default_safely_and_refuse_bad_values() {
    let s = file_only("[github]\nsecret = 'x'\n").unwrap();
    assert_eq!(s.http_limits, HttpLimits::default());
    let s = file_only(
        "[github]\nsecret = 'x'\n[http]\nmax_body_bytes = 26214400\nheader_timeout_s = 3\n",
    )
    .unwrap();
    assert_eq!(s.http_limits.header_timeout, Duration::from_secs(3));
    let s = file_only(
        "[github]\nsecret = 'x'\n[http]\ntrusted_proxies = ['127.0.0.1', '10.0.0.0/8', '::1']\n",
    )
    .unwrap();
    let nets: Vec<String> = s
        .http_limits
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
    assert_eq!(
        s.http_limits.body_buffer_bytes,
        GITHUB_MAX_BODY.max(64 << 20)
    );
    for (line, expect) in [
        (
            "max_connections = 0",
            "[http] max_connections: 0 is out of range",
        ),
        (
            "header_timeout_s = 0",
            "[http] header_timeout_s: 0 is out of range",
        ),
        ("body_timeout_s = 9999", "use 1 to 3600 seconds"),
        ("shutdown_timeout_s = 0", "[http] shutdown_timeout_s"),
        (
            "body_min_bytes_per_s = 0",
            "[http] body_min_bytes_per_s: 0 would",
        ),
        ("body_buffer_bytes = 1000", "below max_body_bytes"),
        (
            "trusted_proxies = ['127.0.0.1', 'proxy.local']",
            "[http] trusted_proxies: \"proxy.local\" is not an IP address or network",
        ),
    ] {
        let text = format!("[github]\nsecret = 'x'\n[http]\n{line}\n");
        let e = problems_of(&text);
        assert!(e.contains(expect) && e.contains("gw.toml"), "{line}: {e}");
    }
}

#[test]
fn engine_hooks_are_for_external_mode_only() {
    let e = problems_of("[github]\nsecret = 'x'\n[mqtt]\nhooks_listen = '127.0.0.1:8081'\n");
    assert!(e.contains("hooks_listen is for mode = \"external\""), "{e}");
    let MqttMode::External(e) = file_only(EXTERNAL).unwrap().mqtt else {
        unreachable!()
    };
    assert_eq!((e.hooks_listen, e.hooks_token), (None, None));
    let text = EXTERNAL.replace(
        "[mqtt]",
        "[mqtt]\nhooks_listen = \"127.0.0.1:8081\"\nhooks_token = \"hooks-token-0123456789\"",
    );
    let MqttMode::External(e) = file_only(&text).unwrap().mqtt else {
        unreachable!()
    };
    assert_eq!(e.hooks_listen, Some("127.0.0.1:8081".parse().unwrap()));
    assert!(!format!("{e:?}").contains("hooks-token"));
    let text = EXTERNAL.replace("[mqtt]", "[mqtt]\nhooks_token = \"hooks-token-0123456789\"");
    let e = problems_of(&text);
    assert!(e.contains("hooks_token without hooks_listen"), "{e}");
    let text = EXTERNAL.replace(
        "[mqtt]",
        "[mqtt]\nhooks_listen = \"127.0.0.1:8081\"\nhooks_token = \"short\"",
    );
    let e = problems_of(&text);
    assert!(e.contains("hooks_token is shorter than 16"), "{e}");
}

#[test]
fn the_shipped_example_config_is_valid_in_both_modes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = file_only(&text).unwrap();
    assert!(matches!(s.mqtt, MqttMode::Embedded { .. }));
    let watcher = s.access.client("watcher").unwrap();
    assert_eq!(watcher.role, Role::Watcher);

    // Its external-mode lines, uncommented in place of the embedded ones.
    let external = text
        .replace("mode = \"embedded\"", "mode = \"external\"")
        .replace("listen = \"0.0.0.0:1883\"", "")
        .replace("# url = \"mqtts", "url = \"mqtts")
        .replace("# username = ", "username = ")
        .replace("# password = ", "password = ")
        .replace("# hooks_listen = ", "hooks_listen = ")
        .replace("# hooks_token = ", "hooks_token = ");
    let s = file_only(&external).unwrap();
    let MqttMode::External(e) = s.mqtt else {
        panic!("{:?}", s.mqtt)
    };
    assert_eq!(e.url, "mqtts://mqtt.example.com:8883");
    assert_eq!(e.hooks_listen, Some("127.0.0.1:8081".parse().unwrap()));
}

#[test]
fn the_example_quota_lines_are_the_defaults_and_bad_quotas_are_named() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut uncommented = text.clone();
    for key in [
        "max_message_bytes",
        "max_log_bytes",
        "max_topics_per_client",
        "max_subscriptions_per_client",
        "max_inflight",
        "max_connections_per_client",
    ] {
        let line = format!("# {key} = ");
        assert!(text.contains(&line), "the example documents {key}");
        uncommented = uncommented.replace(&line, &format!("{key} = "));
    }
    let s = file_only(&uncommented).unwrap();
    let MqttMode::Embedded { quotas, .. } = s.mqtt else {
        panic!("{:?}", s.mqtt)
    };
    assert_eq!(quotas, Quotas::default());

    let bad = text.replace("[mqtt]\n", "[mqtt]\nmax_inflight = 0\n");
    let e = problems_of(&bad);
    assert!(
        e.contains("[mqtt] max_inflight: 0 is out of range: use 1 to 65535"),
        "{e}"
    );
    let external = text
        .replace("[mqtt]\n", "[mqtt]\nmax_log_bytes = 100\n")
        .replace("mode = \"embedded\"", "mode = \"external\"")
        .replace("listen = \"0.0.0.0:1883\"", "");
    let e = problems_of(&external);
    assert!(
        e.contains("max_log_bytes is for the embedded broker"),
        "{e}"
    );
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let text = r#"
        [http]
        listen = "nowhere"
        max_connections = 0
        tls_cert = "/c.pem"
        [mqtt]
        prefix = "/orcastrate/"
        max_inflight = 0
        url = "mqtt://a:1"
        [admin]
        tokens = ["short"]
        [[clients]]
        name = "web-1"
        token = "1234"
        role = "boss"
        [[clients]]
        name = "Bad.Name"
        token = "12345678"
        [[repos]]
        name = "octo-org/web"
        branches = { main = "Prod.1" }
    "#;
    let e = parse(text, &[("PORT", "99999")]).unwrap_err();
    let keys: Vec<(&str, &str)> = e
        .all()
        .map(|p| (p.origin.as_str(), p.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("gw.toml", "[http] listen"),
            ("environment variable PORT", "PORT"),
            ("gw.toml", "[http] max_connections"),
            ("gw.toml", "[http] tls_cert, tls_key"),
            ("gw.toml", "[mqtt] prefix"),
            ("gw.toml", "[mqtt] url"),
            ("gw.toml", "[mqtt] max_inflight"),
            ("gw.toml", "[github] secret"),
            ("gw.toml", "[admin] tokens"),
            ("gw.toml", "[[clients]] web-1 token"),
            ("gw.toml", "[[clients]] web-1 role"),
            ("gw.toml", "[[clients]] name"),
            ("gw.toml", "[[repos]] octo-org/web branches.main"),
        ],
        "{e}"
    );
    // One problem per line, each naming the file (or variable) and its key.
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), keys.len(), "{shown}");
    assert!(
        shown
            .lines()
            .all(|l| l.starts_with("gw.toml: [")
                || l.starts_with("environment variable PORT: PORT: ")),
        "{shown}"
    );

    // A bad value from the environment names its variable, next to the file's problems.
    let e = parse(
        "[http]\nmax_connections = 0\n[github]\nsecret = 'x'\n",
        &[("PORT", "http")],
    )
    .unwrap_err();
    let origins: Vec<&str> = e.all().map(|p| p.origin.as_str()).collect();
    assert_eq!(origins, ["environment variable PORT", "gw.toml"], "{e}");
}

#[test]
fn the_prefix_follows_the_one_rule() {
    for bad in ["/orcastrate", "orcastrate/", "$share", "a/+", ""] {
        let text = format!("[github]\nsecret = 'x'\n[mqtt]\nprefix = {bad:?}\n");
        let e = file_only(&text).unwrap_err();
        assert_eq!(e.key, "[mqtt] prefix", "{bad:?}: {e}");
        assert!(e.problem.contains("not a topic prefix"), "{e}");
    }
    let s = file_only("[github]\nsecret = 'x'\n[mqtt]\nprefix = 'acme/deploys'\n").unwrap();
    assert_eq!(s.prefix, "acme/deploys");
}

/// Issue 14: `TOKENS=abc` was accepted while the same token in `[[clients]]` was refused.
#[test]
fn r14_tokens_are_held_to_the_clients_minimum() {
    let env = [
        ("GITHUB_SECRET", "s3cret"),
        ("TOKENS", "abc, long-enough-1"),
        ("TRUSTED_NAMES", "web-1, web-2"),
    ];
    let e = Settings::load(None, &env, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TOKENS")
            && e.contains("the token of web-1 is shorter than 8 characters")
            && e.contains("[[clients]] token too"),
        "{e}"
    );
    assert!(!e.contains("abc,") && !e.contains("web-2"), "{e}");
    let file =
        problems_of("[github]\nsecret = \"x\"\n[[clients]]\nname = \"web-1\"\ntoken = \"abc\"\n");
    assert!(file.contains("shorter than 8 characters"), "{file}");
}

#[test]
fn the_example_notify_block_and_github_token_are_valid_and_bad_ones_named() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut on = text.clone();
    for key in [
        "[[notify]]",
        "url = \"https://hooks",
        "events = [\"deployed\"",
        "format = \"json\"",
        "secret = \"CHANGE-ME-notify",
        "board_url",
        "token = \"github_pat",
    ] {
        on = on.replace(&format!("\n# {key}"), &format!("\n{key}"));
    }
    let s = file_only(&on).unwrap();
    assert_eq!(s.outbox.notify.len(), 1);
    assert_eq!(s.outbox.notify[0].events.len(), 6);
    let gh = s.outbox.github.unwrap();
    assert_eq!(
        (gh.api_url.as_str(), gh.token.as_str()),
        ("https://api.github.com", "github_pat_CHANGE-ME")
    );
    // The commented example has neither; GITHUB_TOKEN alone turns deployments on.
    let s = file_only(&text).unwrap();
    assert!(s.outbox.is_empty());
    let s = parse(&text, &[("GITHUB_TOKEN", "from-env")]).unwrap();
    assert_eq!(s.outbox.github.unwrap().token, "from-env");
    assert!(
        !format!(
            "{:?}",
            parse(&text, &[("GITHUB_TOKEN", "from-env")]).unwrap()
        )
        .contains("from-env"),
        "the token is not in Debug output"
    );

    let bad =
        format!("{text}\n[[notify]]\nurl = \"ftp://x\"\nevents = [\"deploy\"]\nformat = \"xml\"\n");
    let e = problems_of(&bad);
    for part in [
        "[[notify]] #1 url",
        "unknown event \"deploy\"",
        "unknown format \"xml\"",
    ] {
        assert!(e.contains(part), "{part} in {e}");
    }
    let bad = format!("{text}\n[[notify]]\nurl = \"https://x\"\n");
    let e = problems_of(&bad);
    assert!(e.contains("[[notify]] #1 secret"), "{e}");
}
