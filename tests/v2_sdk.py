"""Comfy-Org's Python SDK (comfy-sdk, from PyPI) against the gateway's Comfy API v2.

Run by tests/v2_sdk.rs with COMFY_BASE_URL and COMFY_API_KEY pointing at a gateway in front of
the simulator, and FULL_BASE_URL at a second gateway whose queue is full. Prints one
"OK <check>" line per check that passed; any failure raises (non-zero exit).
"""

import asyncio
import io
import os
import sys
import tempfile
import uuid

from comfy_sdk import (
    AsyncComfy,
    BlobNotFound,
    Comfy,
    HashMismatch,
    InvalidWorkflow,
    JobFailed,
    NotFound,
    OutputReady,
    Progress,
    QueueFull,
    StatusChange,
    WorkflowFormatUi,
)
from comfy_sdk.exceptions import translating

PNG = b"\x89PNG\r\n\x1a\n"


def invert(color=0):
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sdk", "images": ["2", 0]}},
    }


def sampler(steps):
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sdk", "images": ["8", 0]}},
    }


def ok(name):
    print(f"OK {name}", flush=True)


def expect(error_type, action):
    try:
        action()
    except error_type as error:
        return error
    raise AssertionError(f"expected {error_type.__name__}")


def sync_checks(tiny_png):
    with Comfy(api_key=os.environ.get("COMFY_API_KEY"), timeout=30) as client:
        # client.run end to end, and the output's bytes through the asset content route.
        result = client.run(client.workflows.from_json(invert()))
        assert result.status == "succeeded", result
        outputs = result.get_outputs("3")
        assert len(outputs) == 1, result.outputs
        data = outputs[0].to_bytes()
        assert data.startswith(PNG) and len(data) == outputs[0].size_bytes
        ok("run")

        # An input asset from a file, referenced in the workflow.
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "photo.png")
            with open(path, "wb") as file:
                file.write(tiny_png)
            wf = client.workflows.from_json({
                "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                "3": {"class_type": "SaveImage",
                      "inputs": {"filename_prefix": "sdk-asset", "images": ["2", 0]}},
            })
            wf.set_input("1", "image", client.assets.from_file(path))
            result = client.run(wf)
            assert result.status == "succeeded"
            assert result.get_outputs("3")[0].to_bytes().startswith(PNG)
            ran = result.get_workflow()
            assert ran.format == "api"
            assert ran.graph["1"]["inputs"]["image"].startswith("gateway/"), ran.graph
        ok("asset_from_file")

        # The asset library: dedup by hash, rehydration, ranges, typed errors, deletion.
        noise = os.urandom(4096)
        first = client.assets.from_bytes(noise, filename="noise.bin")
        first_id = first.commit()
        assert first.created_new is True, first.created_new
        # A second handle over the same bytes finds them (HEAD by-hash, then from-hash).
        again = client.assets.from_bytes(noise, filename="noise.bin")
        assert again.commit() == first_id and again.created_new is False
        assert client.assets.get(first_id).hash == first.hash
        link = first.get_download_url()
        assert link.url.endswith(f"/api/v2/assets/{first_id}/content"), link.url
        with client._low.get_asset_content(first_id, range=(10, 19)) as resp:
            assert resp.status_code == 206 and resp.read() == noise[10:20]
        outputs[0].to_file(os.path.join(tempfile.gettempdir(), f"sdk-{first_id}.png"), range=(0, 7))
        with open(os.path.join(tempfile.gettempdir(), f"sdk-{first_id}.png"), "rb") as part:
            assert part.read() == PNG
        os.remove(os.path.join(tempfile.gettempdir(), f"sdk-{first_id}.png"))
        unknown = "blake3:" + "0" * 64

        def mismatched():
            with translating():
                client._low.post_assets(io.BytesIO(b"other bytes"), "application/octet-stream",
                                        "x.bin", expected_hash=unknown)

        def unknown_blob():
            with translating():
                client._low.asset_from_hash(unknown)

        expect(HashMismatch, mismatched)
        expect(BlobNotFound, unknown_blob)
        client.assets.delete(first_id)
        expect(NotFound, lambda: client.assets.get(first_id))
        ok("assets")

        # Events: status changes, progress, outputs, the terminal status last.
        job = client.submit(client.workflows.from_json(sampler(200)), metadata={"suite": "sdk"})
        seen = list(job.events())
        statuses = [e.status for e in seen if isinstance(e, StatusChange)]
        assert statuses[0] in ("queued", "running"), statuses
        assert statuses[-1] == "succeeded", statuses
        assert any(isinstance(e, Progress) and e.steps == 200 for e in seen), seen
        assert any(isinstance(e, OutputReady) for e in seen), seen
        ok("events")

        # Labels are stored and filterable.
        listed = list(client.list_jobs(metadata={"suite": "sdk"}))
        assert [s.id for s in listed] == [job.id], listed
        assert listed[0].metadata == {"suite": "sdk"}
        ok("list_jobs")

        # Cancel a running job.
        long = client.submit(client.workflows.from_json(sampler(400)))
        for event in long.events():
            if isinstance(event, Progress) and (event.step or 0) > 0:
                break
        long.cancel()
        assert long.status in ("canceling", "canceled"), long.status
        long.wait(timeout=30)
        assert long.status == "canceled", long.status
        ok("cancel")

        # Idempotent resubmission: the same key and body is the same job.
        key = str(uuid.uuid4())
        first = client.submit(client.workflows.from_json(invert(7)), idempotency_key=key)
        again = client.submit(client.workflows.from_json(invert(7)), idempotency_key=key)
        assert first.id == again.id, (first.id, again.id)
        first.wait(timeout=30)
        ok("idempotency")

        # Typed errors.
        error = expect(InvalidWorkflow, lambda: client.submit(client.workflows.from_json(
            {"1": {"class_type": "NoSuchNode", "inputs": {}}})))
        assert "1" in (error.details or {}).get("node_errors", {}), error.details
        expect(WorkflowFormatUi, lambda: client.submit(client.workflows.from_json(
            {"nodes": [], "links": [], "version": 0.4})))
        expect(NotFound, lambda: client.jobs.get(str(uuid.uuid4())))
        too_big = invert()
        too_big["1"]["inputs"]["width"] = 99_999_999
        failed = expect(JobFailed, lambda: client.run(client.workflows.from_json(too_big)))
        assert failed.error is not None and failed.error.code == "invalid_workflow", failed.error
        ok("typed_errors")

    # A client is pointed at a deployment by COMFY_BASE_URL when it is built.
    os.environ["COMFY_BASE_URL"], main_url = os.environ["FULL_BASE_URL"], os.environ["COMFY_BASE_URL"]
    try:
        full = Comfy(api_key=os.environ.get("COMFY_API_KEY"), timeout=30)
    finally:
        os.environ["COMFY_BASE_URL"] = main_url
    with full:
        # The SDK's submit keeps retrying a full queue for a minute; its protocol call shows the
        # typed error at once.
        def submit_once():
            with translating():
                full._low.post_jobs(invert())
        error = expect(QueueFull, submit_once)
        assert error.retry_after and error.retry_after > 0, error.retry_after
        ok("queue_full")


async def async_checks():
    async with AsyncComfy(api_key=os.environ.get("COMFY_API_KEY"), timeout=30) as client:
        job = await client.submit(client.workflows.from_json(sampler(10)))
        statuses = [e.status async for e in job.events() if isinstance(e, StatusChange)]
        assert statuses[-1] == "succeeded", statuses
        result = await client.run(client.workflows.from_json(invert(3)))
        assert result.status == "succeeded"
        data = await result.outputs[0].to_bytes()
        assert data.startswith(PNG)
    ok("async")


def main():
    tiny_png = bytes.fromhex(os.environ["TINY_PNG_HEX"])
    sync_checks(tiny_png)
    asyncio.run(async_checks())
    ok("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
