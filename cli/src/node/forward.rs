//! Forwards one gRPC service from the local socket to a manager over mutual TLS.
//!
//! `berth` only ever talks to its local `berthd`; cluster calls (the Control API) are passed
//! through unchanged to this node's manager with the node's own certificate, so the manager's
//! role checks apply to every call, whichever way it came in. A node with no manager answers
//! with the error Docker users know.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::Channel;

/// Names the forwarded service and says what to answer when there is no target.
pub trait Forwarded: Send + Sync + 'static {
    /// Full gRPC service name, e.g. `berth.v1.Control`.
    const NAME: &'static str;
    /// The error when this node cannot reach a target.
    const UNAVAILABLE: &'static str;
}

/// The cluster control API.
#[derive(Debug)]
pub struct Control;

impl Forwarded for Control {
    const NAME: &'static str = "berth.v1.Control";
    const UNAVAILABLE: &'static str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
}

/// `berth service logs`: log subscriptions, answered by the managers' log broker.
#[derive(Debug)]
pub struct Logs;

impl Forwarded for Logs {
    const NAME: &'static str = "berth.v1.Logs";
    const UNAVAILABLE: &'static str = Control::UNAVAILABLE;
}

/// The channel calls go to; `None` while the node is not a manager.
#[derive(Debug, Clone, Default)]
pub struct Target(Arc<RwLock<Option<Channel>>>);

impl Target {
    /// Points forwarded calls at `channel` (or nowhere).
    pub fn set(&self, channel: Option<Channel>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = channel;
    }

    fn get(&self) -> Option<Channel> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A tonic service forwarding every call of `F` to the current [`Target`].
#[derive(Debug)]
pub struct Forward<F> {
    target: Target,
    _service: PhantomData<F>,
}

impl<F> Clone for Forward<F> {
    fn clone(&self) -> Self {
        Self {
            target: self.target.clone(),
            _service: PhantomData,
        }
    }
}

impl<F: Forwarded> Forward<F> {
    /// Forwards to `target`.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            _service: PhantomData,
        }
    }
}

impl<F: Forwarded> NamedService for Forward<F> {
    const NAME: &'static str = F::NAME;
}

impl<F: Forwarded> Service<Request<Body>> for Forward<F> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let target = self.target.get();
        Box::pin(async move {
            let Some(mut channel) = target else {
                return Ok(tonic::Status::failed_precondition(F::UNAVAILABLE).into_http());
            };
            let ready = std::future::poll_fn(|cx| channel.poll_ready(cx)).await;
            let result = match ready {
                Ok(()) => channel.call(request).await,
                Err(err) => Err(err),
            };
            Ok(result.unwrap_or_else(|err| {
                tonic::Status::unavailable(format!("cannot reach this node's manager: {err}"))
                    .into_http()
            }))
        })
    }
}
