//! `ImagePull` and the worker's pull of a missing image: the network part runs on the
//! engine's [`Puller`](crate::image::pull::Puller), the import on a blocking thread; layer
//! progress streams to the caller as Docker words it.

use berth_proto::v1::{self, ImagePullMessage, ImagePullProgress, ImagePullRequest};
use tokio::sync::mpsc;

use super::{Engine, EngineError, MessageStream, convert};
use crate::image::pull::{Credentials, LayerStatus, PullOptions, PullProgress};
use crate::image::{Digest, Image, Reference};

/// A finished pull.
struct Pulled {
    image: Image,
    /// The digest the reference resolved to.
    digest: Digest,
}

fn progress_message(p: &PullProgress) -> ImagePullMessage {
    ImagePullMessage {
        kind: Some(v1::image_pull_message::Kind::Progress(ImagePullProgress {
            digest: p.digest.to_string(),
            status: p.status.as_str().to_owned(),
            current: i64::try_from(p.current).unwrap_or(i64::MAX),
            total: i64::try_from(p.total).unwrap_or(i64::MAX),
        })),
    }
}

impl Engine {
    /// `ImagePull`: streams layer progress, then the image (with the digest it was pulled
    /// by in `repo_digests`). A bad reference fails the call itself; a failed pull ends the
    /// stream with the error.
    pub async fn image_pull(
        &self,
        req: ImagePullRequest,
    ) -> Result<MessageStream<ImagePullMessage>, EngineError> {
        let reference = Reference::parse(&req.reference)?;
        let platform = req.platform.unwrap_or_default();
        let opts = PullOptions {
            insecure: req.insecure_registry,
            credentials: Credentials::parse(&req.registry_auth),
            os: Some(platform.os).filter(|s| !s.is_empty()),
            architecture: Some(platform.architecture).filter(|s| !s.is_empty()),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = self.clone();
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let progress = move |p: PullProgress| {
                let _ = progress_tx.send(Ok(progress_message(&p)));
            };
            let last = match engine.pull(&reference, &opts, &progress).await {
                Ok(pulled) => {
                    let mut info = convert::image_info(&pulled.image);
                    info.repo_digests = vec![format!("{}@{}", reference.name(), pulled.digest)];
                    Ok(ImagePullMessage {
                        kind: Some(v1::image_pull_message::Kind::Image(info)),
                    })
                }
                Err(e) => Err(tonic::Status::from(e)),
            };
            let _ = tx.send(last);
        });
        Ok(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }

    /// Pulls `reference` with the node's settings (credentials from the daemon's file), as
    /// the worker does for a task whose image is missing.
    pub async fn pull_image(&self, reference: &str) -> Result<Image, EngineError> {
        let reference = Reference::parse(reference)?;
        let pulled = self
            .pull(&reference, &PullOptions::default(), &|_| {})
            .await?;
        Ok(pulled.image)
    }

    async fn pull(
        &self,
        reference: &Reference,
        opts: &PullOptions,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Pulled, EngineError> {
        let fetched = self
            .inner
            .puller
            .fetch(&self.inner.images, reference, opts, progress)
            .await?;
        let digest = fetched.digest().clone();
        let downloaded = fetched.downloaded().to_vec();
        let image = self
            .blocking(move |inner| Ok(fetched.import(&inner.images)?))
            .await?;
        for d in downloaded {
            progress(PullProgress {
                digest: d,
                status: LayerStatus::PullComplete,
                current: 0,
                total: 0,
            });
        }
        Ok(Pulled { image, digest })
    }
}
