//! A cell kept between runs: every run starts from the same template, and once it
//! ends the partition is put back to the template in place (the pages the run wrote
//! dropped, the slots it added removed, the vCPU's state put back) rather than torn
//! down and made again. This is the fresh cell per request of a service, at the cost of
//! what the run changed rather than of a whole VM.

use std::sync::Arc;

use crate::cell::{
    CellError, CellFailure, CellPayload, CellReport, NextRequests, Partition, ResetReport, Reuse,
};
use crate::compile::CompiledModule;
use crate::config::CellConfig;
use crate::control::CellControl;
use crate::persist::{CellSnapshot, SavedPages};
use crate::stdio::CellStdio;
use crate::vcpu_runner::VcpuRunner;

/// A partition that runs cells from one template, one after another, each as fresh as
/// a new cell from the template.
pub struct ReusableCell {
    template: Arc<CellSnapshot>,
    module: Arc<CompiledModule>,
    cpu_features: u32,
    partition: Option<Partition>,
    /// The thread that runs the partition's vCPU, under its seccomp filter.
    runner: VcpuRunner,
    /// Whether a run has changed the partition since it was last put back.
    used: bool,
}

impl ReusableCell {
    /// A reusable cell for `template`, made for `module` compiled for `cpu_features`.
    /// The template's memory must come from a file: a run's pages are put back by
    /// dropping them, so that they read as the file again.
    pub fn new(
        template: Arc<CellSnapshot>,
        module: Arc<CompiledModule>,
        cpu_features: u32,
    ) -> Result<Self, CellError> {
        if template.template.is_none() {
            return Err(CellError::Reset(
                "it is a checkpoint, not a template: only templates start cells afresh".into(),
            ));
        }
        if !matches!(template.memory.pages, SavedPages::File { .. }) {
            return Err(CellError::Reset(
                "its template's memory was not loaded from a file, which a reused cell's pages go back to".into(),
            ));
        }
        let runner = VcpuRunner::start().map_err(|error| CellError::Thread(error.to_string()))?;
        Ok(Self {
            template,
            module,
            cpu_features,
            partition: None,
            runner,
            used: false,
        })
    }

    /// Runs one cell from the template, with the arguments, environment, preopens and
    /// limits of `config` and the stdio of `stdio`, to its end or until stopped through
    /// `control`. The partition is put back first if an earlier run used it and
    /// [`Self::reset`] was not called since.
    pub fn run(
        &mut self,
        config: &CellConfig,
        stdio: CellStdio<'_>,
        control: &CellControl,
    ) -> Result<CellReport, CellFailure> {
        self.run_with_input(config, stdio, None, control)
    }

    /// [`Self::run`] for a program whose whole stdin is `input` (also readable from
    /// `stdio.stdin`): from a template stopped at its start, the cell finds it laid in
    /// its memory when it fits beside the arguments and environment (about 200 KiB),
    /// and reads it with no exit; otherwise it reads `stdio.stdin`.
    pub fn run_with_input(
        &mut self,
        config: &CellConfig,
        stdio: CellStdio<'_>,
        input: Option<&[u8]>,
        control: &CellControl,
    ) -> Result<CellReport, CellFailure> {
        self.start(config, stdio, input, control, None)
    }

    /// [`Self::run_with_input`] for a server that lets one cell answer several requests
    /// in turn, at the cost of their isolation from each other: a runtime that can
    /// (a wasi:http component's) asks for the next request once it answered one, rather
    /// than ending its program. Each time, with the response in the cell's stdout,
    /// `next` is called on this thread for the next request, which the caller has put
    /// on the stdin descriptor too, or `None` to end the cell (its program then exits
    /// with status 0). Each request has the time limit of `config`; output limits count
    /// per request; memory is the cell's, and what one request grew stays grown.
    pub fn serve(
        &mut self,
        config: &CellConfig,
        stdio: CellStdio<'_>,
        input: Option<&[u8]>,
        control: &CellControl,
        next: &mut NextRequests<'_>,
    ) -> Result<CellReport, CellFailure> {
        self.start(config, stdio, input, control, Some(next))
    }

    fn start(
        &mut self,
        config: &CellConfig,
        stdio: CellStdio<'_>,
        input: Option<&[u8]>,
        control: &CellControl,
        next: Option<&mut NextRequests<'_>>,
    ) -> Result<CellReport, CellFailure> {
        if self.used {
            self.reset()?;
        }
        self.used = true;
        let payload = CellPayload::Wasm {
            module: &self.module,
            cpu_features: self.cpu_features,
        };
        crate::cell::run_in_partition(
            config,
            payload,
            &self.template,
            stdio,
            control,
            Reuse {
                kept: &mut self.partition,
                runner: &self.runner,
                input,
                next,
            },
        )
    }

    /// Puts the partition back to the template, ready for the next run. A partition
    /// that cannot be put back is dropped, and the next run makes a new one.
    pub fn reset(&mut self) -> Result<ResetReport, CellError> {
        self.used = false;
        let Some(partition) = self.partition.as_mut() else {
            return Ok(ResetReport::default());
        };
        let reset = partition.reset_to(&self.template);
        if reset.is_err() {
            self.partition = None;
        }
        reset
    }
}
