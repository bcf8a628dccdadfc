//! `berth secret create|ls|inspect|rm|rotate`, and what `berth config` shares with it
//! ([`Kind`]: the Control calls of each; rows; name resolution; reading FILE or stdin).
//!
//! Output follows Docker's: `create` prints the id, `ls` the table `ID NAME DRIVER CREATED
//! UPDATED` (configs: `ID NAME CREATED UPDATED`), `inspect` a JSON array (`Spec.Data` in
//! base64 for configs only; a secret's data is never returned by the managers), `rm` each
//! name given. `rotate` (beyond Swarm) prints the new id and the services it rolls.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use base64::Engine as _;
use berth_proto::v1::{
    Annotations, Config, ConfigSpec, CreateConfigRequest, CreateSecretRequest, ListConfigsRequest,
    ListSecretsRequest, Meta, RemoveConfigRequest, RemoveSecretRequest, RotateConfigRequest,
    RotateSecretRequest, Secret, SecretSpec, list_configs_request, list_secrets_request,
};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::format::{ago, go_template, json_pretty, rfc3339};
use super::{Daemon, status_error};
use crate::table::Table;

/// `berth secret` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a secret from a file or STDIN as content
    Create(CreateArgs),
    /// List secrets
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more secrets
    Inspect(InspectArgs),
    /// Remove one or more secrets
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Replace a secret's content with a new version and update the services using it
    Rotate(RotateArgs),
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Labels (key=value)
    #[arg(short, long = "label")]
    pub labels: Vec<String>,
    /// Name
    pub name: String,
    /// File with the content, or "-" for standard input
    pub file: String,
}

/// `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter output based on conditions provided (id=, label=, name=)
    #[arg(short, long = "filter")]
    pub filters: Vec<String>,
    /// Format output (`table`, `json` or a Go template)
    #[arg(long)]
    pub format: Option<String>,
}

/// `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format output using a Go template
    #[arg(short, long)]
    pub format: Option<String>,
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Names or ids
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Names or ids
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Name or id of the current version
    pub name: String,
    /// File with the new content, or "-" for standard input
    pub file: String,
}

/// Secrets or configs: which Control calls, and how they print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `berth secret`.
    Secret,
    /// `berth config`.
    Config,
}

/// One secret or config as the commands show it.
#[derive(Debug, Clone, Default)]
pub struct Item {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Store bookkeeping.
    pub meta: Option<Meta>,
    /// The data (configs only).
    pub data: Option<Vec<u8>>,
}

fn labels_of(a: Option<&Annotations>) -> BTreeMap<String, String> {
    a.map(|a| a.labels.clone().into_iter().collect())
        .unwrap_or_default()
}

impl From<Secret> for Item {
    fn from(s: Secret) -> Item {
        let a = s.spec.as_ref().and_then(|s| s.annotations.as_ref());
        Item {
            name: a.map(|a| a.name.clone()).unwrap_or_default(),
            labels: labels_of(a),
            id: s.id,
            meta: s.meta,
            data: None,
        }
    }
}

impl From<Config> for Item {
    fn from(c: Config) -> Item {
        let a = c.spec.as_ref().and_then(|s| s.annotations.as_ref());
        Item {
            name: a.map(|a| a.name.clone()).unwrap_or_default(),
            labels: labels_of(a),
            id: c.id,
            meta: c.meta,
            data: c.spec.map(|s| s.data),
        }
    }
}

/// Parses `-l key=value` (a bare key has an empty value).
pub fn parse_labels(labels: &[String]) -> anyhow::Result<HashMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() {
                anyhow::bail!("invalid label {l:?}: empty key");
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The content of FILE, or of standard input for "-".
pub fn read_data(file: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| anyhow::anyhow!("error reading content from STDIN: {e}"))?;
    } else {
        data = std::fs::read(file).map_err(|e| anyhow::anyhow!("error reading {file:?}: {e}"))?;
    }
    Ok(data)
}

/// `ls -f` values: `id=`, `label=`, `name=`.
#[derive(Debug, Default, PartialEq)]
struct Filters {
    ids: Vec<String>,
    names: Vec<String>,
    labels: HashMap<String, String>,
}

fn parse_filters(filters: &[String]) -> anyhow::Result<Filters> {
    let mut f = Filters::default();
    for text in filters {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("bad format of filter (expected name=value)"))?;
        match key {
            "id" => f.ids.push(value.to_owned()),
            "name" => f.names.push(value.to_owned()),
            "label" => {
                let (k, v) = value.split_once('=').unwrap_or((value, ""));
                f.labels.insert(k.to_owned(), v.to_owned());
            }
            other => anyhow::bail!("invalid filter '{other}'"),
        }
    }
    Ok(f)
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    /// Objects matching: names are prefixes, like Docker's `name=` filter.
    async fn list(
        self,
        daemon: &mut Daemon,
        ids: Vec<String>,
        name_prefixes: Vec<String>,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<Vec<Item>> {
        Ok(match self {
            Kind::Secret => daemon
                .control
                .list_secrets(ListSecretsRequest {
                    filters: Some(list_secrets_request::Filters {
                        names: Vec::new(),
                        name_prefixes,
                        id_prefixes: ids,
                        labels,
                    }),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .secrets
                .into_iter()
                .map(Item::from)
                .collect(),
            Kind::Config => daemon
                .control
                .list_configs(ListConfigsRequest {
                    filters: Some(list_configs_request::Filters {
                        names: Vec::new(),
                        name_prefixes,
                        id_prefixes: ids,
                        labels,
                    }),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .configs
                .into_iter()
                .map(Item::from)
                .collect(),
        })
    }

    /// Finds one by full id, exact name, or unique id prefix (Docker's order).
    pub async fn resolve(self, daemon: &mut Daemon, name: &str) -> anyhow::Result<Item> {
        let all = self
            .list(daemon, Vec::new(), Vec::new(), HashMap::new())
            .await?;
        if let Some(i) = all.iter().find(|i| i.id == name) {
            return Ok(i.clone());
        }
        if let Some(i) = all.iter().find(|i| i.name == name) {
            return Ok(i.clone());
        }
        let by_prefix: Vec<&Item> = all.iter().filter(|i| i.id.starts_with(name)).collect();
        match by_prefix.as_slice() {
            [i] => Ok((*i).clone()),
            [] => anyhow::bail!("{} {name} not found", self.what()),
            many => anyhow::bail!(
                "{} {name} is ambiguous ({} matches)",
                self.what(),
                many.len()
            ),
        }
    }

    async fn create(
        self,
        daemon: &mut Daemon,
        annotations: Annotations,
        data: Vec<u8>,
    ) -> anyhow::Result<String> {
        Ok(match self {
            Kind::Secret => daemon
                .control
                .create_secret(CreateSecretRequest {
                    spec: Some(SecretSpec {
                        annotations: Some(annotations),
                        data,
                    }),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .secret
                .map(|s| s.id),
            Kind::Config => daemon
                .control
                .create_config(CreateConfigRequest {
                    spec: Some(ConfigSpec {
                        annotations: Some(annotations),
                        data,
                    }),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .config
                .map(|c| c.id),
        }
        .unwrap_or_default())
    }

    async fn remove(self, daemon: &mut Daemon, id: &str) -> anyhow::Result<()> {
        match self {
            Kind::Secret => {
                daemon
                    .control
                    .remove_secret(RemoveSecretRequest {
                        secret_id: id.to_owned(),
                    })
                    .await
                    .map_err(status_error)?;
            }
            Kind::Config => {
                daemon
                    .control
                    .remove_config(RemoveConfigRequest {
                        config_id: id.to_owned(),
                    })
                    .await
                    .map_err(status_error)?;
            }
        }
        Ok(())
    }

    async fn rotate(
        self,
        daemon: &mut Daemon,
        item: &Item,
        data: Vec<u8>,
    ) -> anyhow::Result<(String, Vec<String>)> {
        let version = item.meta.as_ref().map_or(0, |m| m.version);
        Ok(match self {
            Kind::Secret => {
                let r = daemon
                    .control
                    .rotate_secret(RotateSecretRequest {
                        secret_id: item.id.clone(),
                        secret_version: version,
                        data,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                (r.secret.map(|s| s.id).unwrap_or_default(), r.service_ids)
            }
            Kind::Config => {
                let r = daemon
                    .control
                    .rotate_config(RotateConfigRequest {
                        config_id: item.id.clone(),
                        config_version: version,
                        data,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                (r.config.map(|c| c.id).unwrap_or_default(), r.service_ids)
            }
        })
    }

    fn ls_json(self, i: &Item) -> Value {
        let mut v = json!({
            "ID": i.id,
            "Name": i.name,
            "CreatedAt": ago(i.meta.as_ref().and_then(|m| m.created_at.as_ref())),
            "UpdatedAt": ago(i.meta.as_ref().and_then(|m| m.updated_at.as_ref())),
            "Labels": i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        });
        if self == Kind::Secret {
            v["Driver"] = json!("");
        }
        v
    }

    /// `inspect` output, shaped like Docker's.
    pub fn inspect_json(self, i: &Item) -> Value {
        let mut spec = json!({"Name": i.name, "Labels": i.labels});
        if let Some(data) = &i.data {
            spec["Data"] = json!(base64::engine::general_purpose::STANDARD.encode(data));
        }
        json!({
            "ID": i.id,
            "Version": {"Index": i.meta.as_ref().map_or(0, |m| m.version)},
            "CreatedAt": rfc3339(i.meta.as_ref().and_then(|m| m.created_at.as_ref())),
            "UpdatedAt": rfc3339(i.meta.as_ref().and_then(|m| m.updated_at.as_ref())),
            "Spec": spec,
        })
    }
}

/// Runs `create`.
pub async fn create(daemon: &mut Daemon, kind: Kind, args: CreateArgs) -> anyhow::Result<()> {
    let labels = parse_labels(&args.labels)?;
    let data = read_data(&args.file)?;
    let id = kind
        .create(
            daemon,
            Annotations {
                name: args.name,
                labels,
            },
            data,
        )
        .await?;
    println!("{id}");
    Ok(())
}

/// Runs `ls`.
pub async fn ls(daemon: &mut Daemon, kind: Kind, args: LsArgs) -> anyhow::Result<()> {
    let f = parse_filters(&args.filters)?;
    let items = kind.list(daemon, f.ids, f.names, f.labels).await?;
    if args.quiet {
        for i in &items {
            println!("{}", i.id);
        }
        return Ok(());
    }
    match args.format.as_deref() {
        None | Some("table") => {
            let header: &[&str] = match kind {
                Kind::Secret => &["ID", "NAME", "DRIVER", "CREATED", "UPDATED"],
                Kind::Config => &["ID", "NAME", "CREATED", "UPDATED"],
            };
            let mut table = Table::new(header);
            for i in &items {
                let created = ago(i.meta.as_ref().and_then(|m| m.created_at.as_ref()));
                let updated = ago(i.meta.as_ref().and_then(|m| m.updated_at.as_ref()));
                let mut row = vec![i.id.clone(), i.name.clone()];
                if kind == Kind::Secret {
                    row.push(String::new());
                }
                row.extend([created, updated]);
                table.row(row);
            }
            print!("{}", table.render());
        }
        Some("json") => {
            for i in &items {
                println!("{}", kind.ls_json(i));
            }
        }
        Some(template) => {
            for i in &items {
                let line = go_template(template, &kind.ls_json(i)).map_err(anyhow::Error::msg)?;
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// Runs `inspect`.
pub async fn inspect(daemon: &mut Daemon, kind: Kind, args: InspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for name in &args.names {
        found.push(kind.resolve(daemon, name).await?);
    }
    if let Some(template) = &args.format {
        for i in &found {
            let line = go_template(template, &kind.inspect_json(i)).map_err(anyhow::Error::msg)?;
            println!("{line}");
        }
        return Ok(());
    }
    if args.pretty {
        for (n, i) in found.iter().enumerate() {
            if n > 0 {
                println!();
            }
            println!("ID:              {}", i.id);
            println!("Name:            {}", i.name);
            if !i.labels.is_empty() {
                println!("Labels:");
                for (k, v) in &i.labels {
                    println!(" - {k}={v}");
                }
            }
            if kind == Kind::Secret {
                println!("Driver:");
            }
            println!(
                "Created at:      {}",
                rfc3339(i.meta.as_ref().and_then(|m| m.created_at.as_ref()))
            );
            println!(
                "Updated at:      {}",
                rfc3339(i.meta.as_ref().and_then(|m| m.updated_at.as_ref()))
            );
            if let Some(data) = &i.data {
                println!("Data:");
                println!("{}", String::from_utf8_lossy(data));
            }
        }
        return Ok(());
    }
    let all: Vec<Value> = found.iter().map(|i| kind.inspect_json(i)).collect();
    println!("{}", json_pretty(&Value::Array(all)));
    Ok(())
}

/// Runs `rm`: every name is tried; the first error is returned after the others.
pub async fn rm(daemon: &mut Daemon, kind: Kind, args: RmArgs) -> anyhow::Result<()> {
    let mut first_error = None;
    for name in &args.names {
        let result = match kind.resolve(daemon, name).await {
            Ok(item) => kind.remove(daemon, &item.id).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs `rotate`.
pub async fn rotate(daemon: &mut Daemon, kind: Kind, args: RotateArgs) -> anyhow::Result<()> {
    let item = kind.resolve(daemon, &args.name).await?;
    let data = read_data(&args.file)?;
    let (id, services) = kind.rotate(daemon, &item, data).await?;
    println!("{id}");
    if !services.is_empty() {
        eprintln!(
            "updating {} service(s) using {} {}: {}",
            services.len(),
            kind.what(),
            item.name,
            services.join(", ")
        );
    }
    Ok(())
}

/// Runs one `berth secret` command.
pub async fn run(daemon: &mut Daemon, command: SecretCommand) -> anyhow::Result<()> {
    let kind = Kind::Secret;
    match command {
        SecretCommand::Create(args) => create(daemon, kind, args).await,
        SecretCommand::Ls(args) => ls(daemon, kind, args).await,
        SecretCommand::Inspect(args) => inspect(daemon, kind, args).await,
        SecretCommand::Rm(args) => rm(daemon, kind, args).await,
        SecretCommand::Rotate(args) => rotate(daemon, kind, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_labels_parse_like_dockers() {
        let f =
            parse_filters(&["name=db".into(), "label=env=prod".into(), "id=ab".into()]).unwrap();
        assert_eq!(f.names, ["db"]);
        assert_eq!(f.ids, ["ab"]);
        assert_eq!(f.labels["env"], "prod");
        assert!(parse_filters(&["driver=x".into()]).is_err());
        assert!(parse_filters(&["name".into()]).is_err());
        let l = parse_labels(&["a=1".into(), "b".into()]).unwrap();
        assert_eq!((l["a"].as_str(), l["b"].as_str()), ("1", ""));
        assert!(parse_labels(&["=x".into()]).is_err());
    }

    #[test]
    fn inspect_shows_config_data_in_base64_and_never_secret_data() {
        let config = Item::from(Config {
            id: "c1".into(),
            spec: Some(ConfigSpec {
                annotations: Some(Annotations {
                    name: "app".into(),
                    ..Default::default()
                }),
                data: b"port=80".to_vec(),
            }),
            ..Default::default()
        });
        let v = Kind::Config.inspect_json(&config);
        assert_eq!(v["Spec"]["Data"], "cG9ydD04MA==");
        assert_eq!(v["Spec"]["Name"], "app");
        let secret = Item::from(Secret {
            id: "s1".into(),
            spec: Some(SecretSpec {
                data: b"leaked?".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let v = Kind::Secret.inspect_json(&secret);
        assert!(v["Spec"].get("Data").is_none(), "{v}");
    }
}
