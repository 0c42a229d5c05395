//! `courier serve`'s settings from three places besides its flags: a TOML file (`--config
//! FILE`), `COURIER_*` environment variables, and the defaults. Every flag of `serve` has a key
//! in the file (its name without the dashes, `data-dir` or `data_dir`) and a variable
//! (`COURIER_DATA_DIR`). A flag on the command line wins over the variable, the variable over
//! the file, the file over the default.
//!
//! Done before clap parses anything: the file's and the environment's settings become flags
//! inserted right after `serve`, for the ones the command line does not give, so clap checks
//! every value as it checks flags (and says what is wrong in the same words).

use std::collections::BTreeMap;
use std::ffi::OsString;

use anyhow::{bail, Context};

/// What one of `serve`'s flags is.
struct Flag {
    long: String,
    /// A switch (`--push-include-content`) rather than a flag with a value.
    switch: bool,
}

fn flags(serve: &clap::Command) -> Vec<Flag> {
    serve
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_owned();
            Some(Flag {
                switch: !a.get_action().takes_values(),
                long,
            })
        })
        .filter(|f| f.long != "config" && f.long != "help")
        .collect()
}

/// The environment variable of flag `long` (`data-dir` -> `COURIER_DATA_DIR`).
pub(crate) fn env_name(long: &str) -> String {
    format!("COURIER_{}", long.replace('-', "_").to_ascii_uppercase())
}

/// A setting's value as the flag's text.
fn text(key: &str, v: &toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("{key}: a {} is no flag's value", other.type_str()),
    })
}

/// The command line to parse, and where each setting that was not on it came from (for
/// error messages: `--max-body` came from `COURIER_MAX_BODY`).
pub(crate) struct Expanded {
    pub(crate) args: Vec<OsString>,
    pub(crate) sources: Vec<(String, String)>,
}

/// `args` (the process's, program name first) with `serve`'s settings from `--config FILE` and
/// the environment (`env`) inserted after `serve`. Other commands pass through unchanged.
pub(crate) fn expand(
    args: Vec<OsString>,
    serve: &clap::Command,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Expanded> {
    let unchanged = |args| {
        Ok(Expanded {
            args,
            sources: Vec::new(),
        })
    };
    let Some(at) = args.iter().position(|a| a == "serve") else {
        return unchanged(args);
    };
    if args[1..at]
        .iter()
        .any(|a| !a.to_string_lossy().starts_with('-'))
    {
        return unchanged(args); // "serve" is some other command's value
    }
    let given: Vec<String> = args[at + 1..]
        .iter()
        .filter_map(|a| {
            let a = a.to_str()?.strip_prefix("--")?;
            Some(a.split('=').next().unwrap_or(a).to_owned())
        })
        .collect();
    let config_path = {
        let mut path = None;
        let mut rest = args[at + 1..].iter();
        while let Some(a) = rest.next() {
            let a = a.to_string_lossy();
            if a == "--config" {
                path = rest.next().map(|p| p.to_string_lossy().into_owned());
            } else if let Some(p) = a.strip_prefix("--config=") {
                path = Some(p.to_owned());
            }
        }
        path.or_else(|| env(&env_name("config")))
    };
    let known = flags(serve);
    let mut file: BTreeMap<String, toml::Value> = BTreeMap::new();
    if let Some(path) = &config_path {
        let raw = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
        let table: toml::Table = raw
            .parse()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{path}: {}", e.message()))?;
        for (key, v) in table {
            let long = key.replace('_', "-");
            if !known.iter().any(|f| f.long == long) {
                bail!(
                    "{path}: unknown setting {key:?} (settings are serve's flags without the dashes; see `courier serve --help`)"
                );
            }
            file.insert(long, v);
        }
    }
    let mut inserted: Vec<OsString> = Vec::new();
    let mut sources = Vec::new();
    for f in &known {
        if given.contains(&f.long) {
            continue;
        }
        let (value, from) = match env(&env_name(&f.long)) {
            Some(v) => (v, env_name(&f.long)),
            None => match file.get(&f.long) {
                Some(v) => (
                    text(&f.long, v).with_context(|| config_path.clone().unwrap_or_default())?,
                    format!(
                        "{} in {}",
                        f.long,
                        config_path.as_deref().unwrap_or_default()
                    ),
                ),
                None => continue,
            },
        };
        sources.push((format!("--{}", f.long), from.clone()));
        if f.switch {
            match value.as_str() {
                "true" | "1" | "yes" => inserted.push(format!("--{}", f.long).into()),
                "false" | "0" | "no" | "" => {}
                other => bail!("{from}: {other:?} is not true or false"),
            }
        } else {
            inserted.push(format!("--{}={value}", f.long).into());
        }
    }
    let mut out = args;
    out.splice(at + 1..at + 1, inserted);
    Ok(Expanded { args: out, sources })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        Serve(S),
        Other { x: String },
    }

    #[derive(clap::Args, Debug)]
    struct S {
        #[arg(long)]
        config: Option<String>,
        #[arg(long, default_value = "a")]
        listen: String,
        #[arg(long, default_value_t = 1)]
        shards: usize,
        #[arg(long)]
        push_include_content: bool,
        #[arg(long)]
        data_dir: Option<String>,
    }

    fn serve_cmd() -> clap::Command {
        S::augment_args(clap::Command::new("serve"))
    }

    fn parse(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<S> {
        let args: Vec<OsString> = args.iter().map(Into::into).collect();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let out = expand(args, &serve_cmd(), |k| env.get(k).cloned())?;
        match Cli::try_parse_from(out.args)?.command {
            Cmd::Serve(s) => Ok(s),
            Cmd::Other { .. } => bail!("not serve"),
        }
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"file\"\nshards = 4\npush_include_content = true\ndata-dir = \"/d\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let s = parse(&["courier", "serve", "--config", f], &[]).unwrap();
        assert_eq!(
            (s.listen.as_str(), s.shards, s.push_include_content),
            ("file", 4, true)
        );
        assert_eq!(s.data_dir.as_deref(), Some("/d"));
        let s = parse(
            &["courier", "serve", "--config", f],
            &[
                ("COURIER_SHARDS", "8"),
                ("COURIER_PUSH_INCLUDE_CONTENT", "false"),
            ],
        )
        .unwrap();
        assert_eq!((s.shards, s.push_include_content), (8, false));
        let s = parse(
            &["courier", "serve", "--shards", "2", "--config", f],
            &[("COURIER_SHARDS", "8")],
        )
        .unwrap();
        assert_eq!((s.shards, s.listen.as_str()), (2, "file"));
        // The file may also be named by COURIER_CONFIG; without any, the defaults hold.
        let s = parse(&["courier", "serve"], &[("COURIER_CONFIG", f)]).unwrap();
        assert_eq!(s.shards, 4);
        let s = parse(&["courier", "serve"], &[]).unwrap();
        assert_eq!((s.listen.as_str(), s.shards), ("a", 1));
    }

    #[test]
    fn bad_settings_are_refused_with_where_they_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let f = file.to_str().unwrap();
        let e = parse(&["courier", "serve", "--config", f], &[]).unwrap_err();
        assert!(e.to_string().contains("unknown setting \"lisen\""), "{e}");
        std::fs::write(&file, "shards = \"many\"\n").unwrap();
        let e = parse(&["courier", "serve", "--config", f], &[]).unwrap_err();
        assert!(e.to_string().contains("many"), "{e}");
        std::fs::write(&file, "shards = [1, 2]\n").unwrap();
        assert!(parse(&["courier", "serve", "--config", f], &[]).is_err());
        std::fs::write(&file, "shards = \n").unwrap();
        let e = parse(&["courier", "serve", "--config", f], &[]).unwrap_err();
        assert!(e.to_string().contains(f), "{e}");
        let e = parse(
            &["courier", "serve"],
            &[("COURIER_PUSH_INCLUDE_CONTENT", "maybe")],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("COURIER_PUSH_INCLUDE_CONTENT"),
            "{e}"
        );
        let e = parse(&["courier", "serve", "--config", "/nonexistent.toml"], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent.toml"), "{e:#}");
    }

    #[test]
    fn other_commands_pass_through() {
        let args: Vec<OsString> = ["courier", "other", "serve"]
            .iter()
            .map(Into::into)
            .collect();
        assert_eq!(
            expand(args.clone(), &serve_cmd(), |_| None).unwrap().args,
            args
        );
    }

    #[test]
    fn the_example_file_names_only_real_settings() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/courier.example.toml");
        let serve = crate::ServeArgs::augment_args(clap::Command::new("serve"));
        let args: Vec<OsString> = ["courier", "serve", "--config", example]
            .iter()
            .map(Into::into)
            .collect();
        let out = expand(args, &serve, |_| None).unwrap();
        assert!(out.sources.iter().any(|(flag, _)| flag == "--data-dir"));
        let cli = crate::Cli::try_parse_from(out.args).unwrap();
        assert!(matches!(cli.command, crate::Command::Serve(_)));
    }
}
