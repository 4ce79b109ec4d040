//! Routing datasets in RouteLLM's CSV shape: a `prompt` column and one correctness (True/False) or
//! score column per model. A directory holds one or more CSV files; each file is a group (MMLU has
//! one file per subject) and `contaminated_prompts.jsonl` beside them lists prompts to drop.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tandem_router_policy::{Error, Result};

/// The weak model column RouteLLM's files use.
pub const ROUTELLM_WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";
/// The strong model column RouteLLM's files use.
pub const ROUTELLM_STRONG: &str = "gpt-4-1106-preview";

/// One prompt with each model's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The prompt text.
    pub prompt: String,
    /// The group it belongs to (the file stem, e.g. the MMLU subject).
    pub group: String,
    /// Score per model, in [`Dataset::models`] order (correctness as 0 or 1).
    pub scores: Vec<f32>,
    /// Each model's answer, in the same order, where the file has a `<model>_response` column.
    pub responses: Vec<Option<String>>,
}

/// A loaded dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// A name for reports (the directory or file name).
    pub name: String,
    /// Model (score column) names.
    pub models: Vec<String>,
    /// Rows left after dropping contaminated prompts.
    pub rows: Vec<Row>,
    /// Rows dropped as contaminated.
    pub dropped_contaminated: usize,
}

impl Dataset {
    /// Loads a CSV file, or every `*.csv` directly inside a directory (sorted by name).
    pub fn load(path: &Path) -> Result<Self> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "csv"))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        if files.is_empty() {
            return Err(Error::Dataset {
                path: path.into(),
                message: "no csv files".into(),
            });
        }
        let mut models: Option<Vec<String>> = None;
        let mut rows = Vec::new();
        for file in &files {
            let group = file
                .file_stem()
                .map(|s| s.to_string_lossy().trim_start_matches("mmlu_").to_string())
                .unwrap_or_default();
            let (file_models, file_rows) = read_csv(file, &group)?;
            match &models {
                None => models = Some(file_models),
                Some(m) if *m == file_models => {}
                Some(m) => {
                    return Err(Error::Dataset {
                        path: file.clone(),
                        message: format!("model columns {file_models:?} differ from {m:?}"),
                    });
                }
            }
            rows.extend(file_rows);
        }
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        let contaminated = read_contaminated(&dir.join("contaminated_prompts.jsonl"))?;
        let before = rows.len();
        rows.retain(|r| !contaminated.contains(r.prompt.as_str()));
        let name = path
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let dropped_contaminated = before - rows.len();
        Ok(Self {
            name,
            models: models.unwrap_or_default(),
            rows,
            dropped_contaminated,
        })
    }

    /// Index of a model column by name.
    pub fn model_index(&self, name: &str) -> Result<usize> {
        self.models.iter().position(|m| m == name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "dataset {} has no model column {name:?} (has {:?})",
                self.name, self.models
            ))
        })
    }

    /// Whether every row carries model `index`'s answer.
    pub fn has_responses(&self, index: usize) -> bool {
        !self.rows.is_empty()
            && self
                .rows
                .iter()
                .all(|r| r.responses.get(index).is_some_and(Option::is_some))
    }

    /// Distinct groups in first-seen order.
    pub fn groups(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.rows
            .iter()
            .filter(|r| seen.insert(r.group.clone()))
            .map(|r| r.group.clone())
            .collect()
    }
}

/// Sub-datasets of `root`: the directory itself if it has CSV files, else each child directory
/// that has some (so `routellm/` gives `gsm8k` and `mmlu`).
pub fn discover(root: &Path) -> Result<Vec<PathBuf>> {
    if root.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let has_csv = |dir: &Path| {
        std::fs::read_dir(dir).ok().is_some_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "csv"))
        })
    };
    if has_csv(root) {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && has_csv(p))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(Error::Dataset {
            path: root.into(),
            message: "no csv files found".into(),
        });
    }
    Ok(dirs)
}

fn parse_score(s: &str) -> Option<f32> {
    match s.trim() {
        "True" | "true" | "TRUE" => Some(1.0),
        "False" | "false" | "FALSE" => Some(0.0),
        other => other.parse::<f32>().ok().filter(|x| x.is_finite()),
    }
}

fn read_csv(file: &Path, group: &str) -> Result<(Vec<String>, Vec<Row>)> {
    let mut reader = csv::Reader::from_path(file).map_err(|e| Error::Dataset {
        path: file.into(),
        message: e.to_string(),
    })?;
    let headers = reader
        .headers()
        .map_err(|e| Error::Dataset {
            path: file.into(),
            message: e.to_string(),
        })?
        .clone();
    let prompt_col = headers
        .iter()
        .position(|h| h == "prompt")
        .ok_or_else(|| Error::Dataset {
            path: file.into(),
            message: "no `prompt` column".into(),
        })?;
    // Score columns: everything but the prompt and free-text response columns.
    let score_cols: Vec<usize> = (0..headers.len())
        .filter(|&i| i != prompt_col && !headers[i].ends_with("_response"))
        .collect();
    if score_cols.len() < 2 {
        return Err(Error::Dataset {
            path: file.into(),
            message: "need at least two model score columns".into(),
        });
    }
    let models = score_cols.iter().map(|&i| headers[i].to_string()).collect();
    let response_cols: Vec<Option<usize>> = score_cols
        .iter()
        .map(|&i| {
            let name = format!("{}_response", &headers[i]);
            headers.iter().position(|h| h == name)
        })
        .collect();
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Error::Dataset {
            path: file.into(),
            message: e.to_string(),
        })?;
        let mut scores = Vec::with_capacity(score_cols.len());
        for &c in &score_cols {
            let raw = record.get(c).unwrap_or("");
            scores.push(parse_score(raw).ok_or_else(|| Error::Dataset {
                path: file.into(),
                message: format!(
                    "row {}: column {:?}: not a score: {raw:?}",
                    line + 2,
                    &headers[c]
                ),
            })?);
        }
        rows.push(Row {
            prompt: record.get(prompt_col).unwrap_or("").to_string(),
            group: group.to_string(),
            scores,
            responses: response_cols
                .iter()
                .map(|c| c.map(|c| record.get(c).unwrap_or("").to_string()))
                .collect(),
        });
    }
    Ok((models, rows))
}

fn read_contaminated(path: &Path) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    if !path.exists() {
        return Ok(out);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Dataset {
            path: path.into(),
            message: format!("line {}: {e}", i + 1),
        })?;
        for key in ["eval_prompt", "prompt"] {
            if let Some(p) = v.get(key).and_then(|p| p.as_str()) {
                out.insert(p.to_string());
            }
        }
    }
    Ok(out)
}
