//! Node definitions as the conversion needs them: for each class, its widgets in the order the
//! frontend creates them, read from ComfyUI's `/object_info`.
//!
//! The frontend builds one widget per input of a widget type (`INT`, `FLOAT`, `STRING`,
//! `BOOLEAN`, a combo list or `COMBO`), in the order of `input_order` (required, then optional),
//! except inputs marked `forceInput`. Some widgets bring companions that take a slot of
//! `widgets_values` but are never sent to ComfyUI:
//! - the "control after generate" combo after an `INT` input with `control_after_generate`, or
//!   named `seed` or `noise_seed` when the option is absent (the frontend's legacy rule);
//! - the same control plus a filter text after a combo with `control_after_generate`;
//! - after the required inputs: the audio player (`audioUI`) of the audio loaders and savers,
//!   and the upload button of a required combo with `image_upload`, `video_upload`,
//!   `animated_image_upload` or (on an input named `audio`) `audio_upload`, in that order, as
//!   the frontend's extensions add them to the required inputs. (`file_upload` adds nothing.)

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// One widget of a node class.
#[derive(Debug, Clone, PartialEq)]
pub struct WidgetDef {
    /// The input name, and the key of the value in the API format.
    pub name: String,
    /// What kind of value it holds, for checking saved values.
    pub kind: WidgetKind,
    /// Its value when the workflow saved none.
    pub default: Value,
    /// Slots of `widgets_values` after this one that belong to frontend-only companions.
    pub companions: usize,
    /// A multiline text whose `{a|b}` choices and comments the frontend resolves on queueing.
    pub dynamic_prompt: bool,
    /// A widget the frontend adds that is not an input (`upload`, `audioUI`): it takes a slot
    /// of `widgets_values` and is never sent.
    pub frontend_only: bool,
}

/// Classes the frontend gives an audio player widget (`audioUI`) after their required inputs.
const AUDIO_UI_CLASSES: [&str; 6] = [
    "LoadAudio",
    "SaveAudio",
    "PreviewAudio",
    "SaveAudioMP3",
    "SaveAudioOpus",
    "SaveAudioAdvanced",
];

/// The value kinds of widgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WidgetKind {
    /// An integer.
    Int,
    /// A number.
    Float,
    /// A string.
    String,
    /// `true` or `false`.
    Boolean,
    /// One of a list of values.
    Combo,
    /// A widget type of the frontend's own (`AUDIO_RECORD`, `WEBCAM`, `LOAD_3D`...): sent as
    /// saved.
    Other,
}

/// Input types the frontend draws as widgets of its own, besides the primitive ones.
const FRONTEND_WIDGET_TYPES: [&str; 14] = [
    "MARKDOWN",
    "WEBCAM",
    "AUDIO_RECORD",
    "LOAD_3D",
    "LOAD_3D_ANIMATION",
    "IMAGECOMPARE",
    "IMAGEUPLOAD",
    "COLOR",
    "SELECTBUTTON",
    "TEXTAREA",
    "CHART",
    "GALLERIA",
    "MULTISELECT",
    "TREESELECT",
];

impl WidgetKind {
    /// Whether a saved value can belong to a widget of this kind. Numbers are accepted for
    /// strings and combos (ComfyUI coerces them), `null` for anything (an unset value).
    pub fn fits(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (WidgetKind::Int | WidgetKind::Float, v) => v.is_number(),
            (WidgetKind::Boolean, v) => v.is_boolean(),
            (WidgetKind::String, v) => v.is_string() || v.is_number(),
            (WidgetKind::Combo, v) => !v.is_object(),
            (WidgetKind::Other, _) => true,
        }
    }

    /// The kind's name as ComfyUI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            WidgetKind::Int => "INT",
            WidgetKind::Float => "FLOAT",
            WidgetKind::String => "STRING",
            WidgetKind::Boolean => "BOOLEAN",
            WidgetKind::Combo => "COMBO",
            WidgetKind::Other => "frontend widget",
        }
    }
}

/// One node class as the conversion sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassDef {
    /// The title a node gets when the workflow gives it none.
    pub display_name: String,
    /// The widgets, in the frontend's order.
    pub widgets: Vec<WidgetDef>,
    /// Every input name the class declares (required and optional).
    pub inputs: BTreeSet<String>,
    /// The inputs the class requires: a graph without one of them is refused by ComfyUI.
    pub required: BTreeSet<String>,
}

impl ClassDef {
    /// Reads one class of `/object_info`. `None` when it is not a class definition.
    pub fn from_object_info(class: &str, info: &Value) -> Option<ClassDef> {
        let info = info.as_object()?;
        let input = info.get("input").and_then(Value::as_object);
        let mut widgets = Vec::new();
        let mut inputs = BTreeSet::new();
        let mut required = BTreeSet::new();
        for group in ["required", "optional"] {
            let Some(specs) = input.and_then(|i| i.get(group)).and_then(Value::as_object) else {
                continue;
            };
            for name in ordered_names(info, group, specs) {
                let Some(spec) = specs.get(&name) else {
                    continue;
                };
                inputs.insert(name.clone());
                if group == "required" {
                    required.insert(name.clone());
                }
                if let Some(widget) = widget_def(&name, spec) {
                    widgets.push(widget);
                }
            }
            if group == "required" {
                if AUDIO_UI_CLASSES.contains(&class) {
                    widgets.push(frontend_only("audioUI"));
                }
                let media_upload = specs.values().any(|spec| {
                    is_combo(spec)
                        && ["image_upload", "video_upload", "animated_image_upload"]
                            .iter()
                            .any(|key| option_is_true(spec, key))
                });
                let audio_upload = specs
                    .get("audio")
                    .is_some_and(|spec| option_is_true(spec, "audio_upload"));
                if media_upload || audio_upload {
                    widgets.push(frontend_only("upload"));
                }
            }
        }
        let display_name = info
            .get("display_name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
            .unwrap_or(class)
            .to_owned();
        Some(ClassDef {
            display_name,
            widgets,
            inputs,
            required,
        })
    }
}

/// The node definitions of one ComfyUI: class name → definition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeDefs {
    classes: BTreeMap<String, ClassDef>,
}

impl NodeDefs {
    /// Reads a whole `GET /object_info` answer. Entries that are not class definitions are
    /// skipped.
    pub fn from_object_info(object_info: &Value) -> NodeDefs {
        let classes = object_info
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(class, info)| {
                Some((class.clone(), ClassDef::from_object_info(class, info)?))
            })
            .collect();
        NodeDefs { classes }
    }

    /// Adds (or replaces) one class.
    pub fn insert(&mut self, class: &str, def: ClassDef) {
        self.classes.insert(class.to_owned(), def);
    }

    /// The class called `class`, if ComfyUI has it.
    pub fn get(&self, class: &str) -> Option<&ClassDef> {
        self.classes.get(class)
    }

    /// How many classes there are.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

/// The input names of one group in the frontend's order: `input_order` when ComfyUI gives it
/// (since 2024), else the object's own order.
fn ordered_names(
    info: &Map<String, Value>,
    group: &str,
    specs: &Map<String, Value>,
) -> Vec<String> {
    let listed = info
        .get("input_order")
        .and_then(|order| order.get(group))
        .and_then(Value::as_array);
    match listed {
        Some(names) => {
            let mut out: Vec<String> = names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            // Inputs the order forgot still exist; keep them, after the listed ones.
            let forgotten: Vec<String> =
                specs.keys().filter(|k| !out.contains(k)).cloned().collect();
            out.extend(forgotten);
            out
        }
        None => specs.keys().cloned().collect(),
    }
}

fn frontend_only(name: &str) -> WidgetDef {
    WidgetDef {
        name: name.to_owned(),
        kind: WidgetKind::Other,
        default: Value::Null,
        companions: 0,
        dynamic_prompt: false,
        frontend_only: true,
    }
}

fn option_is_true(spec: &Value, key: &str) -> bool {
    spec.get(1)
        .and_then(|o| o.get(key))
        .is_some_and(|v| v.as_bool() == Some(true))
}

fn is_combo(spec: &Value) -> bool {
    match spec.get(0) {
        Some(Value::Array(_)) => true,
        Some(Value::String(t)) => t == "COMBO",
        _ => false,
    }
}

/// The widget an input spec `[type, options]` makes, if any.
fn widget_def(name: &str, spec: &Value) -> Option<WidgetDef> {
    let options = spec.get(1).and_then(Value::as_object);
    let flag = |key: &str| option_is_true(spec, key);
    if flag("forceInput") {
        return None;
    }
    let (kind, first_choice) = match spec.get(0)? {
        Value::Array(values) => (WidgetKind::Combo, values.first().cloned()),
        Value::String(t) => match t.as_str() {
            "INT" => (WidgetKind::Int, None),
            "FLOAT" => (WidgetKind::Float, None),
            "STRING" => (WidgetKind::String, None),
            "BOOLEAN" => (WidgetKind::Boolean, None),
            t if FRONTEND_WIDGET_TYPES.contains(&t) => (WidgetKind::Other, None),
            "COMBO" => (
                WidgetKind::Combo,
                options
                    .and_then(|o| o.get("options"))
                    .and_then(Value::as_array)
                    .and_then(|v| v.first().cloned()),
            ),
            _ => return None,
        },
        _ => return None,
    };
    // An explicit `false` wins over the legacy rule for `seed` and `noise_seed`.
    let control = match options.and_then(|o| o.get("control_after_generate")) {
        Some(v) => v.as_bool() == Some(true) || v.is_string(),
        None => kind == WidgetKind::Int && (name == "seed" || name == "noise_seed"),
    };
    let companions = match kind {
        WidgetKind::Int if control => 1,
        WidgetKind::Combo if control => 2,
        _ => 0,
    };
    let default = options
        .and_then(|o| o.get("default"))
        .cloned()
        .or(first_choice)
        .unwrap_or(match kind {
            WidgetKind::Int | WidgetKind::Float => Value::from(0),
            WidgetKind::String => Value::from(""),
            WidgetKind::Boolean => Value::from(false),
            WidgetKind::Combo | WidgetKind::Other => Value::Null,
        });
    Some(WidgetDef {
        name: name.to_owned(),
        kind,
        default,
        companions,
        dynamic_prompt: kind == WidgetKind::String && flag("dynamicPrompts"),
        frontend_only: false,
    })
}
