//! [`SimulatedExecutor`]: runs no containers at all. Every task prepares and starts at once,
//! "runs" until it is shut down, and is adopted as still running after a restart.
//!
//! For scale benchmarks only (thousands of simulated nodes on one machine measure the
//! managers, not the runtime). `berthd` uses it only when started with an explicit flag, and
//! says so in its node description's engine labels.

use berth_proto::v1::{ContainerStatus, Task};

use super::executor::{
    Adopted, BoxFuture, Controller, Dependencies, ExecError, Executor, ExitStatus, Observed,
};

/// Engine label a simulated node carries (`engine.labels.berth.simulated=true`).
pub const SIMULATED_LABEL: &str = "berth.simulated";

/// The executor of simulated nodes (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatedExecutor;

struct SimulatedController {
    task_id: String,
}

impl Executor for SimulatedExecutor {
    fn controller(
        &self,
        task: &Task,
        _deps: Dependencies,
    ) -> Result<Box<dyn Controller>, ExecError> {
        Ok(Box::new(SimulatedController {
            task_id: task.id.clone(),
        }))
    }

    fn adopt(&self, task: &Task, _deps: Dependencies) -> BoxFuture<'_, Result<Adopted, ExecError>> {
        let controller: Box<dyn Controller> = Box::new(SimulatedController {
            task_id: task.id.clone(),
        });
        Box::pin(async move {
            Ok(Adopted {
                controller,
                observed: Observed::Running { pid: 0 },
            })
        })
    }
}

impl Controller for SimulatedController {
    fn prepare(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async { Ok(()) })
    }

    fn start(&self) -> BoxFuture<'_, Result<ContainerStatus, ExecError>> {
        let cs = ContainerStatus {
            container_id: format!("simulated-{}", self.task_id),
            ..Default::default()
        };
        Box::pin(async move { Ok(cs) })
    }

    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ExecError>> {
        // A simulated task never ends on its own.
        Box::pin(std::future::pending())
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<Option<ExitStatus>, ExecError>> {
        Box::pin(async {
            Ok(Some(ExitStatus {
                code: 0,
                oom_killed: false,
            }))
        })
    }

    fn remove(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async { Ok(()) })
    }
}
