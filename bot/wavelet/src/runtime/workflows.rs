//! The workflows on offer: every `*.rhai` in the workflows folder, compiled, keyed by
//! command; plus every version a run has been pinned to, keyed by content hash. A file
//! that fails to compile is refused and the version before it keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wavelet_core::engine::{ScriptError, Workflow, WorkflowEngine, WorkflowMeta};

#[derive(Debug, Default)]
pub struct Workflows {
    /// The version on offer for each command.
    by_command: BTreeMap<String, Arc<Workflow>>,
    /// Every version seen, for runs pinned to older ones.
    by_hash: HashMap<String, Arc<Workflow>>,
    /// The hash each file had when last read, to notice edits.
    files: HashMap<PathBuf, String>,
}

/// What a (re)load found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Newly loaded or changed: (workflow name, hash).
    pub loaded: Vec<(String, String)>,
    /// Files that failed and were not loaded.
    pub refused: Vec<ScriptError>,
    /// Files that are gone; their commands are no longer on offer.
    pub removed: Vec<String>,
}

impl Workflows {
    /// Reads the folder and takes every file that compiles. Errors in one file do not
    /// stop the others.
    pub fn load(engine: &WorkflowEngine, dir: &Path) -> (Workflows, LoadReport) {
        let mut w = Workflows::default();
        let report = w.reload(engine, dir);
        (w, report)
    }

    /// Looks at the folder again: changed files are compiled; a file that fails keeps
    /// its previous version on offer.
    pub fn reload(&mut self, engine: &WorkflowEngine, dir: &Path) -> LoadReport {
        let mut report = LoadReport::default();
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
                .collect(),
            Err(e) => {
                report.refused.push(ScriptError {
                    file: dir.display().to_string(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "the workflows folder cannot be read ({e}); check `workflows.dir` in the configuration"
                    ),
                });
                return report;
            }
        };
        paths.sort();
        let mut seen = Vec::new();
        for path in paths {
            seen.push(path.clone());
            let source = match std::fs::read_to_string(&path) {
                Ok(s) => s,
                Err(e) => {
                    report.refused.push(ScriptError {
                        file: path.display().to_string(),
                        line: 0,
                        column: 0,
                        message: format!("cannot be read: {e}"),
                    });
                    continue;
                }
            };
            let hash = wavelet_core::engine::source_hash(&source);
            if self.files.get(&path) == Some(&hash) {
                continue;
            }
            let name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            match engine.compile(&name, &path, &source) {
                Ok(wf) => {
                    if let Some(other) = self.by_command.get(&wf.meta.command)
                        && other.file != wf.file
                    {
                        report.refused.push(ScriptError {
                            file: path.display().to_string(),
                            line: 1,
                            column: 1,
                            message: format!(
                                "command `{}` is already offered by {}; give one of them another COMMAND",
                                wf.meta.command,
                                other.file.display()
                            ),
                        });
                        continue;
                    }
                    let wf = Arc::new(wf);
                    // A file whose command changed no longer offers the old one.
                    self.by_command.retain(|_, w| w.file != path);
                    self.by_command.insert(wf.meta.command.clone(), wf.clone());
                    self.by_hash.insert(hash.clone(), wf);
                    self.files.insert(path.clone(), hash.clone());
                    report.loaded.push((name, hash));
                }
                Err(e) => {
                    // Remember the failing version so it is reported once, not every poll.
                    self.files.insert(path.clone(), hash);
                    report.refused.push(e);
                }
            }
        }
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !seen.contains(p)).cloned().collect();
        for p in gone {
            self.files.remove(&p);
            let before: Vec<String> = self.by_command.keys().cloned().collect();
            self.by_command.retain(|_, w| w.file != p);
            report.removed.extend(before.into_iter().filter(|c| !self.by_command.contains_key(c)));
        }
        report
    }

    pub fn by_command(&self, command: &str) -> Option<Arc<Workflow>> {
        self.by_command.get(command).cloned()
    }

    pub fn by_hash(&self, hash: &str) -> Option<Arc<Workflow>> {
        self.by_hash.get(hash).cloned()
    }

    /// Remembers a version compiled from the store (a run pinned to an older script).
    pub fn remember(&mut self, wf: Arc<Workflow>) {
        self.by_hash.insert(wf.hash.clone(), wf);
    }

    pub fn metas(&self) -> Vec<WorkflowMeta> {
        self.by_command.values().map(|w| w.meta.clone()).collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Workflow>> {
        self.by_command.values()
    }
}
