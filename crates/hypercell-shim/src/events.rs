//! The task events a shim publishes to containerd, which tell it (and `ctr events`,
//! and the kubelet through it) that a task was made, started, paused, resumed, exited
//! or deleted.

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, warn};

/// Publishes events for the containers of one namespace.
pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

/// The stdio of a created task, as its event reports it.
pub struct CreatedIo<'a> {
    /// The stdin FIFO.
    pub stdin: &'a str,
    /// The stdout FIFO.
    pub stdout: &'a str,
    /// The stderr FIFO.
    pub stderr: &'a str,
}

impl Events {
    /// Events published through `publisher` in `namespace`.
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        Self {
            publisher,
            namespace,
        }
    }

    /// A task was made from the bundle at `bundle`.
    pub fn created(&self, id: &str, bundle: &str, io: CreatedIo<'_>, pid: u32) {
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id.into(),
                bundle: bundle.into(),
                io: Some(TaskIO {
                    stdin: io.stdin.into(),
                    stdout: io.stdout.into(),
                    stderr: io.stderr.into(),
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        );
    }

    /// A task started.
    pub fn started(&self, id: &str, pid: u32) {
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id.into(),
                pid,
                ..Default::default()
            }),
        );
    }

    /// A task's program ended with `status` at `at`.
    pub fn exited(&self, id: &str, pid: u32, status: u32, at: &Timestamp) {
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.into(),
                id: id.into(),
                pid,
                exit_status: status,
                exited_at: Some(at.clone()).into(),
                ..Default::default()
            }),
        );
    }

    /// A task was deleted.
    pub fn deleted(&self, id: &str, pid: u32, status: u32, at: &Timestamp) {
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.into(),
                id: id.into(),
                pid,
                exit_status: status,
                exited_at: Some(at.clone()).into(),
                ..Default::default()
            }),
        );
    }

    /// A task was paused.
    pub fn paused(&self, id: &str) {
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: id.into(),
                ..Default::default()
            }),
        );
    }

    /// A task was resumed.
    pub fn resumed(&self, id: &str) {
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: id.into(),
                ..Default::default()
            }),
        );
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        // containerd learns a task's state from the task API too (its Wait and State
        // calls), so an event that cannot be delivered is logged, not fatal.
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
        {
            warn!("cannot publish {topic}: {e}");
        }
    }
}
