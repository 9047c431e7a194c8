//! What each simulated node does with its inputs: cheap stand-ins that keep the facts a client
//! can see (sizes, batch counts, determinism from seed and prompt, solid colours, inversion).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::graph::{Node, as_link};
use super::media;
use super::render::{self, Frames, Picture};
use super::state::FileData;
use super::validate::{to_float, to_int, to_text};

/// One output value of a node (ComfyUI's MODEL, CLIP, LATENT, IMAGE, ... objects).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeValue {
    Model {
        ckpt: String,
    },
    Clip {
        ckpt: String,
    },
    Vae {
        ckpt: String,
    },
    Conditioning {
        text: String,
    },
    Latent(Frames),
    Image(Frames),
    Mask {
        width: u32,
        height: u32,
    },
    /// Frames at a frame rate (ComfyUI's VIDEO).
    Video {
        frames: Frames,
        fps: f64,
    },
    /// An audio latent: its length, and a hash of what the sampler made of it.
    AudioLatent {
        seconds: f64,
        hash: u64,
    },
    /// Decoded audio (ComfyUI's AUDIO).
    Audio {
        seconds: f64,
        hash: u64,
    },
}

/// The outputs of an executed node, shared with the cache.
pub(crate) type Outputs = Arc<Vec<NodeValue>>;

/// What executing a node produced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Computed {
    /// Plain outputs, one per slot.
    Values(Vec<NodeValue>),
    /// An output node's images, to be written as PNG files of this `kind` ("output" or "temp").
    Save {
        kind: &'static str,
        prefix: String,
        frames: Frames,
    },
    /// An output node's video or audio file, ready to be stored.
    Media(MediaSave),
}

/// One media file a save node writes, and how its UI output names it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MediaSave {
    /// The UI output key: `images` (with `animated`), `gifs` or `audio`.
    pub ui_key: &'static str,
    /// `output` or `temp`.
    pub folder: &'static str,
    /// `filename_prefix`, maybe with subfolders.
    pub prefix: String,
    /// After the counter: `_` for ComfyUI's own savers (`x_00001_.mp4`), none for
    /// VideoHelperSuite (`x_00001.mp4`).
    pub counter_suffix: &'static str,
    pub extension: &'static str,
    /// Adds `"animated": [value]` next to `images`, as SaveVideo, SaveWEBM and the animation
    /// savers report.
    pub animated: Option<bool>,
    /// VideoHelperSuite's extra entry fields: `format` and `frame_rate`, plus the first frame
    /// for the workflow PNG it saves next to the video.
    pub vhs: Option<VhsExtras>,
    pub data: MediaData,
}

/// A media file's bytes, or what the executor still has to write with the prompt's metadata.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MediaData {
    /// A file without metadata (GIF, WAV).
    Ready(FileData),
    /// A container that carries the metadata in its tags (FLAC, MP3, Opus, MP4, WebM).
    Tagged(media::Recipe),
    /// SaveAnimatedPNG's frames, to become an APNG with the metadata in `comf` chunks.
    AnimatedPng { frames: Frames, fps: f64 },
    /// SaveAnimatedWEBP's frames, to become a WebP (still if only one distinct frame is left)
    /// with the metadata in `EXIF`.
    AnimatedWebp { frames: Frames, fps: f64 },
}

impl MediaData {
    /// The file as ComfyUI writes it, with `tags` (`(key, JSON text)`: the prompt, then each
    /// `extra_pnginfo` entry) where its saver puts them; an encoder's complaint otherwise.
    pub(crate) fn write(self, tags: &[(String, String)]) -> Result<FileData, String> {
        let rendered = |frames: &Frames| -> Vec<Vec<u8>> {
            frames
                .pictures
                .iter()
                .map(|p| p.render(frames.width, frames.height))
                .collect()
        };
        Ok(match self {
            MediaData::Ready(data) => data,
            MediaData::Tagged(recipe) => recipe.build(tags),
            MediaData::AnimatedPng { frames, fps } => FileData::Bytes(
                render::encode_apng(frames.width, frames.height, &rendered(&frames), fps, tags)
                    .map_err(|e| format!("cannot write APNG: {e}"))?,
            ),
            MediaData::AnimatedWebp { frames, fps } => FileData::Bytes(
                render::encode_webp(frames.width, frames.height, &rendered(&frames), fps, tags)
                    .map_err(|e| format!("cannot write WebP: {e}"))?,
            ),
        })
    }
}

/// What VideoHelperSuite adds to its `gifs` entries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VhsExtras {
    pub format: String,
    pub frame_rate: f64,
    /// The first frame, saved as `{prefix}_{counter}.png` with the workflow in it.
    pub first_frame: Frames,
}

/// A node failure as ComfyUI reports it: a Python exception type and message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeFailure {
    pub exception_type: String,
    pub message: String,
}

impl NodeFailure {
    fn new(exception_type: &str, message: impl Into<String>) -> NodeFailure {
        NodeFailure {
            exception_type: exception_type.into(),
            message: message.into(),
        }
    }
}

/// Reads a node's inputs: widget values from the graph, links from upstream outputs.
pub(crate) struct Inputs<'a> {
    pub node: &'a Node,
    pub upstream: &'a HashMap<String, Outputs>,
}

impl Inputs<'_> {
    fn raw(&self, name: &str) -> Result<&Value, NodeFailure> {
        self.node
            .inputs
            .get(name)
            .ok_or_else(|| NodeFailure::new("KeyError", format!("'{name}'")))
    }

    fn link(&self, name: &str) -> Result<&NodeValue, NodeFailure> {
        let raw = self.raw(name)?;
        let (id, slot) = as_link(raw)
            .ok_or_else(|| NodeFailure::new("TypeError", format!("{name} is not a link")))?;
        self.upstream
            .get(id)
            .and_then(|outs| outs.get(slot))
            .ok_or_else(|| {
                NodeFailure::new("RuntimeError", format!("node {id} has no output {slot}"))
            })
    }

    fn int(&self, name: &str) -> Result<i128, NodeFailure> {
        to_int(self.raw(name)?).map_err(|m| NodeFailure::new("ValueError", m))
    }

    fn size(&self, name: &str) -> Result<u32, NodeFailure> {
        let v = self.int(name)?;
        u32::try_from(v)
            .map_err(|_| NodeFailure::new("ValueError", format!("{name} {v} is out of range")))
    }

    fn float(&self, name: &str) -> Result<f64, NodeFailure> {
        to_float(self.raw(name)?).map_err(|m| NodeFailure::new("ValueError", m))
    }

    /// An optional integer input, `default` when left out.
    fn optional_int(&self, name: &str, default: i128) -> Result<i128, NodeFailure> {
        match self.node.inputs.get(name) {
            None => Ok(default),
            Some(_) => self.int(name),
        }
    }

    /// The simulator's `megabytes` input: the total file size asked for, if any.
    fn padded_size(&self) -> Result<Option<u64>, NodeFailure> {
        let mb = self.optional_int("megabytes", 0)?;
        Ok((mb > 0).then(|| mb.clamp(0, 4000) as u64 * 1024 * 1024))
    }

    /// Python's `bool()` of a widget value.
    fn boolean(&self, name: &str) -> Result<bool, NodeFailure> {
        Ok(match self.raw(name)? {
            Value::Bool(b) => *b,
            Value::Null => false,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        })
    }

    fn audio(&self, name: &str) -> Result<(f64, u64), NodeFailure> {
        match self.link(name)? {
            NodeValue::Audio { seconds, hash } => Ok((*seconds, *hash)),
            other => Err(mismatch(name, other)),
        }
    }

    fn text(&self, name: &str) -> Result<String, NodeFailure> {
        to_text(self.raw(name)?).map_err(|m| NodeFailure::new("TypeError", m))
    }

    fn frames(&self, name: &str) -> Result<Frames, NodeFailure> {
        match self.link(name)? {
            NodeValue::Image(f) | NodeValue::Latent(f) => Ok(f.clone()),
            other => Err(mismatch(name, other)),
        }
    }

    fn conditioning(&self, name: &str) -> Result<String, NodeFailure> {
        match self.link(name)? {
            NodeValue::Conditioning { text } => Ok(text.clone()),
            other => Err(mismatch(name, other)),
        }
    }
}

fn mismatch(name: &str, got: &NodeValue) -> NodeFailure {
    NodeFailure::new(
        "TypeError",
        format!("input {name} received an unexpected value {got:?}"),
    )
}

/// Executes `inputs.node`; `load_input` returns the bytes of an uploaded input file.
pub(crate) fn compute(
    inputs: &Inputs<'_>,
    load_input: &dyn Fn(&str) -> Option<Arc<FileData>>,
) -> Result<Computed, NodeFailure> {
    let values = match inputs.node.class.name {
        "CheckpointLoaderSimple" => {
            let ckpt = inputs.text("ckpt_name")?;
            vec![
                NodeValue::Model { ckpt: ckpt.clone() },
                NodeValue::Clip { ckpt: ckpt.clone() },
                NodeValue::Vae { ckpt },
            ]
        }
        "CLIPTextEncode" => vec![NodeValue::Conditioning {
            text: inputs.text("text")?,
        }],
        "EmptyLatentImage" => {
            // Latents are an eighth of the image size, so sizes round down to a multiple of 8.
            let w = (inputs.size("width")? / 8 * 8).max(8);
            let h = (inputs.size("height")? / 8 * 8).max(8);
            let batch = inputs.size("batch_size")? as usize;
            vec![NodeValue::Latent(Frames {
                width: w,
                height: h,
                pictures: vec![Picture::Blank; batch],
            })]
        }
        "KSampler" => match inputs.link("latent_image")? {
            NodeValue::AudioLatent { seconds, .. } => {
                let seconds = *seconds;
                let hash = sampled_hash(inputs, 0)?;
                vec![NodeValue::AudioLatent { seconds, hash }]
            }
            _ => vec![NodeValue::Latent(sample(inputs)?)],
        },
        "EmptyLatentAudio" => vec![NodeValue::AudioLatent {
            seconds: inputs.float("seconds")?,
            hash: 0,
        }],
        "VAEDecodeAudio" => match inputs.link("samples")? {
            NodeValue::AudioLatent { seconds, hash } => vec![NodeValue::Audio {
                seconds: *seconds,
                hash: *hash,
            }],
            other => return Err(mismatch("samples", other)),
        },
        // Passes its image through; its steps, previews and failure are the executor's.
        "SlowSteps" => vec![NodeValue::Image(inputs.frames("image")?)],
        "SineAudio" => {
            let seconds = inputs.float("seconds")?;
            let frequency = inputs.float("frequency")?;
            let hash = render::stable_hash(&[&seconds.to_le_bytes(), &frequency.to_le_bytes()]);
            vec![NodeValue::Audio { seconds, hash }]
        }
        "CreateVideo" => vec![NodeValue::Video {
            frames: inputs.frames("images")?,
            fps: inputs.float("fps")?,
        }],
        "SaveVideo" | "SaveWEBM" | "VHS_VideoCombine" => return save_video(inputs),
        "SaveAnimatedWEBP" => {
            let frames = inputs.frames("images")?;
            // ComfyUI reports `animated` from the number of images, even when libwebp merged
            // identical frames into a still picture.
            let animated = frames.pictures.len() != 1;
            return Ok(Computed::Media(MediaSave {
                ui_key: "images",
                folder: "output",
                prefix: inputs.text("filename_prefix")?,
                counter_suffix: "_",
                extension: "webp",
                animated: Some(animated),
                vhs: None,
                data: MediaData::AnimatedWebp {
                    frames,
                    fps: inputs.float("fps")?,
                },
            }));
        }
        "SaveAnimatedPNG" => {
            return Ok(Computed::Media(MediaSave {
                ui_key: "images",
                folder: "output",
                prefix: inputs.text("filename_prefix")?,
                counter_suffix: "_",
                extension: "png",
                animated: Some(true),
                vhs: None,
                data: MediaData::AnimatedPng {
                    frames: inputs.frames("images")?,
                    fps: inputs.float("fps")?,
                },
            }));
        }
        "SaveAudio" | "SaveAudioMP3" | "SaveAudioOpus" | "SaveAudioWAV" => {
            return save_audio(inputs);
        }
        "VAEDecode" => vec![NodeValue::Image(inputs.frames("samples")?)],
        "VAEEncode" => {
            let mut frames = inputs.frames("pixels")?;
            frames.width = (frames.width / 8 * 8).max(8);
            frames.height = (frames.height / 8 * 8).max(8);
            vec![NodeValue::Latent(frames)]
        }
        "LoadImage" => load_image(&inputs.text("image")?, load_input)?,
        "EmptyImage" => {
            let c = inputs.int("color")?;
            let rgb = [(c >> 16) as u8, (c >> 8) as u8, c as u8];
            vec![NodeValue::Image(Frames {
                width: inputs.size("width")?,
                height: inputs.size("height")?,
                pictures: vec![Picture::Solid { rgb }; inputs.size("batch_size")? as usize],
            })]
        }
        "ImageInvert" => {
            let mut frames = inputs.frames("image")?;
            frames.pictures = frames
                .pictures
                .into_iter()
                .map(|p| Picture::Inverted(Box::new(p)))
                .collect();
            vec![NodeValue::Image(frames)]
        }
        "SaveImage" => {
            return Ok(Computed::Save {
                kind: "output",
                prefix: inputs.text("filename_prefix")?,
                frames: inputs.frames("images")?,
            });
        }
        "PreviewImage" => {
            return Ok(Computed::Save {
                kind: "temp",
                prefix: format!("ComfyUI_temp_{}", random_letters(5)),
                frames: inputs.frames("images")?,
            });
        }
        other => {
            return Err(NodeFailure::new(
                "NotImplementedError",
                format!("the simulator cannot execute {other}"),
            ));
        }
    };
    Ok(Computed::Values(values))
}

/// The video savers: SaveVideo (an MP4 from a VIDEO), SaveWEBM (images at a frame rate),
/// VideoHelperSuite's VHS_VideoCombine (GIF, WebM or MP4 by `format`).
fn save_video(inputs: &Inputs<'_>) -> Result<Computed, NodeFailure> {
    let total = inputs.padded_size()?;
    let prefix = inputs.text("filename_prefix")?;
    let core = |extension, data| MediaSave {
        ui_key: "images",
        folder: "output",
        prefix: prefix.clone(),
        counter_suffix: "_",
        extension,
        animated: Some(true),
        vhs: None,
        data,
    };
    let save = match inputs.node.class.name {
        "SaveVideo" => {
            let (frames, fps) = match inputs.link("video")? {
                NodeValue::Video { frames, fps } => (frames, *fps),
                other => return Err(mismatch("video", other)),
            };
            let data = MediaData::Tagged(media::Recipe::Mp4 {
                width: frames.width,
                height: frames.height,
                frame_count: frames.pictures.len(),
                fps,
                hevc: false,
                total,
            });
            core("mp4", data)
        }
        "SaveWEBM" => {
            let frames = inputs.frames("images")?;
            let data = MediaData::Tagged(media::Recipe::Webm {
                width: frames.width,
                height: frames.height,
                frame_count: frames.pictures.len(),
                total,
            });
            core("webm", data)
        }
        _ => {
            let frames = inputs.frames("images")?;
            let frame_rate = inputs.float("frame_rate")?;
            let format = inputs.text("format")?;
            let (w, h, n) = (frames.width, frames.height, frames.pictures.len());
            let mp4 = |hevc| {
                MediaData::Tagged(media::Recipe::Mp4 {
                    width: w,
                    height: h,
                    frame_count: n,
                    fps: frame_rate,
                    hevc,
                    total,
                })
            };
            let (extension, data) = match format.as_str() {
                "image/gif" => (
                    "gif",
                    MediaData::Ready(media::gif(&frames, frame_rate, total)),
                ),
                "video/webm" => (
                    "webm",
                    MediaData::Tagged(media::Recipe::Webm {
                        width: w,
                        height: h,
                        frame_count: n,
                        total,
                    }),
                ),
                "video/h265-mp4" => ("mp4", mp4(true)),
                _ => ("mp4", mp4(false)),
            };
            let first_frame = Frames {
                pictures: frames.pictures.iter().take(1).cloned().collect(),
                ..frames
            };
            MediaSave {
                ui_key: "gifs",
                folder: if inputs.boolean("save_output")? {
                    "output"
                } else {
                    "temp"
                },
                prefix,
                counter_suffix: "",
                extension,
                animated: None,
                vhs: Some(VhsExtras {
                    format,
                    frame_rate,
                    first_frame,
                }),
                data,
            }
        }
    };
    Ok(Computed::Media(save))
}

/// The audio savers: FLAC, MP3, Opus, and the simulator's WAV.
fn save_audio(inputs: &Inputs<'_>) -> Result<Computed, NodeFailure> {
    let (seconds, hash) = inputs.audio("audio")?;
    let total = inputs.padded_size()?;
    let (extension, data) = match inputs.node.class.name {
        "SaveAudioMP3" => (
            "mp3",
            MediaData::Tagged(media::Recipe::Mp3 { seconds, total }),
        ),
        "SaveAudioOpus" => (
            "opus",
            MediaData::Tagged(media::Recipe::Opus {
                seconds,
                hash,
                total,
            }),
        ),
        "SaveAudioWAV" => ("wav", MediaData::Ready(media::wav(seconds, hash, total))),
        _ => (
            "flac",
            MediaData::Tagged(media::Recipe::Flac {
                seconds,
                hash,
                total,
            }),
        ),
    };
    Ok(Computed::Media(MediaSave {
        ui_key: "audio",
        folder: "output",
        prefix: inputs.text("filename_prefix")?,
        counter_suffix: "_",
        extension,
        animated: None,
        vhs: None,
        data,
    }))
}

/// What a sampler makes of batch item `index`: a hash of seed, prompts and index.
fn sampled_hash(inputs: &Inputs<'_>, index: u64) -> Result<u64, NodeFailure> {
    let seed = u64::try_from(inputs.int("seed")?)
        .map_err(|_| NodeFailure::new("ValueError", "seed must be between 0 and 2^64-1"))?;
    let positive = inputs.conditioning("positive")?;
    let negative = inputs.conditioning("negative")?;
    Ok(render::stable_hash(&[
        &seed.to_le_bytes(),
        positive.as_bytes(),
        negative.as_bytes(),
        &index.to_le_bytes(),
    ]))
}

/// KSampler: each batch item becomes a pattern coloured by seed, prompts and batch index;
/// with `denoise` below 1 an input image shows through (img2img).
fn sample(inputs: &Inputs<'_>) -> Result<Frames, NodeFailure> {
    let denoise = inputs.float("denoise")?;
    let mut frames = inputs.frames("latent_image")?;
    let mut pictures = Vec::with_capacity(frames.pictures.len());
    for (i, base) in frames.pictures.into_iter().enumerate() {
        let top = Picture::Pattern {
            hash: sampled_hash(inputs, i as u64)?,
        };
        pictures.push(if base == Picture::Blank || denoise >= 1.0 {
            top
        } else {
            Picture::Blend {
                base: Box::new(base),
                top: Box::new(top),
                amount: denoise,
            }
        });
    }
    frames.pictures = pictures;
    Ok(frames)
}

/// LoadImage: the uploaded file's pixels when it is a PNG, else a 512x512 pattern from its bytes.
fn load_image(
    name: &str,
    load_input: &dyn Fn(&str) -> Option<Arc<FileData>>,
) -> Result<Vec<NodeValue>, NodeFailure> {
    let bytes = load_input(name).ok_or_else(|| {
        NodeFailure::new(
            "FileNotFoundError",
            format!("[Errno 2] No such file or directory: 'input/{name}'"),
        )
    })?;
    let bytes = bytes.head();
    let frames = match render::decode_png(bytes) {
        Some(raster) => Frames {
            width: raster.width,
            height: raster.height,
            pictures: vec![Picture::Pixels(Arc::new(raster))],
        },
        None => Frames {
            width: 512,
            height: 512,
            pictures: vec![Picture::Pattern {
                hash: render::stable_hash(&[bytes]),
            }],
        },
    };
    let mask = NodeValue::Mask {
        width: frames.width,
        height: frames.height,
    };
    Ok(vec![NodeValue::Image(frames), mask])
}

/// Lowercase letters for temp file names, as ComfyUI's PreviewImage uses.
fn random_letters(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    super::ids::fill_random(&mut bytes);
    bytes.iter().map(|b| char::from(b'a' + b % 26)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::graph::Graph;
    use super::*;
    use serde_json::json;

    fn run(graph: &Value, id: &str, upstream: &HashMap<String, Outputs>) -> Computed {
        let graph = Graph::parse(graph).expect("readable");
        let inputs = Inputs {
            node: &graph.nodes[id],
            upstream,
        };
        compute(&inputs, &|_| None).expect("computes")
    }

    #[test]
    fn empty_latent_rounds_sizes_down_to_multiples_of_eight() {
        let g = json!({"5": {"class_type": "EmptyLatentImage",
            "inputs": {"width": 100, "height": 64, "batch_size": 2}}});
        let Computed::Values(v) = run(&g, "5", &HashMap::new()) else {
            panic!("latent expected")
        };
        let NodeValue::Latent(f) = &v[0] else {
            panic!("latent expected")
        };
        assert_eq!((f.width, f.height, f.pictures.len()), (96, 64, 2));
    }

    #[test]
    fn empty_image_colour_is_split_into_rgb() {
        let g = json!({"1": {"class_type": "EmptyImage",
            "inputs": {"width": 2, "height": 2, "batch_size": 1, "color": 0x102030}}});
        let Computed::Values(v) = run(&g, "1", &HashMap::new()) else {
            panic!("image expected")
        };
        let NodeValue::Image(f) = &v[0] else {
            panic!("image expected")
        };
        assert_eq!(
            f.pictures[0],
            Picture::Solid {
                rgb: [0x10, 0x20, 0x30]
            }
        );
    }

    #[test]
    fn missing_upload_fails_like_comfyui() {
        let g =
            Graph::parse(&json!({"10": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}))
                .expect("readable");
        let empty = HashMap::new();
        let inputs = Inputs {
            node: &g.nodes["10"],
            upstream: &empty,
        };
        let err = compute(&inputs, &|_| None).expect_err("no such file");
        assert_eq!(err.exception_type, "FileNotFoundError");
    }
}
