//! The environment a bundle script gets: an allow-list, never the agent's whole
//! environment (which may hold secrets such as `KERNEX_ENROLLMENT_TOKEN`, proxy
//! credentials or cloud keys of the service manager).
//!
//! A script sees:
//! - from the agent's own environment, only [`ALLOWED`] and `LC_*` (with `PATH` set to
//!   [`DEFAULT_PATH`] when the agent has none);
//! - the names given with `--script-env NAME` (repeatable; `PREFIX*` passes every
//!   variable starting with PREFIX), except `KERNEX_*`, which never pass through;
//! - the deployment's `KERNEX_DEVICE_ID`, `KERNEX_DEPLOYMENT_ID`,
//!   `KERNEX_BUNDLE_VERSION`, `KERNEX_BUNDLE_DIR` and `KERNEX_PREVIOUS_VERSION`;
//! - with `--run-as USER`, `HOME`, `USER` and `LOGNAME` of that user.

use std::ffi::OsString;

/// Variables passed from the agent's environment as they are.
pub const ALLOWED: &[&str] = &[
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "SHELL", "TMPDIR",
];
/// `PATH` when the agent runs without one (a bare service manager).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn allowed(name: &str, pass: &[String]) -> bool {
    if ALLOWED.contains(&name) || name.starts_with("LC_") {
        return true;
    }
    if name.starts_with("KERNEX_") {
        return false;
    }
    pass.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => !prefix.is_empty() && name.starts_with(prefix),
        None => p == name,
    })
}

/// The whole environment of a script: `own` (the agent's) filtered, then `deployment`
/// and `overrides` on top.
pub fn environment(
    own: impl Iterator<Item = (OsString, OsString)>,
    pass: &[String],
    deployment: &[(String, String)],
    overrides: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = own
        .filter(|(k, _)| k.to_str().is_some_and(|k| allowed(k, pass)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    for (k, v) in deployment.iter().chain(overrides) {
        env.retain(|(old, _)| old != k.as_str());
        env.push((k.into(), v.into()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn get<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a str> {
        env.iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.to_str())
    }

    #[test]
    fn only_allowed_and_deployment_variables_reach_a_script() {
        let own = vars(&[
            ("PATH", "/bin"),
            ("HOME", "/root"),
            ("LC_ALL", "C"),
            ("KERNEX_ENROLLMENT_TOKEN", "secret"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("HTTP_PROXY", "http://u:p@proxy"),
            ("KX_E2E_GATE", "/tmp/gate"),
            ("MY_VAR", "1"),
        ]);
        let deployment = vec![("KERNEX_DEPLOYMENT_ID".to_owned(), "d1".to_owned())];
        let pass = vec![
            "KX_E2E_*".to_owned(),
            "MY_VAR".to_owned(),
            "KERNEX_*".to_owned(),
        ];
        let env = environment(own.into_iter(), &pass, &deployment, &[]);
        assert_eq!(get(&env, "PATH"), Some("/bin"));
        assert_eq!(get(&env, "LC_ALL"), Some("C"));
        assert_eq!(get(&env, "KX_E2E_GATE"), Some("/tmp/gate"));
        assert_eq!(get(&env, "MY_VAR"), Some("1"));
        assert_eq!(get(&env, "KERNEX_DEPLOYMENT_ID"), Some("d1"));
        for secret in [
            "KERNEX_ENROLLMENT_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "HTTP_PROXY",
        ] {
            assert_eq!(get(&env, secret), None, "{secret} leaked");
        }
    }

    #[test]
    fn path_has_a_default_and_overrides_win() {
        let env = environment(
            vars(&[("HOME", "/root")]).into_iter(),
            &[],
            &[],
            &[("HOME".into(), "/home/app".into())],
        );
        assert_eq!(get(&env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(get(&env, "HOME"), Some("/home/app"));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        // A lone `*` passes nothing.
        let env = environment(vars(&[("X", "1")]).into_iter(), &["*".into()], &[], &[]);
        assert_eq!(get(&env, "X"), None);
    }
}
