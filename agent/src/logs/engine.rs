//! [`EngineLogs`]: task logs from the node's [`Engine`]. A task's container is named after the
//! task (`<service>.<slot>.<task id>`, see the worker's `EngineExecutor`), and its log is the
//! engine's JSON-lines file, read with the engine's own tail/since/follow reader.

use berth_proto::naming::task_name;
use berth_proto::v1::{ContainerLogsRequest, LogSubscriptionOptions, Task};
use tokio_stream::StreamExt;

use super::{BoxFuture, LineStream, LogsError, TaskLogs};
use crate::engine::{Engine, EngineError};

/// Reads task logs from an engine's containers.
#[derive(Debug, Clone)]
pub struct EngineLogs {
    engine: Engine,
}

impl EngineLogs {
    /// Logs of `engine`'s task containers.
    pub fn new(engine: Engine) -> Self {
        EngineLogs { engine }
    }
}

impl TaskLogs for EngineLogs {
    fn open(
        &self,
        task: &Task,
        options: &LogSubscriptionOptions,
    ) -> BoxFuture<'_, Result<Option<LineStream>, LogsError>> {
        let request = ContainerLogsRequest {
            container: task_name(task),
            follow: options.follow,
            tail: options.tail.filter(|t| *t >= 0),
            since: options.since,
        };
        let task_id = task.id.clone();
        Box::pin(async move {
            match self.engine.container_logs(request).await {
                Ok(stream) => {
                    let lines = stream.map(move |item| {
                        item.map_err(|s| LogsError::Read {
                            task: task_id.clone(),
                            message: s.message().to_owned(),
                        })
                    });
                    Ok(Some(Box::pin(lines) as LineStream))
                }
                Err(EngineError::NoSuchContainer(_)) => Ok(None),
                Err(e) => Err(LogsError::Read {
                    task: task_id,
                    message: e.to_string(),
                }),
            }
        })
    }
}
