//! `berth-test-image`: writes the deterministic busybox test image for shell scripts.
//!
//! Usage: `berth-test-image --format oci-dir|oci-tar|docker-archive --out PATH [--ref NAME:TAG]
//! [--compression gzip|zstd|none] [--layers N]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use berth_tests::image::{Compression, DEFAULT_REF, OutputFormat, TestImage};

const USAGE: &str = "usage: berth-test-image --format oci-dir|oci-tar|docker-archive --out PATH \
[--ref NAME:TAG] [--compression gzip|zstd|none] [--layers N]";

struct Args {
    format: OutputFormat,
    out: PathBuf,
    reference: String,
    compression: Compression,
    layers: Option<usize>,
}

fn parse(mut argv: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut format = None;
    let mut out = None;
    let mut reference = DEFAULT_REF.to_string();
    let mut compression = Compression::Gzip;
    let mut layers = None;
    while let Some(flag) = argv.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = argv
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--format" => format = Some(value.parse::<OutputFormat>()?),
            "--out" => out = Some(PathBuf::from(value)),
            "--ref" => reference = value,
            "--compression" => {
                compression = Compression::parse(&value)
                    .with_context(|| format!("unknown compression {value:?}"))?;
            }
            "--layers" => {
                layers = Some(
                    value
                        .parse::<usize>()
                        .with_context(|| format!("--layers {value:?}"))?,
                );
            }
            _ => bail!("unknown flag {flag:?}"),
        }
    }
    Ok(Args {
        format: format.context("--format is required")?,
        out: out.context("--out is required")?,
        reference,
        compression,
        layers,
    })
}

fn run() -> anyhow::Result<()> {
    let args = parse(std::env::args().skip(1))?;
    let mut image = TestImage::busybox(args.reference).compression(args.compression);
    if let Some(n) = args.layers {
        image = image.layers(n);
    }
    let built = image.build()?;
    built
        .write(args.format, &args.out)
        .with_context(|| format!("writing {:?}", args.out))?;
    println!("{}", built.manifest_digest()?);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}
