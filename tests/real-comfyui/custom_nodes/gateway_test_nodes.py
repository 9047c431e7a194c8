"""Two nodes that need no model files, for checking comfyui-gateway against a real ComfyUI.

Copy this file into ComfyUI's `custom_nodes/` folder and restart ComfyUI.

- SlowSteps(image, steps, step_ms, seed, fail_at) hands its image on unchanged after `steps`
  steps of `step_ms` milliseconds each. Every step goes through ComfyUI's own progress bar with
  a small JPEG preview, so the server sends `progress`, `progress_state` and preview frames the
  way a sampler does; interrupts are honoured between steps, and step `fail_at` (when not 0)
  raises a RuntimeError.
- SineAudio(seconds, frequency) makes a sine tone as ComfyUI's AUDIO value, for the audio savers.
"""
import math
import time

import torch
from PIL import Image

import comfy.model_management
import comfy.utils


class SlowSteps:
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        def whole(default, low, high):
            return ("INT", {"default": default, "min": low, "max": high})

        return {
            "required": {
                "image": ("IMAGE",),
                "steps": whole(8, 1, 10000),
                "step_ms": whole(250, 0, 60000),
                "seed": whole(0, 0, 2**64 - 1),
                "fail_at": whole(0, 0, 10000),
            }
        }

    def run(self, image, steps, step_ms, seed, fail_at):
        bar = comfy.utils.ProgressBar(steps)
        for step in range(1, steps + 1):
            time.sleep(step_ms / 1000)
            comfy.model_management.throw_exception_if_processing_interrupted()
            if step == fail_at:
                raise RuntimeError(f"SlowSteps failed at step {step} as asked")
            shade = (seed + step * 29) % 256
            preview = Image.new("RGB", (64, 64), (shade, 96, 255 - shade))
            # (format, image, largest side): what a sampler's preview callback passes.
            bar.update_absolute(step, steps, ("JPEG", preview, 512))
        return (image,)


class SineAudio:
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("AUDIO",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seconds": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 60.0}),
                "frequency": ("FLOAT", {"default": 440.0, "min": 20.0, "max": 20000.0}),
            }
        }

    def run(self, seconds, frequency):
        sample_rate = 44100
        count = int(seconds * sample_rate)
        times = torch.arange(count, dtype=torch.float32) / sample_rate
        tone = 0.3 * torch.sin(2 * math.pi * frequency * times)
        # AUDIO: a [batch, channels, samples] waveform and its rate.
        return ({"waveform": tone.view(1, 1, count), "sample_rate": sample_rate},)


NODE_CLASS_MAPPINGS = {"SlowSteps": SlowSteps, "SineAudio": SineAudio}
