//! Issue 14: what the binary says of itself: each sub-command lists only the options it
//! uses, `--help` does not send an installed binary's user to a file it lacks, and counts
//! are said as a person says them.

use crate::common::Dir;

#[test]
fn r14_keygen_lists_only_its_own_options() {
    let dir = Dir::new();
    let help = dir.run(["keygen", "--help"]).ok().stdout;
    for absent in ["--envs", "--keys", "--key-file", "--config-dir"] {
        assert!(!help.contains(absent), "{absent} in:\n{help}");
    }
    assert!(help.contains("--out"), "{help}");
    // The options still work after the sub-commands that use them.
    let help = dir.run(["encrypt", "--help"]).ok().stdout;
    for present in ["--envs", "--key-file", "--config-dir"] {
        assert!(help.contains(present), "{present} in:\n{help}");
    }
}

#[test]
fn r14_help_carries_the_git_setup_itself() {
    let dir = Dir::new();
    let help = dir.run(["--help"]).ok().stdout;
    assert!(
        help.contains("orcastrate-crypt merge-driver %O %A %B %P"),
        "{help}"
    );
    assert!(
        help.contains("of the Orcastrate source repository"),
        "{help}"
    );
}

#[test]
fn r14_one_value_is_one_value() {
    let dir = Dir::new();
    let key = dir.keygen("k");
    dir.write("config/decrypted_prod.json", "{ \"a\": \"b\" }\n");
    let out = dir.run(["encrypt", "--env", "prod"]).key(&key).ok();
    assert!(
        out.stderr.contains("encrypted 1 value from"),
        "{}",
        out.stderr
    );
    let out = dir.run(["decrypt", "--env", "prod"]).key(&key).ok();
    assert!(
        out.stderr.contains("decrypted 1 value from"),
        "{}",
        out.stderr
    );
}
