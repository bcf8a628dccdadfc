//! `berth image load|pull|ls|inspect|rm`: the node's local image store, through its daemon.
//!
//! `berth image pull` sends the registry credentials with the request, read here (the
//! client's side, like Docker's `~/.docker/config.json`): `BERTH_REGISTRY_USER` and
//! `BERTH_REGISTRY_PASSWORD`, else the Docker-format file `$BERTH_CONFIG/config.json`
//! (default `~/.berth/config.json`: `{"auths": {"host:port": {"auth": "<base64 user:pass>"}}}`).
//! Without either the daemon uses its own file (`/etc/berth/auth.json`), else pulls
//! anonymously.

use std::io::Read;
use std::path::PathBuf;

use berth_agent::image::Reference;
use berth_agent::image::pull::{Credentials, credentials_from_file};
use berth_proto::v1::{
    ImageInfo, ImageInspectRequest, ImageListRequest, ImageLoadChunk, ImagePullRequest,
    ImageRemoveRequest, Platform, image_pull_message,
};
use clap::{Args, Subcommand};
use serde_json::json;

use super::container::{image_json, print_inspected};
use super::format::{ago, human_size, rfc3339};
use super::{Daemon, short_id, status_error};
use crate::table::Table;

/// Size of the pieces an archive is uploaded in.
const CHUNK: usize = 1 << 20;

/// `berth image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// List images
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more images
    Inspect(InspectArgs),
    /// Remove one or more images
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

/// `berth image load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short, long)]
    pub quiet: bool,
}

/// `berth image pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Reach the registry over plain HTTP instead of HTTPS
    #[arg(long)]
    pub insecure_registry: bool,
    /// Platform to pick from a multi-platform image (`os/arch`, default: the node's)
    #[arg(long)]
    pub platform: Option<String>,
    /// Suppress verbose output
    #[arg(short, long)]
    pub quiet: bool,
    /// Image to pull: `[registry[:port]/]repository[:tag|@digest]`
    pub name: String,
}

/// `berth image ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Format output (`json`)
    #[arg(long)]
    pub format: Option<String>,
    /// Only images of this repository (`REPOSITORY[:TAG]`)
    pub repository: Option<String>,
}

/// `berth image inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format output using a template (`{{.Config.Cmd}}`)
    #[arg(short, long)]
    pub format: Option<String>,
    /// Images
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// `berth image rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove every tag of an image given by id
    #[arg(short, long)]
    pub force: bool,
    /// Images
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Runs one `berth image` command.
pub async fn run(daemon: &mut Daemon, command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Load(args) => load(daemon, args).await,
        ImageCommand::Pull(args) => pull(daemon, args).await,
        ImageCommand::Ls(args) => ls(daemon, args).await,
        ImageCommand::Inspect(args) => {
            let mut values = Vec::new();
            let mut errors = Vec::new();
            for image in args.images {
                match daemon
                    .node
                    .image_inspect(ImageInspectRequest { image })
                    .await
                {
                    Ok(r) => values.extend(r.into_inner().image.as_ref().map(image_json)),
                    Err(s) => errors.push(s.message().to_string()),
                }
            }
            print_inspected(&values, args.format.as_deref())?;
            finish(errors)
        }
        ImageCommand::Rm(args) => {
            let mut errors = Vec::new();
            for image in args.images {
                match daemon
                    .node
                    .image_remove(ImageRemoveRequest {
                        image,
                        force: args.force,
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        for t in r.untagged {
                            println!("Untagged: {t}");
                        }
                        for d in r.deleted {
                            println!("Deleted: {d}");
                        }
                    }
                    Err(s) => errors.push(s.message().to_string()),
                }
            }
            finish(errors)
        }
    }
}

fn finish(mut errors: Vec<String>) -> anyhow::Result<()> {
    match errors.pop() {
        None => Ok(()),
        Some(last) => {
            for e in errors {
                eprintln!("Error: {e}");
            }
            anyhow::bail!("{last}")
        }
    }
}

/// Reads the archive on a blocking thread and streams it to the daemon.
async fn load(daemon: &mut Daemon, args: LoadArgs) -> anyhow::Result<()> {
    let mut reader: Box<dyn Read + Send> = match &args.input {
        Some(path) => Box::new(
            std::fs::File::open(path)
                .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?,
        ),
        None => {
            if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
                anyhow::bail!(
                    "requested load from stdin, but stdin is empty (give a file with -i or pipe one in)"
                );
            }
            Box::new(std::io::stdin())
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<ImageLoadChunk>(4);
    let reading = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if tx.blocking_send(ImageLoadChunk { data: buf }).is_err() {
                return Ok(());
            }
        }
    });
    let result = daemon
        .node
        .image_load(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reading
        .await
        .map_err(|e| anyhow::anyhow!("reading the archive: {e}"))?
        .map_err(|e| anyhow::anyhow!("reading the archive: {e}"))?;
    let images = result.map_err(status_error)?.into_inner().images;
    if !args.quiet {
        for i in &images {
            if i.repo_tags.is_empty() {
                println!("Loaded image ID: {}", i.id);
            }
            for t in &i.repo_tags {
                println!("Loaded image: {t}");
            }
        }
    }
    Ok(())
}

/// Credentials for `registry` (`None` = Docker Hub) from the environment or the client's
/// credentials file (see the module docs).
fn registry_credentials(registry: Option<&str>) -> anyhow::Result<Option<Credentials>> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(username) = var("BERTH_REGISTRY_USER") {
        return Ok(Some(Credentials {
            username,
            password: var("BERTH_REGISTRY_PASSWORD").unwrap_or_default(),
        }));
    }
    let dir = match (var("BERTH_CONFIG"), var("HOME")) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(home)) => PathBuf::from(home).join(".berth"),
        (None, None) => return Ok(None),
    };
    Ok(credentials_from_file(&dir.join("config.json"), registry)?)
}

/// `berth image pull`: streams the daemon's progress as Docker prints it.
async fn pull(daemon: &mut Daemon, args: PullArgs) -> anyhow::Result<()> {
    let reference = Reference::parse(&args.name)?;
    let platform = match args.platform.as_deref() {
        None => None,
        Some(p) => match p.split_once('/') {
            Some((os, arch)) if !os.is_empty() && !arch.is_empty() => Some(Platform {
                os: os.to_owned(),
                architecture: arch.to_owned(),
            }),
            _ => anyhow::bail!("invalid platform {p:?}: expected os/arch, e.g. linux/amd64"),
        },
    };
    let credentials = registry_credentials(reference.registry())?;
    let shown = reference.to_string();
    let before = daemon
        .node
        .image_inspect(ImageInspectRequest {
            image: shown.clone(),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().image)
        .map(|i| i.id);
    let mut stream = daemon
        .node
        .image_pull(ImagePullRequest {
            reference: args.name.clone(),
            platform,
            registry_auth: credentials.map(|c| c.to_pair()).unwrap_or_default(),
            insecure_registry: args.insecure_registry,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let tag_or_digest = match (reference.digest(), reference.tag()) {
        (Some(d), _) => d.to_string(),
        (None, t) => t.unwrap_or("latest").to_owned(),
    };
    if !args.quiet {
        println!("{tag_or_digest}: Pulling from {}", reference.repository());
    }
    let mut downloaded = false;
    let mut image = None;
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        match msg.kind {
            Some(image_pull_message::Kind::Progress(p)) => {
                let short = short_id(p.digest.trim_start_matches("sha256:")).to_string();
                match p.status.as_str() {
                    "Pull complete" => {
                        downloaded = true;
                        if !args.quiet {
                            println!("{short}: Pull complete");
                        }
                    }
                    "Already exists" if !args.quiet => println!("{short}: Already exists"),
                    _ => {}
                }
            }
            Some(image_pull_message::Kind::Image(i)) => image = Some(i),
            None => {}
        }
    }
    let image =
        image.ok_or_else(|| anyhow::anyhow!("the daemon ended the pull without an image"))?;
    if !args.quiet {
        if let Some(d) = image.repo_digests.first().and_then(|d| d.rsplit_once('@')) {
            println!("Digest: {}", d.1);
        }
        if !downloaded && before.as_deref() == Some(image.id.as_str()) {
            println!("Status: Image is up to date for {shown}");
        } else {
            println!("Status: Downloaded newer image for {shown}");
        }
    }
    println!("{}", reference.full());
    Ok(())
}

/// `repo:tag` → (`repo`, `tag`); the tag follows the last ':' after the last '/'.
pub fn split_tag(reference: &str) -> (&str, &str) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (&reference[..slash + i], &reference[slash + i + 1..]),
        None => (reference, "latest"),
    }
}

fn rows(images: &[ImageInfo], filter: Option<&str>) -> Vec<(String, String, ImageInfo)> {
    let mut out = Vec::new();
    for i in images {
        if i.repo_tags.is_empty() {
            if filter.is_none() {
                out.push(("<none>".into(), "<none>".into(), i.clone()));
            }
            continue;
        }
        for t in &i.repo_tags {
            let (repo, tag) = split_tag(t);
            let wanted = match filter {
                None => true,
                Some(f) if f.contains(':') => {
                    let (frepo, ftag) = split_tag(f);
                    frepo == repo && ftag == tag
                }
                Some(f) => f == repo,
            };
            if wanted {
                out.push((repo.to_string(), tag.to_string(), i.clone()));
            }
        }
    }
    out
}

/// `berth image ls`.
async fn ls(daemon: &mut Daemon, args: LsArgs) -> anyhow::Result<()> {
    let images = daemon
        .node
        .image_list(ImageListRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .images;
    let rows = rows(&images, args.repository.as_deref());
    let id = |i: &ImageInfo| {
        if args.no_trunc {
            i.id.clone()
        } else {
            short_id(i.id.trim_start_matches("sha256:")).to_string()
        }
    };
    if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for (_, _, i) in &rows {
            if seen.insert(i.id.clone()) {
                println!("{}", id(i));
            }
        }
        return Ok(());
    }
    match args.format.as_deref() {
        Some("json") => {
            for (repo, tag, i) in &rows {
                let line = json!({
                    "Repository": repo,
                    "Tag": tag,
                    "ID": id(i),
                    "CreatedAt": rfc3339(i.created.as_ref()),
                    "CreatedSince": ago(i.created.as_ref()),
                    "Size": human_size(i.size),
                });
                println!("{line}");
            }
            return Ok(());
        }
        Some(other) => anyhow::bail!("unsupported format {other:?}: expected json"),
        None => {}
    }
    let mut table = Table::new(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
    for (repo, tag, i) in &rows {
        table.row(vec![
            repo.clone(),
            tag.clone(),
            id(i),
            ago(i.created.as_ref()),
            human_size(i.size),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_after_the_last_slash() {
        assert_eq!(split_tag("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(
            split_tag("localhost:5000/app:1"),
            ("localhost:5000/app", "1")
        );
        assert_eq!(
            split_tag("localhost:5000/app"),
            ("localhost:5000/app", "latest")
        );
    }

    #[test]
    fn one_row_per_tag_and_dangling_images_show_none() {
        let a = ImageInfo {
            id: "sha256:aa".into(),
            repo_tags: vec!["x/a:1".into(), "x/a:2".into()],
            ..Default::default()
        };
        let b = ImageInfo {
            id: "sha256:bb".into(),
            ..Default::default()
        };
        let all = rows(&[a.clone(), b], None);
        let names: Vec<(String, String)> =
            all.iter().map(|(r, t, _)| (r.clone(), t.clone())).collect();
        assert_eq!(
            names,
            vec![
                ("x/a".into(), "1".into()),
                ("x/a".into(), "2".into()),
                ("<none>".into(), "<none>".into())
            ]
        );
        assert_eq!(rows(std::slice::from_ref(&a), Some("x/a:2")).len(), 1);
        assert_eq!(rows(&[a], Some("x/a")).len(), 2);
    }
}
