//! containerd's task API (shim v2, as containerd 1.6 and 1.7 speak it), served for
//! the containers of one shim: a container, or the containers of one pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::EnumOrUnknown;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult, api};

use crate::container::{Container, ContainerError, Phase, pid};
use crate::events::Events;
use crate::templates::TemplateCache;

/// The task service of one shim.
pub struct TaskService {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    events: Arc<Events>,
    templates: Option<TemplateCache>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    /// A service publishing through `events`, keeping templates in `templates`, that
    /// raises `exit` when containerd shuts it down with no container left.
    pub fn new(events: Events, templates: Option<TemplateCache>, exit: Arc<ExitSignal>) -> Self {
        Self {
            containers: Mutex::default(),
            events: Arc::new(events),
            templates,
            exit,
        }
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The container `id` of a request about its main process (`exec_id` empty).
    fn container(&self, id: &str, exec_id: &str) -> TtrpcResult<Arc<Container>> {
        if !exec_id.is_empty() {
            return Err(error(
                Code::NOT_FOUND,
                format!(
                    "process {exec_id} does not exist: a cell runs one program, with no exec processes"
                ),
            ));
        }
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| error(Code::NOT_FOUND, format!("container {id} does not exist")))
    }
}

fn error(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

impl From<ContainerError> for ttrpc::Error {
    fn from(e: ContainerError) -> Self {
        let code = match e {
            ContainerError::Create(_) => Code::INVALID_ARGUMENT,
            ContainerError::Ended => Code::NOT_FOUND,
            ContainerError::State(_) => Code::FAILED_PRECONDITION,
            ContainerError::Signal(_) => Code::INVALID_ARGUMENT,
        };
        error(code, e.to_string())
    }
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(error(
                Code::UNIMPLEMENTED,
                "a container cannot be restored from a containerd checkpoint",
            ));
        }
        if self.containers().contains_key(&req.id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let container = Container::create(
            &req.id,
            &req.bundle,
            &req.rootfs,
            [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
            req.terminal,
            self.templates.as_ref(),
            self.events.clone(),
        )?;
        self.containers().insert(req.id.clone(), container);
        Ok(api::CreateTaskResponse {
            pid: pid(),
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.container(&req.id, &req.exec_id)?.start()?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let state = self.container(&req.id, &req.exec_id)?.describe();
        let [stdin, stdout, stderr] = state.io;
        let mut response = api::StateResponse {
            id: req.id,
            bundle: state.bundle,
            pid: pid(),
            stdin,
            stdout,
            stderr,
            ..Default::default()
        };
        let status = match state.phase {
            Phase::Created => api::Status::CREATED,
            Phase::Running => api::Status::RUNNING,
            Phase::Paused => api::Status::PAUSED,
            Phase::Exited(exit) => {
                response.exit_status = exit.status;
                response.exited_at = Some(exit.at).into();
                api::Status::STOPPED
            }
        };
        response.status = EnumOrUnknown::new(status);
        Ok(response)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.container(&req.id, "")?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim::protos::types::task::ProcessInfo {
                pid: pid(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.container(&req.id, &req.exec_id)?.kill(req.signal)?;
        Ok(api::Empty::default())
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.container(&req.id, "")?.pause()?;
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.container(&req.id, "")?.resume()?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        // Waits from before the start too: `ctr run` asks first.
        let exit = self.container(&req.id, &req.exec_id)?.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let exit = self.container(&req.id, &req.exec_id)?.delete()?;
        self.containers().remove(&req.id);
        Ok(api::DeleteResponse {
            pid: pid(),
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let usage = self.container(&req.id, "")?.usage();
        let metrics = Metrics {
            cpu: Some(CPUStat {
                usage: Some(CPUUsage {
                    total: usage.cpu_ns,
                    user: usage.cpu_ns,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                rss: usage.memory,
                usage: Some(MemoryEntry {
                    usage: usage.memory,
                    limit: usage.memory_limit,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStat {
                current: 1,
                limit: 1,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        // As runc's shim reports them, so that `ctr task metrics` and the CRI read them.
        let stats = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| error(Code::INTERNAL, e.to_string()))?;
        Ok(api::StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, _req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        Err(error(
            Code::UNIMPLEMENTED,
            "a cell runs one program: exec is not supported",
        ))
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // The program's stdin is fed from the FIFO until its writer closes it, which
        // is what a client asking to close stdin has done.
        self.container(&req.id, &req.exec_id)?;
        Ok(api::Empty::default())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        self.container(&req.id, "")?;
        Ok(api::ConnectResponse {
            shim_pid: pid(),
            task_pid: pid(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // containerd asks after each delete; a shim serving a pod stays for the rest.
        if self.containers().is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
