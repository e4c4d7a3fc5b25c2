//! The `run_as` user: looked up at start-up in `/etc/passwd` and `/etc/group`, then
//! switched to in each step's and the app's process before it executes (groups, gid, uid),
//! and made the owner of each release directory so that user can install into it.

use std::io;
use std::path::{Path, PathBuf};

/// The user steps, health commands and the app run as (`run_as`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The primary group and every group listing the user.
    pub groups: Vec<u32>,
    /// `HOME` for its processes.
    pub home: Option<PathBuf>,
}

/// Looks `user` (a name or a numeric uid) up in the text of `/etc/passwd` and its groups
/// in that of `/etc/group`.
///
/// # Errors
///
/// What is wrong, for a config error.
pub(crate) fn lookup_in(user: &str, passwd: &str, group: &str) -> Result<RunAs, String> {
    let user = user.trim();
    let numeric: Option<u32> = user.parse().ok();
    let entry = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (name, uid, gid, home) = (f.first()?, f.get(2)?, f.get(3)?, f.get(5)?);
        let uid: u32 = uid.parse().ok()?;
        let matches = *name == user || numeric == Some(uid);
        matches.then(|| {
            (
                name.to_string(),
                uid,
                gid.parse::<u32>().ok(),
                home.to_string(),
            )
        })
    });
    let (name, uid, gid, home) = match (entry, numeric) {
        (Some((name, uid, Some(gid), home)), _) => (name, uid, gid, Some(PathBuf::from(home))),
        // A uid without an entry: its own group, no home.
        (None, Some(uid)) => (uid.to_string(), uid, uid, None),
        _ => {
            return Err(format!(
                "no user {user:?} in /etc/passwd: create it or give a uid"
            ))
        }
    };
    if uid == 0 {
        return Err("run_as root gives the app all of the agent's rights: name another user, or remove run_as".into());
    }
    let mut groups = vec![gid];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let (Some(gid), Some(members)) = (f.get(2).and_then(|g| g.parse::<u32>().ok()), f.get(3))
        else {
            continue;
        };
        if members.split(',').any(|m| m.trim() == name) && !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    Ok(RunAs {
        name,
        uid,
        gid,
        groups,
        home,
    })
}

/// Switches the calling process to `user`: supplementary groups, then gid, then uid.
/// Only for a forked child before it executes: it calls nothing but async-signal-safe
/// system calls.
///
/// # Errors
///
/// The OS error of the first call that failed (the child then does not execute).
#[allow(unsafe_code)]
pub(crate) fn become_user(user: &RunAs) -> io::Result<()> {
    let check = |rc: i32| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: the list outlives the call and its length is passed with it; setgid and
    // setuid take plain integers.
    unsafe {
        check(libc::setgroups(user.groups.len(), user.groups.as_ptr()))?;
        check(libc::setgid(user.gid))?;
        check(libc::setuid(user.uid))
    }
}

/// Makes `user` the owner of `path` and everything under it (links themselves, not what
/// they point to), so it can write where its steps and app need to.
///
/// # Errors
///
/// The first path that could not be changed.
pub(crate) fn chown_tree(path: &Path, user: &RunAs) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nweb:x:1001:1001::/home/web:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nweb:x:1001:\nssl:x:120:web,other\nnogroup:x:65534:\n";

    #[test]
    fn finds_users_by_name_or_uid() {
        let web = lookup_in("web", PASSWD, GROUP).unwrap();
        assert_eq!((web.uid, web.gid), (1001, 1001));
        assert_eq!(web.groups, vec![1001, 120]);
        assert_eq!(web.home.as_deref(), Some(Path::new("/home/web")));
        assert_eq!(lookup_in("65534", PASSWD, GROUP).unwrap().name, "nobody");
        let bare = lookup_in("4242", PASSWD, GROUP).unwrap();
        assert_eq!((bare.uid, bare.gid, bare.home), (4242, 4242, None));
        assert!(lookup_in("nope", PASSWD, GROUP)
            .unwrap_err()
            .contains("nope"));
        assert!(lookup_in("root", PASSWD, GROUP).is_err());
        assert!(lookup_in("0", PASSWD, GROUP).is_err());
    }
}
