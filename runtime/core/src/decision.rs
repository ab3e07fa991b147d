//! Decision tables: ordered rules over typed input columns, a hit policy, and a default,
//! evaluated deterministically. A table is written in Rust ([`DecisionTable::builder`]) or
//! loaded from a file business staff can edit ([`DecisionTable::from_json`],
//! [`DecisionTable::from_csv`]); one that does not check is refused at load with an error
//! naming the rule and the column.
//!
//! Every [`Decision`] names the rules that matched and the table's version hash (SHA-256
//! of its checked contents), so a recorded decision says which rules of which version
//! decided it. Inside a workflow, `Ctx::decide` records the decision as a step; replay
//! returns the recorded decision even after the table has changed.
//!
//! **Cells** (one per column, in a rule's `when` and `then`):
//!
//! | cell | number column | text column | bool column |
//! | --- | --- | --- | --- |
//! | `-` or empty | any value | any value | any value |
//! | `650` / `gold` / `true` | equal to it | equal to it (quotes optional: `"gold"`) | equal to it |
//! | `!= 650` | not equal | not equal | not equal |
//! | `< 600`, `<= 600`, `> 700`, `>= 700` | compared | refused | refused |
//! | `[600..700)` (`[` `]` include, `(` `)` exclude) | in the range | refused | refused |
//! | `1, 2, 3` / `gold, silver` | one of them | one of them | one of them |
//!
//! Output cells hold a value of their column's type.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A value of a column: what an input field holds or an output is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// `true` or `false`.
    Bool(bool),
    /// A number (amounts in cents are exact up to 2^53).
    Number(f64),
    /// Text.
    Text(String),
}

impl Value {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => serde_json::Number::from_f64(*n)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Text(t) => serde_json::Value::String(t.clone()),
        }
    }
}

/// The type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Numbers.
    Number,
    /// Text.
    Text,
    /// Booleans.
    Bool,
}

impl ColumnType {
    fn name(self) -> &'static str {
        match self {
            ColumnType::Number => "number",
            ColumnType::Text => "text",
            ColumnType::Bool => "bool",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "number" => Some(ColumnType::Number),
            "text" | "string" => Some(ColumnType::Text),
            "bool" | "boolean" => Some(ColumnType::Bool),
            _ => None,
        }
    }
}

/// A named, typed column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// The input field it reads (the serialized name), or the output field it writes.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

/// How aggregated outputs of a `collect` table are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Every matched rule's outputs, in rule order.
    List,
    /// The sum of each number output over the matched rules.
    Sum,
    /// The least of each number output.
    Min,
    /// The greatest of each number output.
    Max,
    /// How many rules matched (output `count`).
    Count,
}

/// Which matching rules decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HitPolicy {
    /// The first matching rule, in table order.
    First,
    /// At most one rule may match any input: checked at load (rules that can match the
    /// same input are refused) and again at evaluation.
    Unique,
    /// The matching rule with the highest `priority`; among equals, the first.
    Priority,
    /// All matching rules, combined by the aggregation.
    Collect(Aggregation),
}

/// Bounds of a number range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    /// The limit.
    pub value: f64,
    /// Whether the limit itself is in the range.
    pub inclusive: bool,
}

/// A rule's test of one input column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Condition {
    /// Any value.
    Any,
    /// Equal to the value.
    Equals(Value),
    /// Not equal to the value.
    NotEquals(Value),
    /// Equal to one of the values.
    OneOf(Vec<Value>),
    /// A number in the range (a missing bound is unbounded).
    Range {
        /// Lower bound.
        low: Option<Bound>,
        /// Upper bound.
        high: Option<Bound>,
    },
}

/// One rule: a condition per input column, a value per output column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Its name in decisions and errors (`"row 3"` when none is given).
    pub id: String,
    /// One condition per input column.
    pub when: Vec<Condition>,
    /// One value per output column.
    pub then: Vec<Value>,
    /// Its rank under [`HitPolicy::Priority`] (higher wins).
    #[serde(default)]
    pub priority: i64,
}

/// A table refused at load, naming what does not check.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TableError {
    /// A cell does not parse or does not fit its column's type.
    #[error("decision table `{table}`, rule `{rule}`, column `{column}`: {message}")]
    Cell {
        /// The table.
        table: String,
        /// The rule.
        rule: String,
        /// The column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// Two rules of a `unique` table can match the same input.
    #[error("decision table `{table}` is `unique`, but rules `{first}` and `{second}` can both match the same input (for example, every column's conditions overlap)")]
    Overlap {
        /// The table.
        table: String,
        /// The earlier rule.
        first: String,
        /// The later rule.
        second: String,
    },
    /// The table's shape is wrong (no columns, a rule of the wrong width, a bad header).
    #[error("decision table `{table}`: {message}")]
    Shape {
        /// The table.
        table: String,
        /// What is wrong.
        message: String,
    },
}

/// Why a table could not decide for an input. Recorded with the step, so a replay
/// returns the same error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum DecisionError {
    /// The input has no field for an input column.
    #[error("decision table `{table}`: the input has no field `{column}`")]
    MissingInput {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// An input field holds another type than its column.
    #[error("decision table `{table}`: input `{column}` is {found}, the column is {expected}")]
    InputType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The column's type.
        expected: String,
        /// What the input holds.
        found: String,
    },
    /// The input does not serialize to an object of fields.
    #[error("decision table `{table}`: the input is not a struct or map of fields ({message})")]
    Input {
        /// The table.
        table: String,
        /// What serde said.
        message: String,
    },
    /// No rule matched and the table has no default.
    #[error("decision table `{table}`: no rule matched and the table has no default")]
    NoMatch {
        /// The table.
        table: String,
    },
    /// Several rules of a `unique` table matched.
    #[error("decision table `{table}` is `unique`, but rules {rules:?} all matched")]
    NotUnique {
        /// The table.
        table: String,
        /// The rules that matched.
        rules: Vec<String>,
    },
    /// The outputs do not deserialize as the type asked for.
    #[error("decision table `{table}`: the outputs do not fit the type asked for: {message}")]
    Output {
        /// The table.
        table: String,
        /// What serde said.
        message: String,
    },
}

/// What a table decided for one input: the rules that matched, the table's version, and
/// the outputs (an object of output columns; for `collect` with `list`, an array of them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The table's name.
    pub table: String,
    /// The table's version hash ([`DecisionTable::version`]).
    pub version: String,
    /// The rules that decided, in table order (empty when the default decided).
    pub matched: Vec<String>,
    /// Whether the table's default decided (no rule matched).
    pub defaulted: bool,
    /// The outputs.
    pub outputs: serde_json::Value,
}

impl Decision {
    /// The outputs as `T` (a struct with the output columns as fields, or a `Vec` of them
    /// for `collect` with `list`).
    ///
    /// # Errors
    /// [`DecisionError::Output`] if they do not deserialize as `T`.
    pub fn output<T: DeserializeOwned>(&self) -> Result<T, DecisionError> {
        serde_json::from_value(self.outputs.clone()).map_err(|err| DecisionError::Output {
            table: self.table.clone(),
            message: err.to_string(),
        })
    }
}

/// A checked decision table. See the [module docs](self) for the cell syntax.
///
/// ```
/// use cairn_core::decision::{ColumnType, DecisionTable, HitPolicy};
///
/// #[derive(serde::Serialize)]
/// struct Applicant { score: u32, amount: u64 }
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Risk { band: String }
///
/// let table = DecisionTable::builder("risk", HitPolicy::First)
///     .input("score", ColumnType::Number)
///     .input("amount", ColumnType::Number)
///     .output("band", ColumnType::Text)
///     .rule("poor score", &["< 600", "-"], &["high"])
///     .rule("large loan", &["-", ">= 50000"], &["medium"])
///     .default(&["low"])
///     .build()?;
/// let decision = table.decide(&Applicant { score: 710, amount: 80_000 })?;
/// assert_eq!(decision.matched, ["large loan"]);
/// assert_eq!(decision.output::<Risk>()?, Risk { band: "medium".into() });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionTable {
    name: String,
    hit_policy: HitPolicy,
    inputs: Vec<Column>,
    outputs: Vec<Column>,
    rules: Vec<Rule>,
    default: Option<Vec<Value>>,
    #[serde(skip)]
    version: String,
}

/// Builds a [`DecisionTable`] in Rust; cells use the same syntax as the files.
#[derive(Clone, Debug)]
pub struct TableBuilder {
    name: String,
    hit_policy: HitPolicy,
    inputs: Vec<Column>,
    outputs: Vec<Column>,
    rules: Vec<RawRule>,
    default: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
struct RawRule {
    id: String,
    when: Vec<String>,
    then: Vec<String>,
    priority: i64,
}

impl TableBuilder {
    /// Adds an input column.
    pub fn input(mut self, name: &str, ty: ColumnType) -> Self {
        self.inputs.push(Column {
            name: name.to_owned(),
            ty,
        });
        self
    }

    /// Adds an output column.
    pub fn output(mut self, name: &str, ty: ColumnType) -> Self {
        self.outputs.push(Column {
            name: name.to_owned(),
            ty,
        });
        self
    }

    /// Adds a rule: one cell per input column, one per output column.
    pub fn rule(self, id: &str, when: &[&str], then: &[&str]) -> Self {
        self.rule_with_priority(id, 0, when, then)
    }

    /// Adds a rule with a priority (for [`HitPolicy::Priority`]).
    pub fn rule_with_priority(
        mut self,
        id: &str,
        priority: i64,
        when: &[&str],
        then: &[&str],
    ) -> Self {
        self.rules.push(RawRule {
            id: id.to_owned(),
            when: when.iter().map(|c| (*c).to_owned()).collect(),
            then: then.iter().map(|c| (*c).to_owned()).collect(),
            priority,
        });
        self
    }

    /// The outputs when no rule matches.
    pub fn default(mut self, then: &[&str]) -> Self {
        self.default = Some(then.iter().map(|c| (*c).to_owned()).collect());
        self
    }

    /// Checks the table.
    ///
    /// # Errors
    /// A [`TableError`] naming the rule and column that do not check.
    pub fn build(self) -> Result<DecisionTable, TableError> {
        DecisionTable::check(self)
    }
}

/// The file form of a table (JSON).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    name: String,
    hit_policy: HitPolicy,
    inputs: Vec<Column>,
    outputs: Vec<Column>,
    rules: Vec<RuleFile>,
    #[serde(default)]
    default: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    id: Option<String>,
    when: Vec<serde_json::Value>,
    then: Vec<serde_json::Value>,
    #[serde(default)]
    priority: i64,
}

/// A JSON cell as cell text: strings as they are, numbers and booleans printed.
fn cell_text(cell: &serde_json::Value) -> String {
    match cell {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

impl DecisionTable {
    /// A builder for a table named `name`.
    pub fn builder(name: &str, hit_policy: HitPolicy) -> TableBuilder {
        TableBuilder {
            name: name.to_owned(),
            hit_policy,
            inputs: Vec::new(),
            outputs: Vec::new(),
            rules: Vec::new(),
            default: None,
        }
    }

    /// Loads a table from JSON:
    ///
    /// ```json
    /// { "name": "risk", "hit_policy": "first",
    ///   "inputs": [{ "name": "score", "type": "number" }],
    ///   "outputs": [{ "name": "band", "type": "text" }],
    ///   "rules": [{ "id": "poor", "when": ["< 600"], "then": ["high"] }],
    ///   "default": ["low"] }
    /// ```
    ///
    /// `hit_policy` is `"first"`, `"unique"`, `"priority"` or `{ "collect": "sum" }`
    /// (`list`, `sum`, `min`, `max`, `count`). Cells are strings in the cell syntax, or
    /// plain JSON numbers and booleans.
    ///
    /// # Errors
    /// [`TableError::Shape`] for JSON that is not a table, else as
    /// [`TableBuilder::build`].
    pub fn from_json(text: &str) -> Result<Self, TableError> {
        let file: TableFile = serde_json::from_str(text).map_err(|err| TableError::Shape {
            table: "(unnamed)".into(),
            message: format!("not a decision table file: {err}"),
        })?;
        let rules = file
            .rules
            .into_iter()
            .enumerate()
            .map(|(n, rule)| RawRule {
                id: rule.id.unwrap_or_else(|| format!("row {}", n + 1)),
                when: rule.when.iter().map(cell_text).collect(),
                then: rule.then.iter().map(cell_text).collect(),
                priority: rule.priority,
            })
            .collect();
        Self::check(TableBuilder {
            name: file.name,
            hit_policy: file.hit_policy,
            inputs: file.inputs,
            outputs: file.outputs,
            rules,
            default: file
                .default
                .map(|cells| cells.iter().map(cell_text).collect()),
        })
    }

    /// Loads a table from CSV, one rule per row after a header naming the columns:
    /// `in:<name>:<type>` for inputs, `out:<name>:<type>` for outputs, and optionally
    /// `rule` (its id) and `priority`. A row whose `rule` cell is `default` gives the
    /// default outputs (its input cells are ignored).
    ///
    /// ```text
    /// rule,in:score:number,in:amount:number,out:band:text
    /// poor score,< 600,-,high
    /// large loan,-,>= 50000,medium
    /// default,,,low
    /// ```
    ///
    /// # Errors
    /// [`TableError::Shape`] for a malformed header or row, else as
    /// [`TableBuilder::build`].
    pub fn from_csv(name: &str, hit_policy: HitPolicy, text: &str) -> Result<Self, TableError> {
        let shape = |message: String| TableError::Shape {
            table: name.to_owned(),
            message,
        };
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(text.as_bytes());
        let header = reader
            .headers()
            .map_err(|err| shape(format!("the header does not read: {err}")))?
            .clone();
        enum Cell {
            Id,
            Priority,
            In,
            Out,
        }
        let mut layout = Vec::new();
        let mut builder = DecisionTable::builder(name, hit_policy);
        for (n, title) in header.iter().enumerate() {
            let parts: Vec<&str> = title.split(':').map(str::trim).collect();
            match parts.as_slice() {
                ["rule"] => layout.push(Cell::Id),
                ["priority"] => layout.push(Cell::Priority),
                [side @ ("in" | "out"), column, ty] => {
                    let ty = ColumnType::parse(ty).ok_or_else(|| {
                        shape(format!(
                            "header column {} (`{title}`): type `{ty}` is not number, text or bool",
                            n + 1
                        ))
                    })?;
                    if *side == "in" {
                        builder = builder.input(column, ty);
                        layout.push(Cell::In);
                    } else {
                        builder = builder.output(column, ty);
                        layout.push(Cell::Out);
                    }
                }
                _ => {
                    return Err(shape(format!(
                        "header column {} (`{title}`) is not `rule`, `priority`, `in:<name>:<type>` or `out:<name>:<type>`",
                        n + 1
                    )))
                }
            }
        }
        for (n, record) in reader.records().enumerate() {
            let row = n + 1;
            let record = record.map_err(|err| shape(format!("row {row} does not read: {err}")))?;
            let mut id = format!("row {row}");
            let mut priority = 0;
            let mut when = Vec::new();
            let mut then = Vec::new();
            for (cell, kind) in record.iter().zip(&layout) {
                match kind {
                    Cell::Id if !cell.is_empty() => id = cell.to_owned(),
                    Cell::Id => {}
                    Cell::Priority if cell.is_empty() => {}
                    Cell::Priority => {
                        priority = cell.parse().map_err(|_| {
                            shape(format!(
                                "row {row}: priority `{cell}` is not a whole number"
                            ))
                        })?;
                    }
                    Cell::In => when.push(cell.to_owned()),
                    Cell::Out => then.push(cell.to_owned()),
                }
            }
            if id == "default" {
                builder.default = Some(then);
            } else {
                builder.rules.push(RawRule {
                    id,
                    when,
                    then,
                    priority,
                });
            }
        }
        builder.build()
    }

    fn check(raw: TableBuilder) -> Result<Self, TableError> {
        let table = raw.name.clone();
        let shape = |message: String| TableError::Shape {
            table: table.clone(),
            message,
        };
        if raw.inputs.is_empty() || raw.outputs.is_empty() {
            return Err(shape(
                "a table needs at least one input and one output column".into(),
            ));
        }
        let mut names = BTreeSet::new();
        for column in raw.inputs.iter().chain(&raw.outputs) {
            if column.name.is_empty() {
                return Err(shape("a column has an empty name".into()));
            }
            if !names.insert((raw.inputs.contains(column), column.name.clone())) {
                return Err(shape(format!("column `{}` is named twice", column.name)));
            }
        }
        if raw.rules.is_empty() && raw.default.is_none() {
            return Err(shape("a table needs a rule or a default".into()));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut ids = BTreeSet::new();
        for rule in &raw.rules {
            if !ids.insert(rule.id.clone()) {
                return Err(shape(format!("rule `{}` is named twice", rule.id)));
            }
            if rule.when.len() != raw.inputs.len() || rule.then.len() != raw.outputs.len() {
                return Err(shape(format!(
                    "rule `{}` has {} condition(s) and {} output(s); the table has {} input and {} output column(s)",
                    rule.id,
                    rule.when.len(),
                    rule.then.len(),
                    raw.inputs.len(),
                    raw.outputs.len()
                )));
            }
            let cell_error = |column: &Column, message: String| TableError::Cell {
                table: table.clone(),
                rule: rule.id.clone(),
                column: column.name.clone(),
                message,
            };
            let when = raw
                .inputs
                .iter()
                .zip(&rule.when)
                .map(|(column, cell)| {
                    parse_condition(cell, column.ty).map_err(|m| cell_error(column, m))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let then = raw
                .outputs
                .iter()
                .zip(&rule.then)
                .map(|(column, cell)| {
                    parse_value(cell, column.ty).map_err(|m| cell_error(column, m))
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule {
                id: rule.id.clone(),
                when,
                then,
                priority: rule.priority,
            });
        }
        let default = match &raw.default {
            None => None,
            Some(cells) => {
                if cells.len() != raw.outputs.len() {
                    return Err(shape(format!(
                        "the default has {} output(s); the table has {} output column(s)",
                        cells.len(),
                        raw.outputs.len()
                    )));
                }
                Some(
                    raw.outputs
                        .iter()
                        .zip(cells)
                        .map(|(column, cell)| {
                            parse_value(cell, column.ty).map_err(|message| TableError::Cell {
                                table: table.clone(),
                                rule: "default".into(),
                                column: column.name.clone(),
                                message,
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
        };
        if matches!(raw.hit_policy, HitPolicy::Collect(aggregation) if aggregation != Aggregation::List && aggregation != Aggregation::Count)
        {
            if let Some(column) = raw.outputs.iter().find(|c| c.ty != ColumnType::Number) {
                return Err(shape(format!(
                    "output `{}` is {}; a collect table that sums, or takes the least or greatest, needs number outputs",
                    column.name,
                    column.ty.name()
                )));
            }
        }
        if raw.hit_policy == HitPolicy::Unique {
            for (n, first) in rules.iter().enumerate() {
                for second in &rules[n + 1..] {
                    let overlap = raw
                        .inputs
                        .iter()
                        .zip(first.when.iter().zip(&second.when))
                        .all(|(column, (a, b))| intersects(a, b, column.ty));
                    if overlap {
                        return Err(TableError::Overlap {
                            table: table.clone(),
                            first: first.id.clone(),
                            second: second.id.clone(),
                        });
                    }
                }
            }
        }
        let mut checked = DecisionTable {
            name: raw.name,
            hit_policy: raw.hit_policy,
            inputs: raw.inputs,
            outputs: raw.outputs,
            rules,
            default,
            version: String::new(),
        };
        // The checked contents, not the file's text: reformatting a file keeps its
        // version, a changed rule or cell changes it.
        let canonical = serde_json::to_vec(&checked).map_err(|err| TableError::Shape {
            table: checked.name.clone(),
            message: format!("does not encode: {err}"),
        })?;
        checked.version = Sha256::digest(&canonical)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(checked)
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 (hex) of the checked table: its columns, rules, hit policy and default.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Its rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides for `input`, a value whose serialized fields include every input column.
    ///
    /// # Errors
    /// A [`DecisionError`]: an input field missing or of the wrong type, no rule
    /// matching without a default, several matching a `unique` table.
    pub fn decide<I: Serialize + ?Sized>(&self, input: &I) -> Result<Decision, DecisionError> {
        let json = serde_json::to_value(input).map_err(|err| DecisionError::Input {
            table: self.name.clone(),
            message: err.to_string(),
        })?;
        let serde_json::Value::Object(fields) = json else {
            return Err(DecisionError::Input {
                table: self.name.clone(),
                message: "it serializes to a single value".into(),
            });
        };
        let mut values = Vec::with_capacity(self.inputs.len());
        for column in &self.inputs {
            let field = fields
                .get(&column.name)
                .ok_or_else(|| DecisionError::MissingInput {
                    table: self.name.clone(),
                    column: column.name.clone(),
                })?;
            let value = match (column.ty, field) {
                (ColumnType::Number, serde_json::Value::Number(n)) => n.as_f64().map(Value::Number),
                (ColumnType::Text, serde_json::Value::String(s)) => Some(Value::Text(s.clone())),
                (ColumnType::Bool, serde_json::Value::Bool(b)) => Some(Value::Bool(*b)),
                _ => None,
            };
            let value = value.ok_or_else(|| DecisionError::InputType {
                table: self.name.clone(),
                column: column.name.clone(),
                expected: column.ty.name().into(),
                found: json_type(field).into(),
            })?;
            values.push(value);
        }
        let matched: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|rule| rule.when.iter().zip(&values).all(|(c, v)| matches(c, v)))
            .collect();
        let decided: Vec<&Rule> = match self.hit_policy {
            HitPolicy::First => matched.into_iter().take(1).collect(),
            HitPolicy::Unique if matched.len() > 1 => {
                return Err(DecisionError::NotUnique {
                    table: self.name.clone(),
                    rules: matched.iter().map(|r| r.id.clone()).collect(),
                })
            }
            HitPolicy::Unique | HitPolicy::Collect(_) => matched,
            HitPolicy::Priority => {
                // `max_by_key` keeps the last of equals; the first in table order wins.
                let best = matched.iter().map(|r| r.priority).max();
                matched
                    .into_iter()
                    .find(|r| Some(r.priority) == best)
                    .into_iter()
                    .collect()
            }
        };
        let object = |values: &[Value]| {
            serde_json::Value::Object(
                self.outputs
                    .iter()
                    .zip(values)
                    .map(|(column, value)| (column.name.clone(), value.to_json()))
                    .collect(),
            )
        };
        if decided.is_empty() {
            let Some(default) = &self.default else {
                return Err(DecisionError::NoMatch {
                    table: self.name.clone(),
                });
            };
            let outputs = match self.hit_policy {
                HitPolicy::Collect(Aggregation::List) => {
                    serde_json::Value::Array(vec![object(default)])
                }
                _ => object(default),
            };
            return Ok(self.decision(Vec::new(), true, outputs));
        }
        let ids = decided.iter().map(|r| r.id.clone()).collect();
        let outputs = match self.hit_policy {
            HitPolicy::Collect(Aggregation::List) => {
                serde_json::Value::Array(decided.iter().map(|r| object(&r.then)).collect())
            }
            HitPolicy::Collect(Aggregation::Count) => serde_json::json!({ "count": decided.len() }),
            HitPolicy::Collect(aggregation) => {
                let combined: Vec<Value> = (0..self.outputs.len())
                    .map(|n| {
                        let numbers = decided.iter().filter_map(|r| match r.then.get(n) {
                            Some(Value::Number(x)) => Some(*x),
                            _ => None,
                        });
                        let folded = match aggregation {
                            Aggregation::Sum => numbers.sum(),
                            Aggregation::Min => numbers.fold(f64::INFINITY, f64::min),
                            _ => numbers.fold(f64::NEG_INFINITY, f64::max),
                        };
                        Value::Number(folded)
                    })
                    .collect();
                object(&combined)
            }
            _ => object(&decided[0].then),
        };
        Ok(self.decision(ids, false, outputs))
    }

    fn decision(
        &self,
        matched: Vec<String>,
        defaulted: bool,
        outputs: serde_json::Value,
    ) -> Decision {
        Decision {
            table: self.name.clone(),
            version: self.version.clone(),
            matched,
            defaulted,
            outputs,
        }
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "text",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a map",
    }
}

/// Parses an output cell (or one element of a condition) as a value of `ty`.
fn parse_value(cell: &str, ty: ColumnType) -> Result<Value, String> {
    let cell = cell.trim();
    match ty {
        ColumnType::Number => cell
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Value::Number)
            .ok_or_else(|| format!("`{cell}` is not a number")),
        ColumnType::Bool => match cell.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("`{cell}` is not true or false")),
        },
        ColumnType::Text => {
            let unquoted = cell
                .strip_prefix('"')
                .and_then(|rest| rest.strip_suffix('"'))
                .unwrap_or(cell);
            Ok(Value::Text(unquoted.to_owned()))
        }
    }
}

/// Parses a condition cell for a column of type `ty`.
fn parse_condition(cell: &str, ty: ColumnType) -> Result<Condition, String> {
    let cell = cell.trim();
    if cell.is_empty() || cell == "-" {
        return Ok(Condition::Any);
    }
    if let Some(rest) = cell.strip_prefix("!=") {
        return parse_value(rest, ty).map(Condition::NotEquals);
    }
    let comparison = [
        ("<=", false, true),
        (">=", true, true),
        ("<", false, false),
        (">", true, false),
    ]
    .into_iter()
    .find_map(|(op, lower, inclusive)| cell.strip_prefix(op).map(|rest| (rest, lower, inclusive)));
    if let Some((rest, lower, inclusive)) = comparison {
        if ty != ColumnType::Number {
            return Err(format!(
                "`{cell}` compares, but the column is {}",
                ty.name()
            ));
        }
        let Value::Number(value) = parse_value(rest, ty)? else {
            return Err(format!("`{cell}` does not compare with a number"));
        };
        let bound = Some(Bound { value, inclusive });
        return Ok(if lower {
            Condition::Range {
                low: bound,
                high: None,
            }
        } else {
            Condition::Range {
                low: None,
                high: bound,
            }
        });
    }
    if let (Some(open), Some(close)) = (cell.chars().next(), cell.chars().last()) {
        if matches!(open, '[' | '(') && matches!(close, ']' | ')') && cell.contains("..") {
            if ty != ColumnType::Number {
                return Err(format!(
                    "`{cell}` is a range, but the column is {}",
                    ty.name()
                ));
            }
            let inner = &cell[1..cell.len() - 1];
            let (low, high) = inner
                .split_once("..")
                .ok_or_else(|| format!("`{cell}` is not a range like [600..700)"))?;
            let number = |text: &str| match parse_value(text, ty) {
                Ok(Value::Number(n)) => Ok(n),
                _ => Err(format!("`{cell}`: `{}` is not a number", text.trim())),
            };
            let (low, high) = (number(low)?, number(high)?);
            if low > high {
                return Err(format!("`{cell}`: the range is empty ({low} > {high})"));
            }
            return Ok(Condition::Range {
                low: Some(Bound {
                    value: low,
                    inclusive: open == '[',
                }),
                high: Some(Bound {
                    value: high,
                    inclusive: close == ']',
                }),
            });
        }
    }
    if cell.contains(',') {
        let values = cell
            .split(',')
            .map(|part| parse_value(part, ty))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Condition::OneOf(values));
    }
    parse_value(cell, ty).map(Condition::Equals)
}

fn in_range(x: f64, low: &Option<Bound>, high: &Option<Bound>) -> bool {
    let above = low.is_none_or(|b| {
        if b.inclusive {
            x >= b.value
        } else {
            x > b.value
        }
    });
    let below = high.is_none_or(|b| {
        if b.inclusive {
            x <= b.value
        } else {
            x < b.value
        }
    });
    above && below
}

fn matches(condition: &Condition, value: &Value) -> bool {
    match condition {
        Condition::Any => true,
        Condition::Equals(expected) => expected == value,
        Condition::NotEquals(excluded) => excluded != value,
        Condition::OneOf(values) => values.contains(value),
        Condition::Range { low, high } => match value {
            Value::Number(x) => in_range(*x, low, high),
            _ => false,
        },
    }
}

/// Intervals of numbers a condition accepts: `(low, low_inclusive, high, high_inclusive)`.
fn intervals(condition: &Condition) -> Vec<(f64, bool, f64, bool)> {
    let all = (f64::NEG_INFINITY, false, f64::INFINITY, false);
    let point = |x: f64| (x, true, x, true);
    match condition {
        Condition::Any => vec![all],
        Condition::Equals(Value::Number(x)) => vec![point(*x)],
        Condition::NotEquals(Value::Number(x)) => vec![
            (f64::NEG_INFINITY, false, *x, false),
            (*x, false, f64::INFINITY, false),
        ],
        Condition::OneOf(values) => values
            .iter()
            .filter_map(|v| match v {
                Value::Number(x) => Some(point(*x)),
                _ => None,
            })
            .collect(),
        Condition::Range { low, high } => vec![(
            low.map_or(f64::NEG_INFINITY, |b| b.value),
            low.is_some_and(|b| b.inclusive),
            high.map_or(f64::INFINITY, |b| b.value),
            high.is_some_and(|b| b.inclusive),
        )],
        _ => Vec::new(),
    }
}

fn intervals_meet(a: (f64, bool, f64, bool), b: (f64, bool, f64, bool)) -> bool {
    // The greater low and the lesser high, each with whether it is included.
    let (low, low_in) = if a.0 > b.0 || (a.0 == b.0 && !a.1) {
        (a.0, a.1)
    } else {
        (b.0, b.1)
    };
    let (high, high_in) = if a.2 < b.2 || (a.2 == b.2 && !a.3) {
        (a.2, a.3)
    } else {
        (b.2, b.3)
    };
    low < high || (low == high && low_in && high_in)
}

/// Text values a condition accepts: `Ok(set)` for exactly these, `Err(set)` for all but
/// these.
fn texts(condition: &Condition) -> Result<BTreeSet<String>, BTreeSet<String>> {
    let text = |v: &Value| match v {
        Value::Text(t) => Some(t.clone()),
        _ => None,
    };
    match condition {
        Condition::Equals(v) => Ok(text(v).into_iter().collect()),
        Condition::OneOf(values) => Ok(values.iter().filter_map(text).collect()),
        Condition::NotEquals(v) => Err(text(v).into_iter().collect()),
        _ => Err(BTreeSet::new()),
    }
}

/// Whether some value of type `ty` satisfies both conditions.
fn intersects(a: &Condition, b: &Condition, ty: ColumnType) -> bool {
    match ty {
        ColumnType::Number => intervals(a)
            .into_iter()
            .any(|x| intervals(b).into_iter().any(|y| intervals_meet(x, y))),
        ColumnType::Bool => [Value::Bool(false), Value::Bool(true)]
            .iter()
            .any(|v| matches(a, v) && matches(b, v)),
        ColumnType::Text => match (texts(a), texts(b)) {
            (Ok(x), Ok(y)) => x.intersection(&y).next().is_some(),
            (Ok(x), Err(excluded)) | (Err(excluded), Ok(x)) => {
                x.difference(&excluded).next().is_some()
            }
            // Both exclude finitely many of infinitely many texts.
            (Err(_), Err(_)) => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Loan {
        score: u32,
        amount: u64,
        segment: &'static str,
        existing_customer: bool,
    }

    fn loan(score: u32, amount: u64) -> Loan {
        Loan {
            score,
            amount,
            segment: "retail",
            existing_customer: false,
        }
    }

    fn risk_table(policy: HitPolicy) -> Result<DecisionTable, TableError> {
        DecisionTable::builder("risk", policy)
            .input("score", ColumnType::Number)
            .input("amount", ColumnType::Number)
            .output("band", ColumnType::Text)
            .rule("poor", &["< 600", "-"], &["high"])
            .rule("fair", &["[600..700)", "-"], &["medium"])
            .rule("good", &[">= 700", "< 50000"], &["low"])
            .rule("good, large", &[">= 700", ">= 50000"], &["medium"])
            .build()
    }

    #[test]
    fn first_and_unique_pick_the_rule_that_matches_and_name_it() {
        for policy in [HitPolicy::First, HitPolicy::Unique] {
            let table = risk_table(policy).unwrap();
            for (score, amount, rule, band) in [
                (550, 1_000, "poor", "high"),
                (600, 1_000, "fair", "medium"),
                (699, 90_000, "fair", "medium"),
                (700, 49_999, "good", "low"),
                (700, 50_000, "good, large", "medium"),
            ] {
                let decision = table.decide(&loan(score, amount)).unwrap();
                assert_eq!(decision.matched, [rule], "{score} {amount}");
                assert_eq!(decision.outputs["band"], band);
                assert_eq!(decision.version, table.version());
                assert!(!decision.defaulted);
            }
        }
    }

    #[test]
    fn a_unique_table_with_overlapping_rules_is_refused_naming_both() {
        let err = DecisionTable::builder("risk", HitPolicy::Unique)
            .input("score", ColumnType::Number)
            .input("segment", ColumnType::Text)
            .output("band", ColumnType::Text)
            .rule("low scores", &["< 650", "-"], &["high"])
            .rule("retail", &["[600..800]", "retail, sme"], &["medium"])
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            TableError::Overlap {
                table: "risk".into(),
                first: "low scores".into(),
                second: "retail".into(),
            }
        );
        // Touching but disjoint ranges, and disjoint texts, do not overlap.
        DecisionTable::builder("risk", HitPolicy::Unique)
            .input("score", ColumnType::Number)
            .input("segment", ColumnType::Text)
            .output("band", ColumnType::Text)
            .rule("a", &["< 600", "-"], &["high"])
            .rule("b", &["[600..700)", "retail"], &["medium"])
            .rule("c", &["[600..700)", "!= retail"], &["low"])
            .rule("d", &[">= 700", "-"], &["low"])
            .build()
            .unwrap();
    }

    #[test]
    fn a_cell_that_does_not_fit_its_column_is_refused_naming_rule_and_column() {
        let err = DecisionTable::builder("t", HitPolicy::First)
            .input("segment", ColumnType::Text)
            .output("band", ColumnType::Text)
            .rule("r1", &["> 5"], &["x"])
            .build()
            .unwrap_err();
        match err {
            TableError::Cell {
                rule,
                column,
                message,
                ..
            } => {
                assert_eq!((rule.as_str(), column.as_str()), ("r1", "segment"));
                assert!(message.contains("compares"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let err = DecisionTable::builder("t", HitPolicy::First)
            .input("score", ColumnType::Number)
            .output("rate", ColumnType::Number)
            .rule("r1", &["-"], &["high"])
            .build()
            .unwrap_err();
        assert!(
            matches!(err, TableError::Cell { ref column, .. } if column == "rate"),
            "{err}"
        );
        let err = DecisionTable::builder("t", HitPolicy::First)
            .input("score", ColumnType::Number)
            .output("rate", ColumnType::Number)
            .rule("r1", &["-", "-"], &["1"])
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("rule `r1` has 2 condition(s)"),
            "{err}"
        );
    }

    #[test]
    fn priority_collect_and_default() {
        let table = DecisionTable::builder("discount", HitPolicy::Priority)
            .input("amount", ColumnType::Number)
            .input("existing_customer", ColumnType::Bool)
            .output("percent", ColumnType::Number)
            .rule_with_priority("big", 1, &[">= 10000", "-"], &["5"])
            .rule_with_priority("loyal", 2, &["-", "true"], &["7"])
            .rule_with_priority("loyal big", 2, &[">= 10000", "true"], &["9"])
            .default(&["0"])
            .build()
            .unwrap();
        let mut input = loan(700, 20_000);
        input.existing_customer = true;
        let decision = table.decide(&input).unwrap();
        assert_eq!(decision.matched, ["loyal"], "first of the highest priority");
        assert_eq!(decision.outputs["percent"], 7.0);
        let decision = table.decide(&loan(700, 10)).unwrap();
        assert!(decision.defaulted && decision.matched.is_empty());
        assert_eq!(decision.outputs["percent"], 0.0);

        let fees = DecisionTable::builder("fees", HitPolicy::Collect(Aggregation::Sum))
            .input("amount", ColumnType::Number)
            .output("fee", ColumnType::Number)
            .rule("base", &["-"], &["10"])
            .rule("large", &["> 1000"], &["25"])
            .build()
            .unwrap();
        let decision = fees.decide(&loan(0, 5_000)).unwrap();
        assert_eq!(decision.matched, ["base", "large"]);
        assert_eq!(decision.outputs["fee"], 35.0);
        let list = DecisionTable::builder("fees", HitPolicy::Collect(Aggregation::List))
            .input("amount", ColumnType::Number)
            .output("fee", ColumnType::Number)
            .rule("base", &["-"], &["10"])
            .rule("large", &["> 1000"], &["25"])
            .build()
            .unwrap();
        #[derive(Deserialize, Debug, PartialEq)]
        struct Fee {
            fee: f64,
        }
        assert_eq!(
            list.decide(&loan(0, 5_000))
                .unwrap()
                .output::<Vec<Fee>>()
                .unwrap(),
            [Fee { fee: 10.0 }, Fee { fee: 25.0 }]
        );
        let err = DecisionTable::builder("t", HitPolicy::Collect(Aggregation::Sum))
            .input("amount", ColumnType::Number)
            .output("band", ColumnType::Text)
            .rule("r", &["-"], &["x"])
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("needs number outputs"), "{err}");
    }

    #[test]
    fn inputs_that_do_not_fit_are_typed_errors() {
        let table = risk_table(HitPolicy::First).unwrap();
        #[derive(Serialize)]
        struct Partial {
            score: u32,
        }
        assert!(matches!(
            table.decide(&Partial { score: 1 }),
            Err(DecisionError::MissingInput { ref column, .. }) if column == "amount"
        ));
        #[derive(Serialize)]
        struct Wrong {
            score: &'static str,
            amount: u32,
        }
        assert!(matches!(
            table.decide(&Wrong { score: "high", amount: 1 }),
            Err(DecisionError::InputType { ref found, .. }) if found == "text"
        ));
        assert!(matches!(table.decide(&5), Err(DecisionError::Input { .. })));
        let no_default = DecisionTable::builder("t", HitPolicy::First)
            .input("score", ColumnType::Number)
            .output("band", ColumnType::Text)
            .rule("r", &["> 900"], &["top"])
            .build()
            .unwrap();
        assert!(matches!(
            no_default.decide(&loan(1, 1)),
            Err(DecisionError::NoMatch { .. })
        ));
    }

    #[test]
    fn the_same_table_from_json_csv_and_rust_has_the_same_version() {
        let rust = risk_table(HitPolicy::First).unwrap();
        let json = DecisionTable::from_json(
            r#"{ "name": "risk", "hit_policy": "first",
                 "inputs": [{ "name": "score", "type": "number" }, { "name": "amount", "type": "number" }],
                 "outputs": [{ "name": "band", "type": "text" }],
                 "rules": [
                   { "id": "poor", "when": ["< 600", "-"], "then": ["high"] },
                   { "id": "fair", "when": ["[600..700)", null], "then": ["medium"] },
                   { "id": "good", "when": [">= 700", "< 50000"], "then": ["low"] },
                   { "id": "good, large", "when": [">=700", ">= 50000"], "then": ["medium"] }
                 ] }"#,
        )
        .unwrap();
        let csv = DecisionTable::from_csv(
            "risk",
            HitPolicy::First,
            "rule,in:score:number,in:amount:number,out:band:text\n\
             poor,< 600,-,high\n\
             fair,[600..700),,medium\n\
             good,>= 700,< 50000,low\n\
             \"good, large\",>= 700,>= 50000,medium\n",
        )
        .unwrap();
        assert_eq!(json, rust);
        assert_eq!(csv, rust);
        assert_eq!(json.version(), rust.version());
        let changed = DecisionTable::from_csv(
            "risk",
            HitPolicy::First,
            "rule,in:score:number,in:amount:number,out:band:text\npoor,< 610,-,high\n",
        )
        .unwrap();
        assert_ne!(
            changed.version(),
            rust.version(),
            "a changed cell changes the version"
        );
    }

    #[test]
    fn malformed_files_are_refused_with_what_is_wrong() {
        let err =
            DecisionTable::from_csv("t", HitPolicy::First, "rule,score,out:band:text\nr,1,x\n")
                .unwrap_err();
        assert!(
            err.to_string().contains("header column 2 (`score`)"),
            "{err}"
        );
        let err =
            DecisionTable::from_csv("t", HitPolicy::First, "in:score:money,out:band:text\n1,x\n")
                .unwrap_err();
        assert!(err.to_string().contains("type `money`"), "{err}");
        let err = DecisionTable::from_csv(
            "t",
            HitPolicy::First,
            "in:score:number,out:band:text\n1,x,extra\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("row 1 does not read"), "{err}");
        let err = DecisionTable::from_json(r#"{ "name": "t" }"#).unwrap_err();
        assert!(
            err.to_string().contains("not a decision table file"),
            "{err}"
        );
        let err = DecisionTable::from_csv(
            "t",
            HitPolicy::First,
            "rule,in:score:number,out:band:text\nr,[700..600],x\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("the range is empty"), "{err}");
        let err = DecisionTable::from_csv(
            "t",
            HitPolicy::First,
            "rule,in:score:number,out:band:text\nr,1,x\nr,2,y\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("rule `r` is named twice"), "{err}");
        let default = DecisionTable::from_csv(
            "t",
            HitPolicy::First,
            "rule,in:score:number,out:band:text\nr,1,x\ndefault,,fallback\n",
        )
        .unwrap();
        assert_eq!(
            default.decide(&loan(5, 0)).unwrap().outputs["band"],
            "fallback"
        );
    }

    #[test]
    fn a_decision_round_trips_through_serde() {
        let table = risk_table(HitPolicy::First).unwrap();
        let decision = table.decide(&loan(650, 1)).unwrap();
        let bytes = serde_json::to_vec(&decision).unwrap();
        let back: Decision = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, decision);
        let err = table.decide(&5).unwrap_err();
        let back: DecisionError =
            serde_json::from_slice(&serde_json::to_vec(&err).unwrap()).unwrap();
        assert_eq!(back, err);
    }
}
