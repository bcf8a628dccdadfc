//! [`FakeExecutor`]: an in-memory [`Executor`] for tests of the worker, the session and the
//! dispatcher. Containers are map entries; a test makes one exit with
//! [`FakeExecutor::exit`], looks at what happened with [`FakeExecutor::calls`] and
//! [`FakeExecutor::state`], and can keep the executor (its "containers") across a worker
//! restart to test adoption. Never used outside tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use berth_proto::v1::{ContainerStatus, Task};
use tokio::sync::watch;

use super::executor::{
    Adopted, BoxFuture, Controller, Dependencies, ExecError, Executor, ExitStatus, Observed,
};

/// Exit code of a container stopped by the default stop signal (128 + SIGTERM).
pub const SIGTERM_EXIT: i32 = 143;

/// A fake container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeState {
    /// Prepared, not started.
    Created,
    /// Running with this pid.
    Running(i32),
    /// Ended.
    Exited(ExitStatus),
}

#[derive(Debug)]
struct FakeContainer {
    state: watch::Sender<FakeState>,
}

#[derive(Debug, Default)]
struct Inner {
    // None = every image is present.
    images: Option<BTreeSet<String>>,
    containers: HashMap<String, FakeContainer>,
    calls: Vec<(String, &'static str)>,
    deps: HashMap<String, Dependencies>,
    next_pid: i32,
    /// How long each prepare takes (after it is recorded).
    prepare_delay: std::time::Duration,
}

/// The in-memory executor (cheap to clone; clones share their containers).
#[derive(Debug, Clone, Default)]
pub struct FakeExecutor {
    inner: Arc<Mutex<Inner>>,
}

impl FakeExecutor {
    /// An executor on which every image is present.
    pub fn new() -> Self {
        Self::default()
    }

    /// An executor on which only `images` are present; preparing a task of another image
    /// fails with [`ExecError::ImageNotFound`].
    pub fn with_images<I: IntoIterator<Item = S>, S: Into<String>>(images: I) -> Self {
        let fake = Self::default();
        fake.lock().images = Some(images.into_iter().map(Into::into).collect());
        fake
    }

    /// Makes every prepare take `delay` (like an image pull or a container creation).
    pub fn with_prepare_delay(self, delay: std::time::Duration) -> Self {
        self.lock().prepare_delay = delay;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `task_id`'s running container exit with `code`. False if it was not running.
    pub fn exit(&self, task_id: &str, code: i32) -> bool {
        let inner = self.lock();
        let Some(c) = inner.containers.get(task_id) else {
            return false;
        };
        c.state.send_if_modified(|s| match s {
            FakeState::Running(_) => {
                *s = FakeState::Exited(ExitStatus {
                    code,
                    oom_killed: false,
                });
                true
            }
            _ => false,
        })
    }

    /// The state of `task_id`'s container, if one exists.
    pub fn state(&self, task_id: &str) -> Option<FakeState> {
        self.lock()
            .containers
            .get(task_id)
            .map(|c| *c.state.borrow())
    }

    /// Tasks whose container is running, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lock()
            .containers
            .iter()
            .filter(|(_, c)| matches!(*c.state.borrow(), FakeState::Running(_)))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The controller calls made for `task_id`, in order ("prepare", "start", "wait",
    /// "shutdown", "remove", "adopt").
    pub fn calls(&self, task_id: &str) -> Vec<&'static str> {
        self.lock()
            .calls
            .iter()
            .filter(|(id, _)| id == task_id)
            .map(|(_, op)| *op)
            .collect()
    }

    /// The dependencies the last controller of `task_id` was given.
    pub fn dependencies(&self, task_id: &str) -> Option<Dependencies> {
        self.lock().deps.get(task_id).cloned()
    }

    fn controller_for(&self, task: &Task, deps: Dependencies) -> FakeController {
        let image = task
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map(|c| c.image.clone())
            .unwrap_or_default();
        self.lock().deps.insert(task.id.clone(), deps);
        FakeController {
            task_id: task.id.clone(),
            image,
            fake: self.clone(),
        }
    }
}

impl Executor for FakeExecutor {
    fn controller(
        &self,
        task: &Task,
        deps: Dependencies,
    ) -> Result<Box<dyn Controller>, ExecError> {
        Ok(Box::new(self.controller_for(task, deps)))
    }

    fn adopt(&self, task: &Task, deps: Dependencies) -> BoxFuture<'_, Result<Adopted, ExecError>> {
        let controller = self.controller_for(task, deps);
        let observed = {
            let mut inner = self.lock();
            inner.calls.push((task.id.clone(), "adopt"));
            match inner.containers.get(&task.id).map(|c| *c.state.borrow()) {
                None => Observed::Missing,
                Some(FakeState::Created) => Observed::Created,
                Some(FakeState::Running(pid)) => Observed::Running { pid },
                Some(FakeState::Exited(exit)) => Observed::Exited(exit),
            }
        };
        Box::pin(async move {
            Ok(Adopted {
                controller: Box::new(controller),
                observed,
            })
        })
    }
}

/// A controller of [`FakeExecutor`].
#[derive(Debug)]
pub struct FakeController {
    task_id: String,
    image: String,
    fake: FakeExecutor,
}

impl FakeController {
    fn record(&self, inner: &mut Inner, op: &'static str) {
        inner.calls.push((self.task_id.clone(), op));
    }

    /// The end of a prepare: the image must be present; the container is created.
    fn finish_prepare(&self) -> Result<(), ExecError> {
        let mut inner = self.fake.lock();
        let present = inner
            .images
            .as_ref()
            .is_none_or(|images| images.contains(&self.image));
        if !present {
            return Err(ExecError::ImageNotFound {
                image: self.image.clone(),
            });
        }
        inner
            .containers
            .entry(self.task_id.clone())
            .or_insert_with(|| FakeContainer {
                state: watch::Sender::new(FakeState::Created),
            });
        Ok(())
    }
}

impl Controller for FakeController {
    fn prepare(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        let delay = {
            let mut inner = self.fake.lock();
            self.record(&mut inner, "prepare");
            inner.prepare_delay
        };
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            self.finish_prepare()
        })
    }

    fn start(&self) -> BoxFuture<'_, Result<ContainerStatus, ExecError>> {
        let r = {
            let mut inner = self.fake.lock();
            self.record(&mut inner, "start");
            inner.next_pid += 1;
            let pid = 1000 + inner.next_pid;
            match inner.containers.get(&self.task_id) {
                None => Err(ExecError::ContainerNotFound {
                    task_id: self.task_id.clone(),
                }),
                Some(c) => {
                    let mut running_pid = pid;
                    c.state.send_if_modified(|s| match s {
                        FakeState::Created => {
                            *s = FakeState::Running(pid);
                            true
                        }
                        FakeState::Running(p) => {
                            running_pid = *p;
                            false
                        }
                        FakeState::Exited(_) => false,
                    });
                    Ok(ContainerStatus {
                        container_id: self.task_id.clone(),
                        pid: running_pid,
                        ..Default::default()
                    })
                }
            }
        };
        Box::pin(async move { r })
    }

    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ExecError>> {
        let rx = {
            let mut inner = self.fake.lock();
            self.record(&mut inner, "wait");
            inner
                .containers
                .get(&self.task_id)
                .map(|c| c.state.subscribe())
        };
        Box::pin(async move {
            let Some(mut rx) = rx else {
                return Err(ExecError::ContainerNotFound {
                    task_id: self.task_id.clone(),
                });
            };
            loop {
                if let FakeState::Exited(exit) = *rx.borrow_and_update() {
                    return Ok(exit);
                }
                if rx.changed().await.is_err() {
                    return Err(ExecError::ContainerNotFound {
                        task_id: self.task_id.clone(),
                    });
                }
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<Option<ExitStatus>, ExecError>> {
        let r = {
            let mut inner = self.fake.lock();
            self.record(&mut inner, "shutdown");
            inner.containers.get(&self.task_id).and_then(|c| {
                let mut out = None;
                c.state.send_if_modified(|s| match *s {
                    FakeState::Running(_) => {
                        let exit = ExitStatus {
                            code: SIGTERM_EXIT,
                            oom_killed: false,
                        };
                        *s = FakeState::Exited(exit);
                        out = Some(exit);
                        true
                    }
                    FakeState::Exited(exit) => {
                        out = Some(exit);
                        false
                    }
                    FakeState::Created => false,
                });
                out
            })
        };
        Box::pin(async move { Ok(r) })
    }

    fn remove(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        {
            let mut inner = self.fake.lock();
            self.record(&mut inner, "remove");
            inner.containers.remove(&self.task_id);
        }
        Box::pin(async move { Ok(()) })
    }
}
