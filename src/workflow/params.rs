//! Template parameters: how a template declares what a client may set, the load-time checks
//! that keep those declarations coherent, and the checks every request value goes through.
//!
//! Integers are compared as `i128`, never as `f64`: ComfyUI seeds span the whole `u64` range and
//! a float would silently round `18446744073709551615` to `18446744073709551616`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::input_image::{self, DecodedImage};

/// The JSON type a parameter accepts, as the template's `"type"` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any JSON string.
    String,
    /// A JSON integer (`20`, never `20.0` or `"20"`) that fits in `i64` or `u64`.
    Integer,
    /// Any JSON number; written into the graph as a float.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A base64 PNG, JPEG or WebP, optionally as a `data:` URL; uploaded to ComfyUI and replaced
    /// in the graph by the name ComfyUI gave it.
    Image,
}

impl ParamType {
    /// The name used in template files and schemas (`"integer"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Image => "image",
        }
    }

    /// The type as a noun for messages ("must be an integer").
    fn noun(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Integer => "an integer",
            ParamType::Number => "a number",
            ParamType::Boolean => "a boolean",
            ParamType::Image => "a base64-encoded PNG, JPEG or WebP image",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, ParamType::Integer | ParamType::Number)
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a parameter takes when a request leaves it out.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamDefault {
    /// This value, checked at load time against the parameter's type and constraints.
    Value(Value),
    /// `"default": "random"` (integers only): a fresh value in `[min, max]` for every request,
    /// where `min` defaults to 0 and `max` to `u64::MAX`. Meant for seeds.
    Random,
}

/// Where a parameter's value is written: one input of one node, `"node.input"` in the file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The node id, a key of the graph (`"3"`).
    pub node: String,
    /// The input name inside that node's `inputs` (`"seed"`).
    pub input: String,
}

impl Target {
    /// Parses `"node.input"`. Splits at the last dot, because input names are identifiers while
    /// node ids are arbitrary strings. `None` when either side would be empty.
    pub fn parse(text: &str) -> Option<Target> {
        let (node, input) = text.rsplit_once('.')?;
        if node.is_empty() || input.is_empty() {
            return None;
        }
        Some(Target {
            node: node.to_owned(),
            input: input.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.input)
    }
}

/// One parameter of a template, after the load-time checks of [`Template::parse`](super::Template::parse).
///
/// Bounds are kept as JSON numbers so the schema shows them exactly as the template wrote them;
/// comparisons are exact whenever both sides are integers.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// The accepted JSON type (`"type"` in the file).
    pub kind: ParamType,
    /// Whether a request must set it. A required parameter has no default.
    pub required: bool,
    /// Used when a request leaves the parameter out. Every non-image parameter that is not
    /// required has one, so the value used is always known.
    pub default: Option<ParamDefault>,
    /// Smallest accepted value (numeric types only).
    pub min: Option<Number>,
    /// Largest accepted value (numeric types only).
    pub max: Option<Number>,
    /// Accepted values are whole multiples of this (numeric types only; positive).
    pub multiple_of: Option<Number>,
    /// The only accepted values (`"enum"` in the file; strings and numbers only).
    pub enum_values: Option<Vec<Value>>,
    /// The node inputs the value is written to; at least one.
    pub targets: Vec<Target>,
    /// A sentence for clients, shown by `GET /workflows`.
    pub description: Option<String>,
}

/// A parameter exactly as written in a template file, before any coherence check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ParamFile {
    #[serde(rename = "type")]
    kind: ParamType,
    #[serde(default)]
    required: bool,
    default: Option<Value>,
    min: Option<Number>,
    max: Option<Number>,
    multiple_of: Option<Number>,
    #[serde(rename = "enum")]
    enum_values: Option<Vec<Value>>,
    targets: Vec<String>,
    description: Option<String>,
}

/// How one parameter ended up for one request.
pub(super) enum Resolution {
    /// This value goes into the graph and the report.
    Value(Value),
    /// This image is to be uploaded; its uploaded name goes into the graph.
    Image(DecodedImage),
    /// An optional image that was not sent: the graph keeps its own value.
    Absent,
}

impl ParamSpec {
    /// Checks a parameter declaration for coherence: constraints that fit its type, bounds in
    /// order, a default that the parameter itself would accept, a well-formed target list.
    /// The error is a reason for a person; the caller adds the file and parameter name.
    /// Whether the targets exist in the graph is the template's check, not this one.
    pub(super) fn from_file(file: ParamFile) -> Result<ParamSpec, String> {
        let kind = file.kind;
        let targets = parse_targets(&file.targets)?;
        if !kind.is_numeric() {
            for (field, present) in [
                ("min", file.min.is_some()),
                ("max", file.max.is_some()),
                ("multiple_of", file.multiple_of.is_some()),
            ] {
                if present {
                    return Err(format!(
                        "{field} applies only to integer and number parameters"
                    ));
                }
            }
        }
        let mut spec = ParamSpec {
            kind,
            required: file.required,
            default: None,
            min: file.min,
            max: file.max,
            multiple_of: file.multiple_of,
            enum_values: None,
            targets,
            description: file.description,
        };
        spec.check_bounds()?;
        spec.enum_values = spec.checked_enum(file.enum_values)?;
        spec.default = spec.checked_default(file.default)?;
        if spec.default.is_none() && !spec.required && kind != ParamType::Image {
            return Err(
                "an optional parameter needs a default, so clients know the value used".to_owned(),
            );
        }
        Ok(spec)
    }

    fn check_bounds(&self) -> Result<(), String> {
        if self.kind == ParamType::Integer {
            for (field, bound) in [
                ("min", &self.min),
                ("max", &self.max),
                ("multiple_of", &self.multiple_of),
            ] {
                if let Some(n) = bound.as_ref().filter(|n| n.as_i128().is_none()) {
                    return Err(format!(
                        "{field} of an integer parameter must be an integer (got {n})"
                    ));
                }
            }
        }
        if let (Some(min), Some(max)) = (&self.min, &self.max)
            && compare(min, max) == Some(Ordering::Greater)
        {
            return Err(format!("min {min} is greater than max {max}"));
        }
        if let Some(step) = &self.multiple_of
            && step.as_f64().is_none_or(|x| x <= 0.0)
        {
            return Err(format!("multiple_of must be positive (got {step})"));
        }
        Ok(())
    }

    fn checked_enum(&self, values: Option<Vec<Value>>) -> Result<Option<Vec<Value>>, String> {
        let Some(values) = values else {
            return Ok(None);
        };
        if !matches!(
            self.kind,
            ParamType::String | ParamType::Integer | ParamType::Number
        ) {
            return Err(format!("enum does not apply to {} parameters", self.kind));
        }
        if values.is_empty() {
            return Err("enum must list at least one value".to_owned());
        }
        for value in &values {
            self.check_scalar(value)
                .map_err(|reason| format!("enum value {value} {reason}"))?;
        }
        Ok(Some(values))
    }

    fn checked_default(&self, default: Option<Value>) -> Result<Option<ParamDefault>, String> {
        let Some(default) = default else {
            return Ok(None);
        };
        if self.required {
            return Err(
                "a required parameter cannot have a default (it would never be used)".to_owned(),
            );
        }
        if self.kind == ParamType::Image {
            return Err("an image parameter cannot have a default".to_owned());
        }
        if self.kind == ParamType::Integer && default == "random" {
            if self.enum_values.is_some() || self.multiple_of.is_some() {
                return Err(
                    "a random default cannot be combined with enum or multiple_of".to_owned(),
                );
            }
            let (low, high) = self.random_range();
            if low > high {
                return Err(format!(
                    "a random default draws from [{low}, {high}], which is empty (min defaults to 0)"
                ));
            }
            return Ok(Some(ParamDefault::Random));
        }
        let value = self
            .check_scalar(&default)
            .map_err(|reason| format!("default {default} {reason}"))?;
        Ok(Some(ParamDefault::Value(value)))
    }

    /// Decides what one request's value (or its absence) means for this parameter.
    pub(super) fn resolve(&self, given: Option<&Value>) -> Result<Resolution, String> {
        match (given, self.kind) {
            (Some(value), ParamType::Image) => input_image::decode(value).map(Resolution::Image),
            (Some(value), _) => self.check_scalar(value).map(Resolution::Value),
            (None, _) if self.required => Err("required parameter is missing".to_owned()),
            (None, _) => Ok(match &self.default {
                Some(ParamDefault::Value(value)) => Resolution::Value(value.clone()),
                Some(ParamDefault::Random) => Resolution::Value(self.draw_random()),
                None => Resolution::Absent,
            }),
        }
    }

    /// Checks a non-image value against type, range, step and enum, and returns it as it goes
    /// into the graph (numbers as floats, everything else unchanged).
    /// The error reads as the end of a sentence whose subject is the parameter.
    fn check_scalar(&self, value: &Value) -> Result<Value, String> {
        let checked = match self.kind {
            ParamType::String if value.is_string() => value.clone(),
            ParamType::Boolean if value.is_boolean() => value.clone(),
            ParamType::Integer if value.as_number().and_then(Number::as_i128).is_some() => {
                value.clone()
            }
            ParamType::Number if value.is_number() => {
                // ComfyUI's FLOAT inputs take any number; writing 7 as 7.0 keeps the graph and the
                // report identical to what a float widget would produce.
                value.as_f64().map_or_else(|| value.clone(), Value::from)
            }
            _ => {
                return Err(format!(
                    "must be {} (got {})",
                    self.kind.noun(),
                    describe(value)
                ));
            }
        };
        if let Some(n) = checked.as_number() {
            self.check_range(n)?;
        }
        self.check_enum(&checked)?;
        Ok(checked)
    }

    fn check_range(&self, n: &Number) -> Result<(), String> {
        if let Some(min) = &self.min
            && compare(n, min) == Some(Ordering::Less)
        {
            return Err(format!("must be at least {min} (got {n})"));
        }
        if let Some(max) = &self.max
            && compare(n, max) == Some(Ordering::Greater)
        {
            return Err(format!("must be at most {max} (got {n})"));
        }
        if let Some(step) = &self.multiple_of
            && !is_multiple(n, step)
        {
            return Err(format!("must be a multiple of {step} (got {n})"));
        }
        Ok(())
    }

    fn check_enum(&self, value: &Value) -> Result<(), String> {
        let Some(allowed) = &self.enum_values else {
            return Ok(());
        };
        let same = |candidate: &Value| match (value.as_number(), candidate.as_number()) {
            (Some(a), Some(b)) => compare(a, b) == Some(Ordering::Equal),
            _ => candidate == value,
        };
        if allowed.iter().any(same) {
            return Ok(());
        }
        let listed: Vec<String> = allowed.iter().map(show_plain).collect();
        Err(format!(
            "must be one of: {} (got {})",
            listed.join(", "),
            describe(value)
        ))
    }

    /// The inclusive range a random default draws from.
    fn random_range(&self) -> (i128, i128) {
        let low = self.min.as_ref().and_then(Number::as_i128).unwrap_or(0);
        let high = self
            .max
            .as_ref()
            .and_then(Number::as_i128)
            .unwrap_or(i128::from(u64::MAX));
        (low, high)
    }

    /// A fresh value in the random range. The modulo's bias is below 2^-64 relative for
    /// realistic ranges, irrelevant for seeds.
    fn draw_random(&self) -> Value {
        let (low, high) = self.random_range();
        let random = u128::from(crate::ids::random_u64());
        let offset = match u128::try_from(high - low) {
            Ok(width) => random % (width + 1),
            Err(_) => 0, // an empty range, rejected at load time; stay at `low`
        };
        let value = low + i128::try_from(offset).expect("offset < 2^64 fits in i128");
        Value::Number(
            Number::from_i128(value).expect("a value between two JSON integers is a JSON integer"),
        )
    }

    /// The schema entry `GET /workflows` shows; targets are left out (clients need not know
    /// node ids).
    pub fn schema(&self) -> Value {
        let mut out = Map::new();
        out.insert("type".into(), self.kind.as_str().into());
        out.insert("required".into(), self.required.into());
        match &self.default {
            Some(ParamDefault::Value(value)) => _ = out.insert("default".into(), value.clone()),
            Some(ParamDefault::Random) => _ = out.insert("default".into(), "random".into()),
            None => {}
        }
        let numbers = [
            ("min", &self.min),
            ("max", &self.max),
            ("multiple_of", &self.multiple_of),
        ];
        for (key, number) in numbers {
            if let Some(n) = number {
                out.insert(key.into(), Value::Number(n.clone()));
            }
        }
        if let Some(values) = &self.enum_values {
            out.insert("enum".into(), Value::Array(values.clone()));
        }
        if let Some(description) = &self.description {
            out.insert("description".into(), description.clone().into());
        }
        Value::Object(out)
    }
}

fn parse_targets(texts: &[String]) -> Result<Vec<Target>, String> {
    if texts.is_empty() {
        return Err("targets must name at least one \"node.input\"".to_owned());
    }
    texts
        .iter()
        .map(|text| {
            Target::parse(text)
                .ok_or_else(|| format!("target {text:?} is not of the form \"node.input\""))
        })
        .collect()
}

/// Orders two JSON numbers: exactly when both are integers, as floats otherwise.
fn compare(a: &Number, b: &Number) -> Option<Ordering> {
    match (a.as_i128(), b.as_i128()) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// Whether `n` is a whole multiple of the positive `step`: exactly for integers, within a
/// relative tolerance for floats (0.3 is a multiple of 0.1 to a person, not to IEEE 754).
fn is_multiple(n: &Number, step: &Number) -> bool {
    if let (Some(x), Some(m)) = (n.as_i128(), step.as_i128()) {
        return m != 0 && x % m == 0;
    }
    match (n.as_f64(), step.as_f64()) {
        (Some(x), Some(m)) if m > 0.0 => {
            let quotient = x / m;
            (quotient - quotient.round()).abs() <= 1e-9 * quotient.abs().max(1.0)
        }
        _ => false,
    }
}

/// A client value as it should appear in "(got ...)": short values verbatim, long strings and
/// containers by kind, so a megabyte of base64 never lands in an error message.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::String(s) if s.chars().count() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a long string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        other => other.to_string(),
    }
}

/// An enum member for "must be one of: ..." lists: strings without quotes.
fn show_plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every problem found in one request's parameters, by field name, each a message for a person
/// ("must be at most 150 (got 500)"). Collected in full so a client can fix everything at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamErrors(pub BTreeMap<String, String>);

impl ParamErrors {
    /// Records a problem with `field`, keeping the first message if one is already there.
    pub fn insert(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.entry(field.into()).or_insert_with(|| message.into());
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `details` object of an `invalid_params` error: `{"fields": {"steps": "..."}}`.
    pub fn to_details(&self) -> Value {
        let fields: Map<String, Value> = self
            .0
            .iter()
            .map(|(field, message)| (field.clone(), Value::String(message.clone())))
            .collect();
        serde_json::json!({ "fields": fields })
    }

    /// `Ok(())` when empty, else `Err(self)`; ends a "collect everything" pass.
    pub(super) fn into_result(self) -> Result<(), ParamErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for ParamErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid parameters: ")?;
        for (i, (field, message)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{field}: {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParamErrors {}
