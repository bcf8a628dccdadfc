//! [`EngineExecutor`]: the production executor. Runs each task as a container of the node's
//! [`Engine`] (image store + native runtime), named like Docker names swarm task containers
//! (`<service>.<slot>.<task id>`), so a restarted worker finds its containers again by name.
//!
//! The task's `ContainerSpec` becomes the engine's `ContainerConfig` field by field (image,
//! entrypoint, args, env, workdir, user, hostname, limits, read-only, init, capabilities,
//! mounts, ulimits, stop signal and grace period), with Docker's swarm labels added
//! (`com.docker.swarm.task.id`, `.task.name`, `.service.id`, `.service.name`, `.node.id`).
//!
//! An image missing on the node is pulled once from the registry its reference names (with
//! the node's pull settings, [`crate::image::pull`]); an image that cannot be pulled here
//! rejects the task with Docker's `No such image` reason, plus the pull's error if it failed.
//!
//! The healthcheck goes to the engine, which resolves it over the image's `HEALTHCHECK` and
//! probes the running container; [`Controller::health`] hands the runner its health.
//!
//! Secrets and configs ([`Dependencies`], kept in memory by the worker) are written into a
//! fresh tmpfs under the executor's task-files root and bind-mounted read-only into the
//! container when it is created (`/run/secrets/<target>`, configs at their paths); the tmpfs
//! is then detached from the host, so only the container holds them ([`crate::secrets`]).
//! An executor without a task-files root refuses tasks that use them.
//!
//! A task on overlay networks is attached by the node's data path ([`crate::network`]) before
//! its container is created: the container joins the prepared namespace and gets the
//! embedded DNS in `/etc/resolv.conf`; removing the task detaches it. Other tasks get the
//! engine's default network mode (their own namespace with loopback only).

use std::path::PathBuf;
use std::sync::Arc;

use berth_proto::naming::task_name;
use berth_proto::v1::{
    ContainerConfig, ContainerCreateRequest, ContainerInspectRequest, ContainerRemoveRequest,
    ContainerStartRequest, ContainerState, ContainerStatus, ContainerStopRequest,
    ContainerWaitRequest, Task,
};

use super::executor::{
    Adopted, BoxFuture, Controller, Dependencies, ExecError, Executor, ExitStatus, HealthWatch,
    Observed,
};
use crate::engine::{Engine, EngineError};
use crate::network::NetworkAgent;
use crate::secrets::{self, FilesPlan, TaskFiles};

/// Runs tasks on the node's engine (see the module docs).
#[derive(Debug, Clone)]
pub struct EngineExecutor {
    engine: Engine,
    /// The node's data path (`None`: tasks on networks get no attachment).
    network: Option<NetworkAgent>,
    /// Where tasks' tmpfs mounts are made (`None`: secrets and configs are refused).
    task_files: Option<Arc<PathBuf>>,
}

impl EngineExecutor {
    /// An executor running containers on `engine`, without secrets and configs.
    pub fn new(engine: Engine) -> Self {
        EngineExecutor {
            engine,
            network: None,
            task_files: None,
        }
    }

    /// Attaches the containers of tasks on overlay networks through `network`.
    pub fn with_network(mut self, network: NetworkAgent) -> Self {
        self.network = Some(network);
        self
    }

    /// Delivers secrets and configs through tmpfs mounts made under `root` (a directory of the
    /// agent's state; what an earlier daemon left there is removed now).
    pub fn with_task_files(mut self, root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        if let Err(e) = crate::secrets::sweep(&root) {
            tracing::warn!(?root, error = %e, "could not sweep the task files root");
        }
        self.task_files = Some(Arc::new(root));
        self
    }
}

/// The engine configuration of `task`'s container.
pub fn container_config(task: &Task) -> Result<ContainerConfig, ExecError> {
    let spec = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .ok_or_else(|| ExecError::InvalidSpec("the task has no container spec".into()))?;
    if spec.image.is_empty() {
        return Err(ExecError::InvalidSpec("the task names no image".into()));
    }
    let limits = task
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let mut labels = spec.labels.clone();
    let service = task
        .service_annotations
        .as_ref()
        .map(|a| a.name.clone())
        .unwrap_or_default();
    for (k, v) in [
        ("com.docker.swarm.task.id", task.id.clone()),
        ("com.docker.swarm.task.name", task_name(task)),
        ("com.docker.swarm.service.id", task.service_id.clone()),
        ("com.docker.swarm.service.name", service),
        ("com.docker.swarm.node.id", task.node_id.clone()),
    ] {
        labels.insert(k.to_owned(), v);
    }
    Ok(ContainerConfig {
        image: spec.image.clone(),
        cmd: spec.args.clone(),
        entrypoint: spec.command.clone(),
        env: spec.env.clone(),
        workdir: spec.dir.clone(),
        user: spec.user.clone(),
        hostname: spec.hostname.clone(),
        memory: limits.map_or(0, |l| l.memory_bytes),
        nano_cpus: limits.map_or(0, |l| l.nano_cpus),
        pids_limit: limits.map_or(0, |l| l.pids),
        read_only: spec.read_only,
        init: spec.init.unwrap_or(false),
        cap_add: spec.cap_add.clone(),
        cap_drop: spec.cap_drop.clone(),
        auto_remove: false,
        labels,
        mounts: spec.mounts.clone(),
        stop_signal: spec.stop_signal.clone(),
        stop_grace_period: spec.stop_grace_period,
        network_mode: 0,
        ulimits: spec.ulimits.clone(),
        healthcheck: spec.healthcheck.clone(),
        ..ContainerConfig::default()
    })
}

/// The error with its causes, joined by ": ".
fn failed(e: &EngineError) -> ExecError {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        cause = c.source();
    }
    ExecError::Failed(text)
}

/// What exists of a container, from its inspect answer.
fn observed_of(state: i32, pid: i32, exit_code: i32, oom_killed: bool) -> Observed {
    match ContainerState::try_from(state) {
        Ok(ContainerState::Created) => Observed::Created,
        Ok(ContainerState::Running) => Observed::Running { pid },
        Ok(ContainerState::Exited) => Observed::Exited(ExitStatus {
            code: exit_code,
            oom_killed,
        }),
        // Being removed, or half gone: nothing to run or wait for.
        _ => Observed::Missing,
    }
}

struct EngineController {
    engine: Engine,
    /// The data path, and the task, for tasks on networks.
    network: Option<(NetworkAgent, Box<Task>)>,
    name: String,
    image: String,
    config: Result<ContainerConfig, ExecError>,
    /// The task's files, planned from the secrets and configs the worker holds.
    files: Result<FilesPlan, ExecError>,
    task_files: Option<Arc<PathBuf>>,
}

impl EngineController {
    fn new(exec: &EngineExecutor, task: &Task, deps: &Dependencies) -> Self {
        let files = task
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map_or_else(
                || Ok(FilesPlan::default()),
                |c| secrets::plan(c, &deps.secrets, &deps.configs),
            )
            .map_err(|e| ExecError::InvalidSpec(e.to_string()));
        EngineController {
            engine: exec.engine.clone(),
            network: exec
                .network
                .clone()
                .filter(|_| NetworkAgent::wants(task))
                .map(|n| (n, Box::new(task.clone()))),
            files,
            task_files: exec.task_files.clone(),
            name: task_name(task),
            image: task
                .spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .map(|c| c.image.clone())
                .unwrap_or_default(),
            config: container_config(task),
        }
    }

    /// Writes the task's secrets and configs into a fresh tmpfs and adds its binds to
    /// `config`; `None` when the task uses none.
    async fn materialize(
        &self,
        config: &mut ContainerConfig,
    ) -> Result<Option<TaskFiles>, ExecError> {
        let plan = self.files.clone()?;
        if plan.is_empty() {
            return Ok(None);
        }
        let root = self.task_files.clone().ok_or_else(|| {
            ExecError::InvalidSpec("secrets and configs are not supported on this node".into())
        })?;
        let name = self.name.clone();
        let (files, mounts) =
            tokio::task::spawn_blocking(move || TaskFiles::materialize(&root, &name, &plan))
                .await
                .map_err(|e| ExecError::Failed(format!("writing the task's files: {e}")))?
                .map_err(|e| ExecError::Failed(format!("writing the task's files: {e}")))?;
        config.mounts.extend(mounts);
        Ok(Some(files))
    }

    /// Attaches the task to its networks and points `config` at the attachment (nothing for
    /// tasks without networks).
    async fn attach(&self, config: &mut ContainerConfig) -> Result<(), ExecError> {
        if let Some((network, task)) = &self.network {
            network.prepare_container(task, config).await.map_err(|e| {
                ExecError::Failed(format!("attaching the task to its networks: {e}"))
            })?;
        }
        Ok(())
    }

    /// The container's state, `None` when it does not exist.
    async fn inspect(&self) -> Result<Option<(Observed, String)>, ExecError> {
        let r = self
            .engine
            .container_inspect(ContainerInspectRequest {
                container: self.name.clone(),
            })
            .await;
        match r {
            Ok(resp) => {
                let c = resp.container.unwrap_or_default();
                Ok(Some((
                    observed_of(c.state, c.pid, c.exit_code, c.oom_killed),
                    c.id,
                )))
            }
            Err(EngineError::NoSuchContainer(_)) => Ok(None),
            Err(e) => Err(failed(&e)),
        }
    }
}

impl Executor for EngineExecutor {
    fn controller(
        &self,
        task: &Task,
        deps: Dependencies,
    ) -> Result<Box<dyn Controller>, ExecError> {
        Ok(Box::new(EngineController::new(self, task, &deps)))
    }

    fn adopt(&self, task: &Task, deps: Dependencies) -> BoxFuture<'_, Result<Adopted, ExecError>> {
        let controller = EngineController::new(self, task, &deps);
        Box::pin(async move {
            let observed = controller
                .inspect()
                .await?
                .map_or(Observed::Missing, |(o, _)| o);
            if matches!(observed, Observed::Running { .. } | Observed::Created)
                && let Ok(mut config) = controller.config.clone()
                && let Err(e) = controller.attach(&mut config).await
            {
                // The container keeps running; its DNS and balancing wait for the next try.
                tracing::warn!(task = %controller.name, error = %e, "re-attaching an adopted task failed");
            }
            Ok(Adopted {
                controller: Box::new(controller),
                observed,
            })
        })
    }
}

impl Controller for EngineController {
    fn prepare(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move {
            let mut config = self.config.clone()?;
            self.attach(&mut config).await?;
            if self.inspect().await?.is_some() {
                return Ok(());
            }
            let files = self.materialize(&mut config).await?;
            let create = |config: ContainerConfig| {
                self.engine.container_create(ContainerCreateRequest {
                    config: Some(config),
                    name: self.name.clone(),
                })
            };
            let mut created = create(config.clone()).await;
            if matches!(created, Err(EngineError::NoSuchImage(_))) {
                match self.engine.pull_image(&self.image).await {
                    Ok(_) => created = create(config).await,
                    Err(EngineError::Pull(e)) if e.is_not_pullable() => {}
                    Err(e) => {
                        return Err(ExecError::Failed(format!(
                            "No such image: {}: pulling it failed: {}",
                            self.image,
                            failed(&e)
                        )));
                    }
                }
            }
            if let Some(files) = files {
                // The container's mount namespace holds the binds now (or creation failed):
                // either way the host copy goes.
                let _ = tokio::task::spawn_blocking(move || {
                    if let Err(e) = files.detach() {
                        tracing::warn!(error = %e, "could not detach a task's tmpfs");
                    }
                })
                .await;
            }
            match created {
                Ok(_) => Ok(()),
                Err(EngineError::NoSuchImage(_)) => Err(ExecError::ImageNotFound {
                    image: self.image.clone(),
                }),
                // Created concurrently by an earlier attempt: fine.
                Err(EngineError::NameInUse { .. }) => Ok(()),
                Err(e) => Err(failed(&e)),
            }
        })
    }

    fn start(&self) -> BoxFuture<'_, Result<ContainerStatus, ExecError>> {
        Box::pin(async move {
            self.engine
                .container_start(ContainerStartRequest {
                    container: self.name.clone(),
                })
                .await
                .map_err(|e| failed(&e))?;
            let (observed, id) = self
                .inspect()
                .await?
                .ok_or_else(|| ExecError::Failed("the container vanished after starting".into()))?;
            let pid = match observed {
                Observed::Running { pid } => pid,
                _ => 0,
            };
            Ok(ContainerStatus {
                container_id: id,
                pid,
                ..Default::default()
            })
        })
    }

    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ExecError>> {
        Box::pin(async move {
            match self
                .engine
                .container_wait(ContainerWaitRequest {
                    container: self.name.clone(),
                })
                .await
            {
                Ok(r) => Ok(ExitStatus {
                    code: r.exit_code,
                    oom_killed: r.oom_killed,
                }),
                Err(EngineError::NoSuchContainer(_)) => Err(ExecError::ContainerNotFound {
                    task_id: self.name.clone(),
                }),
                Err(e) => Err(failed(&e)),
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<Option<ExitStatus>, ExecError>> {
        Box::pin(async move {
            match self.inspect().await? {
                None | Some((Observed::Missing | Observed::Created, _)) => Ok(None),
                Some((Observed::Exited(exit), _)) => Ok(Some(exit)),
                Some((Observed::Running { .. }, _)) => {
                    // The container's own stop signal and grace period apply.
                    self.engine
                        .container_stop(ContainerStopRequest {
                            container: self.name.clone(),
                            timeout: None,
                        })
                        .await
                        .map_err(|e| failed(&e))?;
                    Ok(self.inspect().await?.and_then(|(o, _)| match o {
                        Observed::Exited(exit) => Some(exit),
                        _ => None,
                    }))
                }
            }
        })
    }

    fn remove(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move {
            match self
                .engine
                .container_remove(ContainerRemoveRequest {
                    container: self.name.clone(),
                    force: true,
                })
                .await
            {
                Ok(_) | Err(EngineError::NoSuchContainer(_)) => {}
                Err(e) => return Err(failed(&e)),
            }
            if let Some((network, task)) = &self.network {
                network.detach(&task.id).await.map_err(|e| {
                    ExecError::Failed(format!("detaching the task from its networks: {e}"))
                })?;
            }
            Ok(())
        })
    }

    fn health(&self) -> Option<HealthWatch> {
        self.engine.container_health(&self.name).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{
        Annotations, ContainerSpec, ResourceRequirements, Resources, SecretReference, TaskSpec,
    };

    use super::*;

    fn task() -> Task {
        Task {
            id: "t1abc".into(),
            service_id: "s1".into(),
            node_id: "n1".into(),
            slot: 2,
            service_annotations: Some(Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox:latest".into(),
                    command: vec!["/bin/sh".into()],
                    args: vec!["-c".into(), "exit 3".into()],
                    env: vec!["A=1".into()],
                    dir: "/tmp".into(),
                    user: "1000".into(),
                    init: Some(true),
                    stop_signal: "SIGQUIT".into(),
                    ..Default::default()
                }),
                resources: Some(ResourceRequirements {
                    limits: Some(Resources {
                        nano_cpus: 500_000_000,
                        memory_bytes: 64 << 20,
                        pids: 100,
                    }),
                    reservations: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_container_config_follows_the_task_spec() -> Result<(), ExecError> {
        let t = task();
        let c = container_config(&t)?;
        assert_eq!(c.image, "busybox:latest");
        assert_eq!(c.entrypoint, vec!["/bin/sh"]);
        assert_eq!(c.cmd, vec!["-c", "exit 3"]);
        assert_eq!((c.workdir.as_str(), c.user.as_str()), ("/tmp", "1000"));
        assert_eq!(
            (c.memory, c.nano_cpus, c.pids_limit),
            (64 << 20, 500_000_000, 100)
        );
        assert!(c.init && !c.auto_remove);
        assert_eq!(c.stop_signal, "SIGQUIT");
        assert_eq!(c.labels["com.docker.swarm.task.id"], "t1abc");
        assert_eq!(c.labels["com.docker.swarm.task.name"], "web.2.t1abc");
        assert_eq!(c.labels["com.docker.swarm.service.name"], "web");
        assert_eq!(task_name(&t), "web.2.t1abc");
        Ok(())
    }

    #[test]
    fn unsupported_or_missing_specs_are_refused_with_a_reason() {
        let mut t = task();
        if let Some(c) = t.spec.as_mut().and_then(|s| s.container.as_mut()) {
            c.secrets.push(SecretReference::default());
        }
        // Secrets are delivered at prepare time, not through the container configuration.
        assert!(container_config(&t).is_ok());
        let mut t = task();
        t.spec = None;
        assert!(matches!(
            container_config(&t),
            Err(ExecError::InvalidSpec(_))
        ));
    }

    #[test]
    fn inspect_states_map_to_observations() {
        assert_eq!(
            observed_of(ContainerState::Created as i32, 0, 0, false),
            Observed::Created
        );
        assert_eq!(
            observed_of(ContainerState::Running as i32, 42, 0, false),
            Observed::Running { pid: 42 }
        );
        assert_eq!(
            observed_of(ContainerState::Exited as i32, 0, 137, true),
            Observed::Exited(ExitStatus {
                code: 137,
                oom_killed: true
            })
        );
        assert_eq!(
            observed_of(ContainerState::Dead as i32, 0, 0, false),
            Observed::Missing
        );
    }
}
