//! Scripted subcommands (SPEC §4). Never prompt; exit 0 ok, 1 refused/failed, 2 usage or
//! unreachable.
//!
//! Every command checks its arguments before it contacts the server (a usage error never
//! costs a request), then returns a [`Report`]: the data, rendered as aligned text, or as
//! `-o json|yaml|wide` asks (`--json` = `-o json`), and whether the operation failed. Progress bars
//! and errors go to stderr, data to stdout; a closed stdout (`| head`) ends the output
//! quietly.

use std::fmt;

use serde::Serialize;

use crate::api::{Api, ApiError};
use crate::cli::{
    BundleCommand, Command, ConfigCommand, ConnArgs, Format, KeyCommand, OutputArgs, TrustCommand,
};

mod bundle; // bundles, bundle pack, bundle push
mod config; // config get/set and the key=value parser
mod deploy; // deploy, rollback, deployments, --wait
mod fleet; // devices, device, accept, reject
mod generate; // completions and man pages
pub(crate) mod ids; // typed ids: full or a unique suffix of 6+ characters
mod login; // login, logout: the saved context
mod output; // tables, key/value blocks, value formatting, stdout/stderr
mod render; // the human text of each kind of data
mod signing; // key generate, bundle sign, add-signatures, trust sign/push

// The demo packs the fixtures the way `bundle pack` does.
pub(crate) use bundle::{default_name, write_archive};

/// Run one scripted subcommand and return the process exit code.
pub async fn run(cmd: Command, conn: &ConnArgs, json: bool) -> u8 {
    let format = match output_format(&cmd, json) {
        Ok(f) => f,
        Err(e) => {
            output::error(&e);
            return e.exit_code();
        }
    };
    let result = match cmd {
        Command::Login(args) => login::login(conn, &args).await,
        Command::Logout => login::logout(),
        Command::Completions { shell } => generate::completions(shell),
        Command::Man { dir } => generate::man(dir.as_deref()),
        Command::Devices(args) => fleet::devices(conn, &args).await,
        Command::Device { id, .. } => fleet::device(conn, &id).await,
        Command::Accept { id } => fleet::admit(conn, &id, true).await,
        Command::Reject { id } => fleet::admit(conn, &id, false).await,
        Command::Bundles(_) => bundle::list(conn).await,
        Command::Bundle(BundleCommand::Pack { dir, output }) => {
            bundle::pack(&dir, output.as_deref())
        }
        Command::Bundle(BundleCommand::Push { file }) => bundle::push(conn, &file).await,
        Command::Bundle(BundleCommand::Sign {
            file,
            key,
            expires,
            device_types,
            allow_downgrade,
        }) => signing::sign_bundle(&file, &key, &expires, &device_types, allow_downgrade),
        Command::Bundle(BundleCommand::AddSignatures { version, file }) => {
            signing::add_signatures(conn, &version, &file).await
        }
        Command::Key(KeyCommand::Generate { name }) => signing::generate_key(&name),
        Command::Trust(TrustCommand::Sign { file, key }) => signing::sign_trust(&file, &key),
        Command::Trust(TrustCommand::Push { file }) => signing::push_trust(conn, &file).await,
        Command::Deploy(args) => deploy::deploy(conn, &args).await,
        Command::Rollback(args) => deploy::rollback(conn, &args).await,
        Command::Pause { id } => deploy::control(conn, &id, deploy::Control::Pause).await,
        Command::Resume { id } => deploy::control(conn, &id, deploy::Control::Resume).await,
        Command::Cancel { id } => deploy::control(conn, &id, deploy::Control::Cancel).await,
        Command::Deployments {
            id, status, limit, ..
        } => deploy::deployments(conn, id.as_deref(), status.as_deref(), limit).await,
        Command::Config(ConfigCommand::Get { id, .. }) => config::get(conn, &id).await,
        Command::Config(ConfigCommand::Set { id, pairs }) => config::set(conn, &id, &pairs).await,
        Command::Demo(_) => Err(OpError::Usage(
            "demo is not a scripted operation; run `kernex-console demo`".into(),
        )),
    };
    match result {
        Ok(report) => report.emit(format),
        Err(e) => {
            output::error(&e);
            e.exit_code()
        }
    }
}

/// `-o` where the command takes it, `--json` everywhere; saying both differently is a
/// usage error rather than a guess.
fn output_format(cmd: &Command, json: bool) -> OpResult<Format> {
    let out = match cmd {
        Command::Devices(a) => a.out,
        Command::Device { out, .. }
        | Command::Bundles(out)
        | Command::Deployments { out, .. }
        | Command::Config(ConfigCommand::Get { out, .. }) => *out,
        // Generated text has no other rendering.
        Command::Completions { .. } | Command::Man { .. } => return Ok(Format::Text),
        _ => OutputArgs::default(),
    };
    match (out.output, json) {
        (Some(f), false) => Ok(f),
        (None, json) => Ok(if json { Format::Json } else { Format::Text }),
        (Some(Format::Json), true) => Ok(Format::Json),
        (Some(_), true) => Err(OpError::Usage(
            "--json and -o say different formats: give one".into(),
        )),
    }
}

/// Why a scripted command did not produce its data.
#[derive(Debug)]
pub(crate) enum OpError {
    /// Bad arguments, found before anything was sent (exit 2).
    Usage(String),
    /// The API call failed: refused (exit 1) or unreachable (exit 2).
    Api(ApiError),
    /// The operation itself failed (exit 1).
    Failed(String),
}

impl OpError {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            OpError::Usage(_) => 2,
            OpError::Api(e) => e.exit_code(),
            OpError::Failed(_) => 1,
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Usage(m) | OpError::Failed(m) => f.write_str(m),
            OpError::Api(e) => e.fmt(f),
        }
    }
}

impl From<ApiError> for OpError {
    fn from(e: ApiError) -> Self {
        OpError::Api(e)
    }
}

pub(crate) type OpResult<T> = Result<T, OpError>;

/// What a command produced: its data in both renderings, and whether the operation
/// failed even though there is data to show (a deployment that ended `failed` under
/// `--wait`, a wait that timed out).
#[derive(Debug)]
pub(crate) struct Report {
    data: serde_json::Value,
    human: String,
    /// `-o wide`, where it differs from the text.
    wide: Option<String>,
    /// Printed to stderr when there is nothing on stdout (an empty list).
    empty_note: Option<String>,
    failure: Option<String>,
}

impl Report {
    pub(crate) fn new(data: &impl Serialize, human: String) -> OpResult<Report> {
        let data = serde_json::to_value(data)
            .map_err(|e| OpError::Failed(format!("cannot encode the result: {e}")))?;
        Ok(Report {
            data,
            human,
            wide: None,
            empty_note: None,
            failure: None,
        })
    }

    /// Plain text for commands with nothing to encode (completions, man, logout).
    pub(crate) fn text(human: String) -> Report {
        Report {
            data: serde_json::Value::Null,
            human,
            wide: None,
            empty_note: None,
            failure: None,
        }
    }

    /// The `-o wide` rendering.
    pub(crate) fn wide(mut self, wide: String) -> Report {
        self.wide = Some(wide);
        self
    }

    /// When the human rendering is empty, say this on stderr instead.
    pub(crate) fn when_empty(mut self, note: &str) -> Report {
        self.empty_note = Some(note.to_owned());
        self
    }

    /// The operation failed; the data is still printed.
    pub(crate) fn failed(mut self, why: String) -> Report {
        self.failure = Some(why);
        self
    }

    /// The text `format` asks for (`None`: nothing for stdout).
    fn render(&mut self, format: Format) -> OpResult<Option<String>> {
        let human = match format {
            Format::Json => {
                let json = serde_json::to_string_pretty(&self.data)
                    .map_err(|e| OpError::Failed(format!("cannot encode as JSON: {e}")))?;
                return Ok(Some(json + "\n"));
            }
            Format::Yaml => {
                return serde_norway::to_string(&self.data)
                    .map(Some)
                    .map_err(|e| OpError::Failed(format!("cannot encode as YAML: {e}")));
            }
            Format::Wide => self.wide.take().unwrap_or(std::mem::take(&mut self.human)),
            Format::Text => std::mem::take(&mut self.human),
        };
        Ok((!human.is_empty()).then_some(human))
    }

    /// Print and return the exit code. Stdout going away mid-way is not an error of the
    /// operation: the exit code stays what the operation earned.
    fn emit(mut self, format: Format) -> u8 {
        let mut code = 0;
        let text = match self.render(format) {
            Ok(Some(text)) => Some(text),
            Ok(None) => {
                if let Some(note) = &self.empty_note {
                    output::note(note);
                }
                None
            }
            Err(e) => {
                output::error(&e);
                code = 1;
                None
            }
        };
        if let Some(text) = text
            && let Err(e) = output::stdout(&text)
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            output::error(&format!("cannot write the output: {e}"));
            code = 1;
        }
        if let Some(why) = &self.failure {
            output::error(why);
            code = 1;
        }
        code
    }
}

/// The API client, made only once the arguments are known to be good.
fn connect(conn: &ConnArgs) -> OpResult<Api> {
    Ok(Api::from_conn(conn)?)
}

/// A device or deployment id as the server mints them; anything else cannot exist, so it
/// is a usage error rather than a request.
fn check_id(what: &str, id: &str) -> OpResult<()> {
    if kernex_common::validate::is_valid_id(id) {
        Ok(())
    } else {
        Err(OpError::Usage(format!(
            "invalid {what} id {id:?}: ids are 1-64 characters of [A-Za-z0-9_-]"
        )))
    }
}

/// A tag as the server accepts them.
fn check_tag(t: &str) -> OpResult<()> {
    if kernex_common::validate::is_valid_tag(t) {
        Ok(())
    } else {
        Err(OpError::Usage(format!(
            "invalid tag {t:?}: tags are 1-64 characters of [A-Za-z0-9._:-]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_any_request() {
        assert!(check_id("device", "0198a3f2c1d47c3e9b2a5f0e1d2c3b4a").is_ok());
        let err = check_id("device", "a/b").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("invalid device id \"a/b\""),
            "{err}"
        );
        assert_eq!(check_id("device", "").unwrap_err().exit_code(), 2);
        assert_eq!(
            check_id("device", &"a".repeat(65)).unwrap_err().exit_code(),
            2
        );
    }

    #[test]
    fn a_failed_report_still_carries_its_data() {
        let r = Report::new(&serde_json::json!({"status": "failed"}), "x\n".into())
            .unwrap()
            .failed("deployment failed".into());
        assert_eq!(r.failure.as_deref(), Some("deployment failed"));
        assert_eq!(r.data["status"], "failed");
    }

    #[test]
    fn every_format_renders_the_same_data() {
        let data = serde_json::json!([{"device_id": "d1", "tags": ["a", "b"]}]);
        let report = || Report::new(&data, "ID\nd1\n".into()).unwrap();
        let json = report().render(Format::Json).unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            data
        );
        let yaml = report().render(Format::Yaml).unwrap().unwrap();
        assert_eq!(yaml, "- device_id: d1\n  tags:\n  - a\n  - b\n");
        let back: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, data);
        assert_eq!(report().render(Format::Text).unwrap().unwrap(), "ID\nd1\n");
        // Without a wide rendering, wide is the text.
        assert_eq!(report().render(Format::Wide).unwrap().unwrap(), "ID\nd1\n");
        let wide = report().wide("ID  AGENT\n".into());
        assert_eq!(
            { wide }.render(Format::Wide).unwrap().unwrap(),
            "ID  AGENT\n"
        );
    }

    #[test]
    fn json_and_a_different_output_format_conflict() {
        use crate::cli::Cli;
        use clap::Parser;
        let fmt = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            output_format(&cli.command.unwrap(), cli.json).map_err(|e| e.exit_code())
        };
        assert_eq!(fmt(&["k", "devices", "-o", "yaml"]), Ok(Format::Yaml));
        assert_eq!(fmt(&["k", "--json", "bundles"]), Ok(Format::Json));
        assert_eq!(
            fmt(&["k", "config", "get", "abcdef", "-o", "json", "--json"]),
            Ok(Format::Json)
        );
        assert_eq!(fmt(&["k", "deployments", "--json", "-o", "wide"]), Err(2));
        assert_eq!(fmt(&["k", "device", "abcdef"]), Ok(Format::Text));
    }
}
