//! Finding 9 of issue 10: a build step must not read the agent's secrets from
//! `/proc/{agent}/environ`, `cmdline` or `mem`; secrets can come from files (systemd
//! credentials); `run_as` runs steps and the app as another user.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use orcastrate_broker::{AgentState, OrderKind};

use crate::common::*;

/// `nobody` on Debian.
const NOBODY: u32 = 65534;

/// A build step that finds the agent among its ancestors and tries to read its
/// `environ`, `cmdline` and `mem`; writes what it got to `PROBE` in the release.
const PROBE_PY: &str = r#"
import os
def stat(pid):
    with open('/proc/%d/stat' % pid) as f:
        s = f.read()
    return s[s.index('(') + 1:s.rindex(')')], int(s[s.rindex(')') + 2:].split()[1])
pid, agent = os.getpid(), None
while pid > 1:
    comm, parent = stat(pid)
    if comm.startswith('orcastrate-agen'):
        agent = pid
        break
    pid = parent
out = ['agent %s' % agent, 'uid %d' % os.getuid()]
for name in ('environ', 'cmdline', 'mem'):
    try:
        with open('/proc/%d/%s' % (agent, name), 'rb') as f:
            data = b'' if name == 'mem' else f.read(1 << 20)
        out.append('%s: read %s' % (name, data.replace(b'\0', b' ').decode('utf8', 'replace')))
    except OSError as e:
        out.append('%s: denied (%s)' % (name, e.strerror))
with open('PROBE', 'w') as f:
    f.write('\n'.join(out) + '\n')
"#;

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// The uid of a process, from `/proc`.
fn uid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

/// The agent started with `CONNECT_TOKEN` in its environment and `--config-key` on its
/// command line: the process that ends up running (same pid) holds neither in `environ`
/// or `cmdline`, a build step of the same user can read neither those nor its memory, and
/// the agent still logs in and decrypts the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_given_in_the_environment_leave_it() {
    let mut w = World::with(Options {
        token: Some(String::new()),
        install: Some("python3 probe.py".into()),
        ..Options::default()
    })
    .await;
    let key = orcastrate_crypt::Key::generate().unwrap();
    let key_b64 = key.to_base64().to_string();
    let enc_text = w.encrypted(&key, "env", "API_KEY=s3cret\n");
    let a = w.commit_with(
        "v1",
        "true\n",
        &[
            ("probe.py", Some(PROBE_PY)),
            ("config/encrypted_production.env", Some(&enc_text)),
        ],
    );
    let s1 = w.order(&a, OrderKind::Push).await;

    // As root, a step could read anything: run the agent as an ordinary user, the case
    // this protects (its steps run as that same user).
    let uid = is_root().then_some(NOBODY);
    if let Some(uid) = uid {
        std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(&w.root).unwrap();
        chown(&w.root, uid);
        // The origin belongs to root; git refuses repositories of other users (and drops
        // GIT_CONFIG_* for the local upload-pack): trust it in the HOME given below.
        std::fs::write(w.dir.path().join(".gitconfig"), "[safe]\n\tdirectory = *\n").unwrap();
    }
    let config = w.config.display().to_string();
    let home = w.dir.path().display().to_string();
    let n = w.spawn_agent_as(
        &["--config", &config, "--config-key", &key_b64],
        &[("CONNECT_TOKEN", TOKEN), ("HOME", &home)],
        uid,
    );
    let out = w.bus.wait_outcome(s1).await;
    let lines: Vec<String> = w.bus.logs().into_iter().map(|l| l.line).collect();
    assert_eq!(
        out.state,
        AgentState::Healthy,
        "{out:?}\n{}",
        lines.join("\n")
    );
    w.wait_app("v1");
    let release = w.root.join("current");
    let decrypted = std::fs::read_to_string(release.join("config/decrypted_production.env"));
    assert!(decrypted.unwrap().contains("API_KEY=s3cret"));

    let pid = w.agent_pid(n);
    let probe = std::fs::read_to_string(release.join("PROBE")).unwrap();
    assert!(probe.contains(&format!("agent {pid}\n")), "{probe}");
    assert!(
        !probe.contains(TOKEN) && !probe.contains(&key_b64),
        "{probe}"
    );
    assert!(probe.contains("mem: denied"), "{probe}");
    assert!(probe.contains("environ: denied"), "{probe}");
    // cmdline is readable by everyone; the config key is gone from it.
    assert!(probe.contains("cmdline: read "), "{probe}");
    // What the agent's own /proc holds (readable here when the test runs as root).
    for name in ["environ", "cmdline"] {
        match std::fs::read(format!("/proc/{pid}/{name}")) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains(TOKEN) && !text.contains(&key_b64),
                    "{name}: {text}"
                );
                if name == "environ" {
                    assert!(
                        text.contains("ORCASTRATE_SECRETS_FD="),
                        "not re-executed: {text}"
                    );
                }
            }
            Err(e) => assert!(!is_root(), "cannot read /proc/{pid}/{name}: {e}"),
        }
    }
}

/// `token_file` and `config_key_file` instead of the values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_files() {
    let key = orcastrate_crypt::Key::generate().unwrap();
    let mut w = World::new().await;
    let token_file = w.dir.path().join("token");
    let key_file = w.dir.path().join("config.key");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::write(&key_file, format!("{}\n", *key.to_base64())).unwrap();
    w.write_config(&Options {
        token: Some(String::new()),
        extra_top: format!(
            "token_file = \"token\"\nconfig_key_file = \"{}\"\n",
            key_file.display()
        ),
        ..Options::default()
    });
    let s1 = order_v1_with_an_encrypted_secret(&mut w, &key).await;
    let n = w.start_until_healthy(s1).await;
    let decrypted =
        std::fs::read_to_string(w.root.join("current/config/decrypted_production.env")).unwrap();
    assert!(decrypted.contains("API_KEY=s3cret"));
    assert!(
        !w.agent_log(n).contains("stay readable"),
        "{}",
        w.agent_log(n)
    );

    // A file that is not there is a config error naming the key.
    std::fs::remove_file(&token_file).unwrap();
    let n = w.start_agent();
    assert_eq!(w.wait_exit(n), Some(2));
    let log = w.agent_log(n);
    assert!(log.contains("token_file") && log.contains("token"), "{log}");
}

/// `run_as = "nobody"` with the agent as root: steps and the app run as nobody, can use
/// the release (and its decrypted config), and cannot read the agent's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_runs_steps_and_the_app_as_another_user() {
    if !is_root() {
        eprintln!("skipped: run_as needs the test to run as root (CI does)");
        return;
    }
    let mut w = World::with(Options {
        extra_top: "run_as = \"nobody\"\n".into(),
        ..Options::default()
    })
    .await;
    // As in production: the directories above the root are traversable, the config is
    // the agent's only.
    std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&w.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let root = w.root.display();
    let config = w.config.display();
    let install = format!(
        "id -u > WHO\n\
         for f in {root}/state.json {root}/logs/app/*.log {config}; do\n\
           if cat \"$f\" >/dev/null 2>&1; then echo \"read $f\"; else echo \"denied $f\"; fi\n\
         done > READS\n\
         ls {root}/logs >/dev/null 2>&1 && echo 'listed logs' >> READS\n\
         echo ok > written-by-install\n"
    );
    let a = w.commit("v1", &install);
    let s1 = w.order(&a, OrderKind::Push).await;
    let n = w.start_until_healthy(s1).await;
    let app = w.wait_app("v1");
    assert_eq!(uid_of(app), Some(NOBODY), "the app does not run as nobody");
    let release = w.root.join("current");
    assert_eq!(
        std::fs::read_to_string(release.join("WHO")).unwrap().trim(),
        NOBODY.to_string()
    );
    let reads = std::fs::read_to_string(release.join("READS")).unwrap();
    assert_eq!(reads.matches("denied").count(), 3, "{reads}");
    assert!(
        !reads.contains("read ") && !reads.contains("listed"),
        "{reads}"
    );
    assert!(release.join("written-by-install").exists());
    // The agent itself still runs as root.
    assert_eq!(uid_of(w.agent_pid(n)), Some(0));
}

/// The shipped units' `LoadCredential=token:…` and `config_key:…`: systemd puts the files in
/// `$CREDENTIALS_DIRECTORY` under those names, where the agent finds them when its config
/// names neither value nor file (it logs in and decrypts with nothing else); steps do not
/// see the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_credentials_of_the_shipped_unit_are_found() {
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    for unit in ["orcastrate-agent.service", "orcastrate-agent@.service"] {
        let text = std::fs::read_to_string(format!("{units}/{unit}")).unwrap();
        assert!(text.contains("\nLoadCredential=token:"), "{unit}");
        assert!(text.contains("# LoadCredential=config_key:"), "{unit}");
    }
    let key = orcastrate_crypt::Key::generate().unwrap();
    let mut w = World::with(Options {
        token: Some(String::new()),
        install: Some("env > STEP_ENV".into()),
        ..Options::default()
    })
    .await;
    let credentials = w.dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        credentials.join("config_key"),
        format!("{}\n", *key.to_base64()),
    )
    .unwrap();
    let s1 = order_v1_with_an_encrypted_secret(&mut w, &key).await;
    let dir = credentials.display().to_string();
    let n = w.start_agent_with(&[], &[("CREDENTIALS_DIRECTORY", &dir)]);
    w.until_healthy(n, s1).await;
    let release = w.root.join("current");
    let decrypted =
        std::fs::read_to_string(release.join("config/decrypted_production.env")).unwrap();
    assert!(decrypted.contains("API_KEY=s3cret"));
    let step_env = std::fs::read_to_string(release.join("STEP_ENV")).unwrap();
    assert!(!step_env.contains("CREDENTIALS_DIRECTORY"), "{step_env}");
}

/// Commits `v1` with `API_KEY=s3cret` encrypted under `key` for production, and orders it.
async fn order_v1_with_an_encrypted_secret(w: &mut World, key: &orcastrate_crypt::Key) -> u64 {
    let enc_text = w.encrypted(key, "env", "API_KEY=s3cret\n");
    let a = w.commit_with(
        "v1",
        "true\n",
        &[("config/encrypted_production.env", Some(&enc_text))],
    );
    w.order(&a, OrderKind::Push).await
}
