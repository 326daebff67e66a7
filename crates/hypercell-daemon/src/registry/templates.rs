//! Templates the daemon keeps: a module booted to a stop point and kept as a file under
//! `templates/` in the state directory, with a record in the database. A cell names a
//! template as its `module`, by name or by path.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use hypercell_host::persist::{SnapshotFile, TemplatePoint};
use hypercell_host::{CellPayload, CellStdio, create_init_template, create_template};

use super::{
    DaemonError, Registry, cell_config, check_components_of, check_spec, internal, valid_name,
};
use crate::record::{CellSpec, TemplateRecord, TemplateSpec, now_ms};

impl Registry {
    /// Every template, by name.
    pub fn templates(&self) -> Result<Vec<TemplateRecord>, DaemonError> {
        let mut templates = self.store.templates()?;
        templates.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(templates)
    }

    /// The template named `name`.
    pub fn template(&self, name: &str) -> Result<TemplateRecord, DaemonError> {
        self.store
            .templates()?
            .into_iter()
            .find(|template| template.name == name)
            .ok_or_else(|| DaemonError::NoTemplate(name.to_string()))
    }

    /// Makes the template `spec` asks for: boots its module to the stop point and
    /// keeps the cell there, in a file of its own. Blocks while the module is compiled
    /// and booted.
    pub fn create_template(&self, spec: TemplateSpec) -> Result<TemplateRecord, DaemonError> {
        let bad = |field, message: String| DaemonError::BadRequest { field, message };
        if !valid_name(&spec.name) {
            return Err(bad(
                "name",
                format!(
                    "`{}` is not a name: use up to 64 letters, digits, `_`, `.` and `-`, starting with a letter or digit",
                    spec.name
                ),
            ));
        }
        let at = spec.at.as_deref().unwrap_or("start");
        let (point, export) = TemplatePoint::parse(at).ok_or_else(|| {
            bad(
                "at",
                format!("`{at}` is not a stop point: use `start`, `first-read` or `init:EXPORT`"),
            )
        })?;
        let as_cell = CellSpec {
            module: spec.module.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            dirs: spec.dirs.clone(),
            memory: spec.memory,
            components: spec.components.clone(),
            components_strict: spec.components_strict,
            ..CellSpec::default()
        };
        check_spec(&as_cell)?;
        if SnapshotFile::is_snapshot(Path::new(&spec.module)) {
            return Err(bad(
                "module",
                format!(
                    "`{}` is a snapshot; a template is made of a module",
                    spec.module
                ),
            ));
        }
        check_components_of(self, &as_cell)?;
        self.check_dirs(&as_cell.dirs)?;
        // One at a time: the name is free until the record is saved.
        let _making = self
            .making_template
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.template(&spec.name).is_ok() {
            return Err(DaemonError::Conflict(format!(
                "a template named `{}` exists already; choose another name or remove it",
                spec.name
            )));
        }
        let source = Path::new(&spec.module);
        let module = self
            .modules
            .get_or_load(source, || self.compiler.compile_file(source))
            .map_err(|e| bad("module", e.to_string()))?;
        let config = cell_config(&as_cell);
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| internal(format!("cannot open /dev/null: {e}")))?;
        let stdio = CellStdio {
            stdin: null.as_fd(),
            stdout: null.as_fd(),
            stderr: null.as_fd(),
        };
        let payload = CellPayload::Wasm {
            module: &module,
            cpu_features: self.compiler.cpu_features(),
        };
        let made = match point {
            TemplatePoint::Init => create_init_template(&config, payload, stdio, export),
            _ => create_template(&config, payload, stdio, point),
        }
        .map_err(|failure| {
            bad(
                "module",
                format!(
                    "`{}` could not be made a template: {}",
                    spec.module, failure.error
                ),
            )
        })?;
        let dir = self.state_dir.join("templates");
        std::fs::create_dir_all(&dir)
            .map_err(|e| internal(format!("cannot make `{}`: {e}", dir.display())))?;
        let path = dir.join(format!("{}.tmpl", spec.name));
        SnapshotFile::new(
            source,
            self.compiler.cpu_features(),
            self.compiler.fingerprint(),
            &config,
            made,
        )
        .write_to(&path)
        .map_err(internal)?;
        let record = TemplateRecord {
            name: spec.name.clone(),
            bytes: std::fs::metadata(&path).map_or(0, |m| m.len()),
            path: path.display().to_string(),
            spec,
            created_ms: now_ms(),
        };
        self.store.save_template(&record)?;
        Ok(record)
    }

    /// Removes the template `name` and its file. Cells running from it go on (their
    /// memory maps the file, which lives until they end); cells that would start from
    /// it again cannot.
    pub fn remove_template(&self, name: &str) -> Result<TemplateRecord, DaemonError> {
        let record = self.template(name)?;
        self.store.remove_template(name)?;
        let _ = std::fs::remove_file(&record.path);
        Ok(record)
    }

    /// The path of the template `module` names, if it is a template's name rather than
    /// a path.
    pub(super) fn template_path(&self, module: &str) -> Option<String> {
        if module.starts_with('/') {
            return None;
        }
        self.template(module).ok().map(|template| template.path)
    }
}
