//! The node classes the simulator knows, described once and used three ways: to answer
//! `GET /object_info`, to validate a queued graph, and to decide how a node executes.
//!
//! Names, input names, types and limits are the ones real ComfyUI uses for these core nodes, so
//! a graph that passes here passes there (given the same model files).

use serde_json::{Value, json};

/// Checkpoint files the simulated `models/checkpoints` folder holds.
pub(crate) const CHECKPOINTS: &[&str] = &[
    "v1-5-pruned-emaonly.safetensors",
    "sd_xl_base_1.0.safetensors",
];

/// Sampler names `KSampler` accepts.
pub(crate) const SAMPLERS: &[&str] = &[
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpmpp_2m",
    "dpmpp_sde",
    "ddim",
    "uni_pc",
    "lcm",
];

/// Scheduler names `KSampler` accepts.
pub(crate) const SCHEDULERS: &[&str] = &[
    "normal",
    "karras",
    "exponential",
    "sgm_uniform",
    "simple",
    "ddim_uniform",
    "beta",
];

/// ComfyUI's `MAX_RESOLUTION`.
const MAX_RESOLUTION: i128 = 16384;

/// One node class: its inputs (all required for these classes), outputs and role.
#[derive(Debug)]
pub(crate) struct NodeClass {
    pub name: &'static str,
    pub display_name: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    pub inputs: &'static [InputDef],
    /// `(type, name)` per output slot.
    pub outputs: &'static [(&'static str, &'static str)],
    /// Output nodes are what a prompt executes towards; they produce files.
    pub output_node: bool,
}

/// One input of a node class.
#[derive(Debug)]
pub(crate) struct InputDef {
    pub name: &'static str,
    pub kind: InputKind,
    /// Listed under `optional` in `/object_info`; may be left out of a graph.
    pub optional: bool,
}

/// What an input accepts.
#[derive(Debug)]
pub(crate) enum InputKind {
    /// A widget integer; ComfyUI converts with Python's `int()`.
    Int {
        min: i128,
        max: i128,
        default: i128,
        step: i128,
    },
    /// A widget float.
    Float {
        min: f64,
        max: f64,
        default: f64,
        step: f64,
    },
    /// A widget boolean (Python's `bool()` accepts anything).
    Bool { default: bool },
    /// A widget string.
    Text {
        multiline: bool,
        default: &'static str,
    },
    /// A widget whose value must be one of a list.
    Choice(ChoiceList),
    /// A link `["node_id", slot]` to another node's output of this type.
    Link(&'static str),
}

/// Where the allowed values of a [`InputKind::Choice`] come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChoiceList {
    Checkpoints,
    Samplers,
    Schedulers,
    /// Files in the input folder: what `/upload/image` stored.
    InputImages,
    /// A fixed list, the first value being the default.
    Fixed(&'static [&'static str]),
}

impl ChoiceList {
    /// The allowed values, given the names of the uploaded input files.
    pub(crate) fn values(self, input_files: &[String]) -> Vec<String> {
        let fixed = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        match self {
            ChoiceList::Checkpoints => fixed(CHECKPOINTS),
            ChoiceList::Samplers => fixed(SAMPLERS),
            ChoiceList::Schedulers => fixed(SCHEDULERS),
            ChoiceList::InputImages => input_files.to_vec(),
            ChoiceList::Fixed(list) => fixed(list),
        }
    }
}

impl InputKind {
    /// The type name a link into this input must carry (`INT`, `MODEL`, `COMBO`, ...).
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            InputKind::Int { .. } => "INT",
            InputKind::Float { .. } => "FLOAT",
            InputKind::Bool { .. } => "BOOLEAN",
            InputKind::Text { .. } => "STRING",
            InputKind::Choice(_) => "COMBO",
            InputKind::Link(t) => t,
        }
    }
}

const fn int(name: &'static str, min: i128, max: i128, default: i128, step: i128) -> InputDef {
    InputDef {
        name,
        kind: InputKind::Int {
            min,
            max,
            default,
            step,
        },
        optional: false,
    }
}

const fn float(name: &'static str, min: f64, max: f64, default: f64, step: f64) -> InputDef {
    InputDef {
        name,
        kind: InputKind::Float {
            min,
            max,
            default,
            step,
        },
        optional: false,
    }
}

const fn link(name: &'static str, type_name: &'static str) -> InputDef {
    InputDef {
        name,
        kind: InputKind::Link(type_name),
        optional: false,
    }
}

const fn choice(name: &'static str, list: ChoiceList) -> InputDef {
    InputDef {
        name,
        kind: InputKind::Choice(list),
        optional: false,
    }
}

const fn text(name: &'static str, multiline: bool, default: &'static str) -> InputDef {
    InputDef {
        name,
        kind: InputKind::Text { multiline, default },
        optional: false,
    }
}

const fn boolean(name: &'static str, default: bool) -> InputDef {
    InputDef {
        name,
        kind: InputKind::Bool { default },
        optional: false,
    }
}

/// The simulator's own optional input on its media savers: pad the file to this many MiB (a
/// big video for a memory benchmark), served as it is written, never held whole.
const MEGABYTES: InputDef = InputDef {
    name: "megabytes",
    kind: InputKind::Int {
        min: 0,
        max: 4000,
        default: 0,
        step: 1,
    },
    optional: true,
};

/// VideoHelperSuite's `format` choices the simulator writes.
pub(crate) const VHS_FORMATS: &[&str] = &[
    "image/gif",
    "video/webm",
    "video/h264-mp4",
    "video/h265-mp4",
];

/// Every node class the simulator implements.
pub(crate) static CLASSES: &[NodeClass] = &[
    NodeClass {
        name: "CheckpointLoaderSimple",
        display_name: "Load Checkpoint",
        category: "loaders",
        description: "Loads a diffusion model checkpoint.",
        inputs: &[choice("ckpt_name", ChoiceList::Checkpoints)],
        outputs: &[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
        output_node: false,
    },
    NodeClass {
        name: "CLIPTextEncode",
        display_name: "CLIP Text Encode (Prompt)",
        category: "conditioning",
        description: "Encodes a text prompt into conditioning.",
        inputs: &[text("text", true, ""), link("clip", "CLIP")],
        outputs: &[("CONDITIONING", "CONDITIONING")],
        output_node: false,
    },
    NodeClass {
        name: "EmptyLatentImage",
        display_name: "Empty Latent Image",
        category: "latent",
        description: "Creates a batch of empty latent images to denoise.",
        inputs: &[
            int("width", 16, MAX_RESOLUTION, 512, 8),
            int("height", 16, MAX_RESOLUTION, 512, 8),
            int("batch_size", 1, 4096, 1, 1),
        ],
        outputs: &[("LATENT", "LATENT")],
        output_node: false,
    },
    NodeClass {
        name: "KSampler",
        display_name: "KSampler",
        category: "sampling",
        description: "Denoises the latent image step by step.",
        inputs: &[
            link("model", "MODEL"),
            int("seed", 0, u64::MAX as i128, 0, 1),
            int("steps", 1, 10000, 20, 1),
            float("cfg", 0.0, 100.0, 8.0, 0.1),
            choice("sampler_name", ChoiceList::Samplers),
            choice("scheduler", ChoiceList::Schedulers),
            link("positive", "CONDITIONING"),
            link("negative", "CONDITIONING"),
            link("latent_image", "LATENT"),
            float("denoise", 0.0, 1.0, 1.0, 0.01),
        ],
        outputs: &[("LATENT", "LATENT")],
        output_node: false,
    },
    NodeClass {
        name: "VAEDecode",
        display_name: "VAE Decode",
        category: "latent",
        description: "Decodes latent images back into pixel space images.",
        inputs: &[link("samples", "LATENT"), link("vae", "VAE")],
        outputs: &[("IMAGE", "IMAGE")],
        output_node: false,
    },
    NodeClass {
        name: "VAEEncode",
        display_name: "VAE Encode",
        category: "latent",
        description: "Encodes pixel space images into latent images.",
        inputs: &[link("pixels", "IMAGE"), link("vae", "VAE")],
        outputs: &[("LATENT", "LATENT")],
        output_node: false,
    },
    NodeClass {
        name: "LoadImage",
        display_name: "Load Image",
        category: "image",
        description: "Loads an uploaded image from the input folder.",
        inputs: &[choice("image", ChoiceList::InputImages)],
        outputs: &[("IMAGE", "IMAGE"), ("MASK", "MASK")],
        output_node: false,
    },
    NodeClass {
        name: "SaveImage",
        display_name: "Save Image",
        category: "image",
        description: "Saves the input images to the output directory.",
        inputs: &[
            link("images", "IMAGE"),
            text("filename_prefix", false, "ComfyUI"),
        ],
        outputs: &[],
        output_node: true,
    },
    NodeClass {
        name: "PreviewImage",
        display_name: "Preview Image",
        category: "image",
        description: "Saves the input images to the temp directory.",
        inputs: &[link("images", "IMAGE")],
        outputs: &[],
        output_node: true,
    },
    NodeClass {
        name: "EmptyImage",
        display_name: "EmptyImage",
        category: "image",
        description: "Creates a batch of images of one solid colour.",
        inputs: &[
            int("width", 1, MAX_RESOLUTION, 512, 1),
            int("height", 1, MAX_RESOLUTION, 512, 1),
            int("batch_size", 1, 4096, 1, 1),
            int("color", 0, 0xFF_FFFF, 0, 1),
        ],
        outputs: &[("IMAGE", "IMAGE")],
        output_node: false,
    },
    NodeClass {
        name: "ImageInvert",
        display_name: "Invert Image",
        category: "image",
        description: "Inverts the colours of the images.",
        inputs: &[link("image", "IMAGE")],
        outputs: &[("IMAGE", "IMAGE")],
        output_node: false,
    },
    NodeClass {
        name: "CreateVideo",
        display_name: "Create Video",
        category: "image/video",
        description: "Creates a video from images.",
        inputs: &[link("images", "IMAGE"), float("fps", 1.0, 120.0, 30.0, 1.0)],
        outputs: &[("VIDEO", "VIDEO")],
        output_node: false,
    },
    NodeClass {
        name: "SaveVideo",
        display_name: "Save Video",
        category: "image/video",
        description: "Saves the input video to the output directory (reported under images, animated).",
        inputs: &[
            link("video", "VIDEO"),
            text("filename_prefix", false, "video/ComfyUI"),
            choice("format", ChoiceList::Fixed(&["auto", "mp4"])),
            choice("codec", ChoiceList::Fixed(&["auto", "h264"])),
            MEGABYTES,
        ],
        outputs: &[],
        output_node: true,
    },
    NodeClass {
        name: "SaveWEBM",
        display_name: "SaveWEBM",
        category: "image/video",
        description: "Saves the images as a WebM video (reported under images, animated).",
        inputs: &[
            link("images", "IMAGE"),
            text("filename_prefix", false, "ComfyUI"),
            choice("codec", ChoiceList::Fixed(&["vp9", "av1"])),
            float("fps", 0.01, 1000.0, 24.0, 0.01),
            float("crf", 0.0, 63.0, 32.0, 1.0),
            MEGABYTES,
        ],
        outputs: &[],
        output_node: true,
    },
    NodeClass {
        name: "SaveAnimatedWEBP",
        display_name: "SaveAnimatedWEBP",
        category: "image/animation",
        description: "Saves the images as an animated WebP, a still one when they are all the same (reported under images, animated).",
        inputs: &[
            link("images", "IMAGE"),
            text("filename_prefix", false, "ComfyUI"),
            float("fps", 0.01, 1000.0, 6.0, 0.01),
            boolean("lossless", true),
            int("quality", 0, 100, 80, 1),
            choice(
                "method",
                ChoiceList::Fixed(&["default", "fastest", "slowest"]),
            ),
        ],
        outputs: &[],
        output_node: true,
    },
    NodeClass {
        name: "SaveAnimatedPNG",
        display_name: "SaveAnimatedPNG",
        category: "image/animation",
        description: "Saves the images as an animated PNG (reported under images, animated).",
        inputs: &[
            link("images", "IMAGE"),
            text("filename_prefix", false, "ComfyUI"),
            float("fps", 0.01, 1000.0, 6.0, 0.01),
            int("compress_level", 0, 9, 4, 1),
        ],
        outputs: &[],
        output_node: true,
    },
    NodeClass {
        name: "VHS_VideoCombine",
        display_name: "Video Combine 🎥🅥🅗🅢",
        category: "Video Helper Suite 🎥🅥🅗🅢",
        description: "Combines images into a GIF or video (VideoHelperSuite; reported under gifs).",
        inputs: &[
            link("images", "IMAGE"),
            float("frame_rate", 1.0, 1000.0, 8.0, 1.0),
            int("loop_count", 0, 100, 0, 1),
            text("filename_prefix", false, "AnimateDiff"),
            choice("format", ChoiceList::Fixed(VHS_FORMATS)),
            boolean("pingpong", false),
            boolean("save_output", true),
            MEGABYTES,
        ],
        outputs: &[("VHS_FILENAMES", "Filenames")],
        output_node: true,
    },
    // The model-free test nodes a real ComfyUI can run for the gateway's smoke suite
    // (tests/real-comfyui): a progress bar with previews, and a sound.
    NodeClass {
        name: "SlowSteps",
        display_name: "SlowSteps",
        category: "testing",
        description: "",
        inputs: &[
            link("image", "IMAGE"),
            int("steps", 1, 10_000, 8, 0),
            int("step_ms", 0, 60_000, 250, 0),
            int("seed", 0, u64::MAX as i128, 0, 0),
            int("fail_at", 0, 10_000, 0, 0),
        ],
        outputs: &[("IMAGE", "IMAGE")],
        output_node: false,
    },
    NodeClass {
        name: "SineAudio",
        display_name: "SineAudio",
        category: "testing",
        description: "",
        inputs: &[
            float("seconds", 0.1, 60.0, 1.0, 0.0),
            float("frequency", 20.0, 20_000.0, 440.0, 0.0),
        ],
        outputs: &[("AUDIO", "AUDIO")],
        output_node: false,
    },
    NodeClass {
        name: "EmptyLatentAudio",
        display_name: "Empty Latent Audio",
        category: "latent/audio",
        description: "Creates an empty audio latent of the given length.",
        inputs: &[
            float("seconds", 1.0, 1000.0, 47.6, 0.1),
            int("batch_size", 1, 4096, 1, 1),
        ],
        outputs: &[("LATENT", "LATENT")],
        output_node: false,
    },
    NodeClass {
        name: "VAEDecodeAudio",
        display_name: "VAE Decode Audio",
        category: "latent/audio",
        description: "Decodes an audio latent into audio.",
        inputs: &[link("samples", "LATENT"), link("vae", "VAE")],
        outputs: &[("AUDIO", "AUDIO")],
        output_node: false,
    },
    NodeClass {
        name: "SaveAudio",
        display_name: "Save Audio (FLAC)",
        category: "audio",
        description: "Saves the audio as FLAC (reported under audio).",
        inputs: &[
            link("audio", "AUDIO"),
            text("filename_prefix", false, "audio/ComfyUI"),
            MEGABYTES,
        ],
        outputs: &[],
        output_node: true,
    },
    NodeClass {
        name: "SaveAudioMP3",
        display_name: "Save Audio (MP3)",
        category: "audio",
        description: "Saves the audio as MP3 (reported under audio).",
        inputs: &[
            link("audio", "AUDIO"),
            text("filename_prefix", false, "audio/ComfyUI"),
            choice("quality", ChoiceList::Fixed(&["V0", "128k", "320k"])),
            MEGABYTES,
        ],
        outputs: &[],
        output_node: true,
    },
    NodeClass {
        name: "SaveAudioOpus",
        display_name: "Save Audio (Opus)",
        category: "audio",
        description: "Saves the audio as Opus in Ogg (reported under audio).",
        inputs: &[
            link("audio", "AUDIO"),
            text("filename_prefix", false, "audio/ComfyUI"),
            choice(
                "quality",
                ChoiceList::Fixed(&["128k", "64k", "96k", "192k", "320k"]),
            ),
            MEGABYTES,
        ],
        outputs: &[],
        output_node: true,
    },
    NodeClass {
        name: "SaveAudioWAV",
        display_name: "Save Audio (WAV)",
        category: "audio",
        description: "Simulator only: saves the audio as WAV, as several custom node packs do (reported under audio).",
        inputs: &[
            link("audio", "AUDIO"),
            text("filename_prefix", false, "audio/ComfyUI"),
            MEGABYTES,
        ],
        outputs: &[],
        output_node: true,
    },
];

/// The class named `name`, if the simulator has it.
pub(crate) fn find(name: &str) -> Option<&'static NodeClass> {
    CLASSES.iter().find(|c| c.name == name)
}

impl NodeClass {
    /// Whether this node reports sampler progress (it has a `steps` input).
    pub(crate) fn has_steps(&self) -> bool {
        self.inputs.iter().any(|i| i.name == "steps")
    }

    /// The Python module ComfyUI would report the class from.
    fn python_module(&self) -> &'static str {
        match self.name {
            "CreateVideo" | "SaveVideo" | "SaveWEBM" => "comfy_extras.nodes_video",
            "SaveAnimatedPNG" | "SaveAnimatedWEBP" => "comfy_extras.nodes_images",
            "EmptyLatentAudio" | "VAEDecodeAudio" | "SaveAudio" | "SaveAudioMP3"
            | "SaveAudioOpus" => "comfy_extras.nodes_audio",
            "VHS_VideoCombine" => "custom_nodes.ComfyUI-VideoHelperSuite",
            "SaveAudioWAV" => "custom_nodes.comfyui-sim",
            "SlowSteps" | "SineAudio" => "custom_nodes.gateway_test_nodes",
            _ => "nodes",
        }
    }

    /// The `/object_info` description of this class.
    pub(crate) fn object_info(&self, input_files: &[String]) -> Value {
        let mut required = serde_json::Map::new();
        let mut optional = serde_json::Map::new();
        for input in self.inputs {
            let section = if input.optional {
                &mut optional
            } else {
                &mut required
            };
            section.insert(input.name.to_string(), input.config(input_files));
        }
        let mut inputs = json!({ "required": required });
        let mut order = json!({
            "required": self.inputs.iter().filter(|i| !i.optional).map(|i| i.name).collect::<Vec<_>>()
        });
        if !optional.is_empty() {
            inputs["optional"] = Value::Object(optional);
            order["optional"] = self
                .inputs
                .iter()
                .filter(|i| i.optional)
                .map(|i| i.name)
                .collect();
        }
        if self.output_node && self.name != "PreviewImage" {
            inputs["hidden"] = json!({"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"});
            order["hidden"] = json!(["prompt", "extra_pnginfo"]);
        }
        json!({
            "input": inputs,
            "input_order": order,
            "output": self.outputs.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            "output_is_list": self.outputs.iter().map(|_| false).collect::<Vec<_>>(),
            "output_name": self.outputs.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module(),
            "category": self.category,
            "output_node": self.output_node,
            "deprecated": false,
            "experimental": false,
        })
    }
}

impl InputDef {
    /// The input's configuration as `/object_info` shows it, e.g. `["INT", {"min": 1, ...}]`.
    pub(crate) fn config(&self, input_files: &[String]) -> Value {
        match &self.kind {
            InputKind::Int {
                min,
                max,
                default,
                step,
            } => {
                let mut opts = json!({
                    "default": int_json(*default),
                    "min": int_json(*min),
                    "max": int_json(*max),
                });
                // Step 0: a plain INT as a custom node declares it, without widget hints.
                if *step != 0 {
                    opts["step"] = int_json(*step);
                    if self.name == "seed" {
                        opts["control_after_generate"] = json!(true);
                    }
                    if self.name == "color" {
                        opts["display"] = json!("color");
                    }
                }
                json!(["INT", opts])
            }
            InputKind::Float {
                min,
                max,
                default,
                step,
            } => {
                if *step == 0.0 {
                    json!(["FLOAT", {"default": default, "min": min, "max": max}])
                } else {
                    json!(["FLOAT", {"default": default, "min": min, "max": max, "step": step, "round": 0.01}])
                }
            }
            InputKind::Bool { default } => json!(["BOOLEAN", {"default": default}]),
            InputKind::Text { multiline, default } => {
                if *multiline {
                    json!(["STRING", {"multiline": true, "dynamicPrompts": true}])
                } else {
                    json!(["STRING", {"default": default}])
                }
            }
            InputKind::Choice(list) => {
                let values = list.values(input_files);
                if matches!(list, ChoiceList::InputImages) {
                    json!([values, {"image_upload": true}])
                } else {
                    json!([values])
                }
            }
            InputKind::Link(t) => json!([t]),
        }
    }
}

/// An integer limit as JSON; the limits here all fit `i64` or `u64`.
fn int_json(v: i128) -> Value {
    if let Ok(u) = u64::try_from(v) {
        json!(u)
    } else if let Ok(i) = i64::try_from(v) {
        json!(i)
    } else {
        json!(v.to_string())
    }
}

/// `/object_info`: every class, keyed by name.
pub(crate) fn all_object_info(input_files: &[String]) -> Value {
    let mut map = serde_json::Map::new();
    for class in CLASSES {
        map.insert(class.name.to_string(), class.object_info(input_files));
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ksampler_info_has_comfyui_shape_and_full_seed_range() {
        let info = find("KSampler")
            .expect("KSampler is defined")
            .object_info(&[]);
        let seed = &info["input"]["required"]["seed"];
        assert_eq!(seed[0], "INT");
        assert_eq!(seed[1]["max"].as_u64(), Some(u64::MAX));
        assert_eq!(info["output"], json!(["LATENT"]));
        assert_eq!(info["output_node"], json!(false));
        assert_eq!(
            info["input"]["required"]["sampler_name"][0][0],
            json!("euler")
        );
    }

    #[test]
    fn load_image_lists_uploaded_files() {
        let files = vec!["cat.png".to_string()];
        let info = find("LoadImage")
            .expect("LoadImage is defined")
            .object_info(&files);
        assert_eq!(info["input"]["required"]["image"][0], json!(["cat.png"]));
        assert_eq!(
            info["input"]["required"]["image"][1]["image_upload"],
            json!(true)
        );
    }

    #[test]
    fn only_the_savers_are_output_nodes() {
        let outputs: Vec<&str> = CLASSES
            .iter()
            .filter(|c| c.output_node)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            outputs,
            [
                "SaveImage",
                "PreviewImage",
                "SaveVideo",
                "SaveWEBM",
                "SaveAnimatedWEBP",
                "SaveAnimatedPNG",
                "VHS_VideoCombine",
                "SaveAudio",
                "SaveAudioMP3",
                "SaveAudioOpus",
                "SaveAudioWAV"
            ]
        );
    }
}
