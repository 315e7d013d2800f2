"""End to end: the nodes and the example workflows in a real ComfyUI server (headless, CPU, 127.0.0.1 only).

Skipped unless COMFYUI_PATH names a ComfyUI checkout. Run it with the Python that runs that ComfyUI (it needs
ComfyUI's own aiohttp and av, plus pytest), from the repository root:

    COMFYUI_PATH=~/ComfyUI ~/ComfyUI/venv/bin/python -m pytest tests/comfyui_e2e.py -v

Environment:
    COMFYUI_PATH            the ComfyUI checkout (its main.py is started with --cpu).
    MMDIFFUSION_E2E_MODEL   the loader's model: a choice it lists, or the path of a pipeline folder (then linked
                            into a temporary models/mm_diffusion folder given through extra_model_paths.yaml).
                            Default: the model shipped in pretrained/.
    MMDIFFUSION_E2E_STEPS   steps of every sampling node and super-resolution stage (default 2: a smoke test).
    CHROMIUM                a Chromium/Chrome binary for the frontend test (default: chromium on PATH; the test
                            is skipped without one). It may reach 127.0.0.1 only: every other host is unresolvable
                            and routed to a dead local proxy.

The server gets everything it writes (output, input, temp, user folders; an in-memory database) in a temporary
folder, loads this pack alone through a link in a temporary custom_nodes folder (extra_model_paths.yaml), and is
stopped at the end. Every example workflow's API graph (example_workflows/api/) is posted to /prompt with the
model and steps above; each must save an mp4 with the model's frame count and an audio track. A last run is
interrupted (/interrupt) during its denoising steps and must end as interrupted. The UI-format workflows are
loaded into ComfyUI's own frontend in headless Chromium, whose graphToPrompt must give the API graphs.
"""

import asyncio
import base64
import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import wave
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "example_workflows"
PACK_FOLDER_NAME = "mmdiffusion"
DEFAULT_MODEL = "<default model>"
SERVER_START_TIMEOUT = 300
RUN_TIMEOUT = 900
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Frontend-only nodes, absent from /object_info and from API graphs.
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote"}

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
if not COMFYUI_PATH or not (Path(COMFYUI_PATH) / "main.py").is_file():
    pytest.skip(
        "set COMFYUI_PATH to a ComfyUI checkout (a folder with main.py) to run the ComfyUI end-to-end test",
        allow_module_level=True,
    )
aiohttp = pytest.importorskip("aiohttp", reason="run this test with ComfyUI's Python (it needs aiohttp)")
av = pytest.importorskip("av", reason="run this test with ComfyUI's Python (it needs PyAV)")


# ------------------------------------------------------------------------------------------------------------
# The model under test


def model_under_test(models_dir: Path):
    """(loader choice, pipeline folder) for MMDIFFUSION_E2E_MODEL."""
    choice = os.environ.get("MMDIFFUSION_E2E_MODEL", DEFAULT_MODEL)
    if choice == DEFAULT_MODEL:
        folder = REPO_ROOT / "pretrained"
        if not (folder / "model_index.json").is_file():
            pytest.skip(
                f"the default model is not in {folder} yet; set MMDIFFUSION_E2E_MODEL to a pipeline folder "
                "(e.g. one made with `mmdiffusion convert`)"
            )
        return choice, folder
    given = Path(choice).expanduser()
    if given.is_dir():
        if not (given / "model_index.json").is_file():
            pytest.fail(f"MMDIFFUSION_E2E_MODEL={choice} is a folder without model_index.json")
        os.symlink(given.resolve(), models_dir / given.name)
        return given.name, given
    return choice, None  # a name the loader lists from the ComfyUI checkout's own model folders


def expected_video(folder, super_resolution: bool):
    """(frames, height, width) of one sample of the pipeline folder, or None when it is not available here."""
    if folder is None:
        return None
    unet = json.loads((folder / "unet" / "config.json").read_text())
    size = unet["sample_size"]
    if super_resolution and (folder / "sr_unet" / "config.json").is_file():
        size = json.loads((folder / "sr_unet" / "config.json").read_text())["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return unet["num_frames"], height, width


# ------------------------------------------------------------------------------------------------------------
# Inputs for the conditional workflows


def write_stereo_wav(path: Path, seconds=1.0, sample_rate=44100):
    """A stereo chirp at 44.1 kHz: the nodes mix and resample it."""
    frames = bytearray()
    for n in range(int(seconds * sample_rate)):
        t = n / sample_rate
        left = math.sin(2 * math.pi * (220 + 440 * t) * t)
        right = 0.5 * math.sin(2 * math.pi * 330 * t)
        for value in (left, right):
            frames += int(value * 20000).to_bytes(2, "little", signed=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(bytes(frames))


def write_test_video(path: Path, num_frames=24, fps=30, width=34, height=26):
    """A square moving over a gradient at 30 fps, of another size than the model's: the nodes resample it."""
    import numpy as np

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None]
            left = index % (width - 8)
            image[8:16, left : left + 8] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# ------------------------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ComfyServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "comfyui.log"
        self.process = None

    def start(self, extra_model_paths: Path):
        for name in ("output", "input", "temp", "user"):
            (self.root / name).mkdir(exist_ok=True)
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--output-directory", str(self.root / "output"), "--input-directory", str(self.root / "input"),
            "--temp-directory", str(self.root / "temp"), "--user-directory", str(self.root / "user"),
            "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(extra_model_paths),
            "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_FOLDER_NAME,
            "--disable-api-nodes", "--disable-auto-launch",
        ]
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=COMFYUI_PATH, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                return self.get("/system_stats")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        pytest.fail(f"ComfyUI did not answer within {SERVER_START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.log.close()

    def log_tail(self, characters=6000) -> str:
        """The end of the server's log (all of it for None)."""
        text = self.log_path.read_text(errors="replace")
        return text if characters is None else text[-characters:]

    def get(self, route: str):
        with urllib.request.urlopen(self.url + route, timeout=30) as response:
            return json.loads(response.read())

    def post(self, route: str, body=None):
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + route, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            pytest.fail(f"POST {route} answered {error.code}: {error.read().decode(errors='replace')}")
        return json.loads(text) if text.strip() else None

    def queue(self, graph: dict, client_id: str) -> str:
        return self.post("/prompt", {"prompt": graph, "client_id": client_id})["prompt_id"]

    def wait_for_history(self, prompt_id: str, timeout=RUN_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(1)
        pytest.fail(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log_tail()}")


# ------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfyui_e2e")
    custom_nodes, models = root / "custom_nodes", root / "models"
    custom_nodes.mkdir()
    models.mkdir()
    os.symlink(REPO_ROOT, custom_nodes / PACK_FOLDER_NAME)
    model, folder = model_under_test(models)
    extra_model_paths = root / "extra_model_paths.yaml"
    extra_model_paths.write_text(
        f"mmdiffusion_e2e:\n    custom_nodes: {custom_nodes}\n    mm_diffusion: {models}\n", encoding="utf-8"
    )
    server = ComfyServer(root)
    stats = server.start(extra_model_paths)
    print(f"\nComfyUI {stats['system']['comfyui_version']} (torch {stats['system']['pytorch_version']}) "
          f"at {server.url}; model {model!r}")
    write_stereo_wav(root / "input" / "mmdiffusion_example.wav")
    write_test_video(root / "input" / "mmdiffusion_example.mp4")
    yield server, model, folder
    server.stop()


@pytest.fixture(scope="module")
def object_info(comfy):
    server, _, _ = comfy
    return server.get("/object_info")


def pack_node_mappings():
    """NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS, read from this checkout under a private module name."""
    spec = importlib.util.spec_from_file_location(
        "mmdiffusion_e2e_pack", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    return package.NODE_CLASS_MAPPINGS, package.NODE_DISPLAY_NAME_MAPPINGS


def api_graph(name: str, model: str, steps: int) -> dict:
    graph = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "MMDiffusionLoader":
            inputs["model"] = model
        for key in ("steps", "sr_steps"):
            if key in inputs and node["class_type"].startswith("MMDiffusion"):
                inputs[key] = steps
    return graph


def saved_video(server: ComfyServer, entry: dict) -> Path:
    saved = [item for output in entry["outputs"].values() for item in output.get("images", [])]
    assert len(saved) == 1, entry["outputs"]
    item = saved[0]
    return server.root / item["type"] / item["subfolder"] / item["filename"]


def read_video(path: Path):
    """(frames, height, width, audio streams) of an mp4, decoding every frame."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        return frames, video.codec_context.height, video.codec_context.width, len(container.streams.audio)


def ui_to_api_inputs(workflow: dict, object_info: dict) -> dict:
    """The API graph a UI-format workflow stands for, as the frontend derives it: each node's widget values in
    the order of its inputs (skipping the control_after_generate value after a seed), links by target input."""
    links = {link[0]: link for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_NODES:
            continue
        info = object_info[node["type"]]["input"]
        order = object_info[node["type"]]["input_order"]
        specs = {**info.get("required", {}), **info.get("optional", {})}
        linked = {}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                assert link[3] == node["id"], f"link {link} does not end at node {node['id']}"
                linked[entry["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name in order.get("required", []) + order.get("optional", []):
            kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            is_widget = (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")
            if is_widget:
                value = values.pop(0)
                if options.get("control_after_generate"):
                    values.pop(0)
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                inputs[name] = linked[name]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph


# ------------------------------------------------------------------------------------------------------------
# Tests


def test_object_info_lists_every_node(object_info):
    mappings, display_names = pack_node_mappings()
    for node_id in mappings:
        assert node_id in object_info, f"{node_id} is missing from /object_info"
        assert object_info[node_id]["display_name"] == display_names[node_id]
        assert object_info[node_id]["category"].startswith("MM-Diffusion")
    assert DEFAULT_MODEL in object_info["MMDiffusionLoader"]["input"]["required"]["model"][0]


def test_loader_lists_the_model(comfy, object_info):
    _, model, _ = comfy
    assert model in object_info["MMDiffusionLoader"]["input"]["required"]["model"][0]


def test_example_workflows_are_served_as_templates(comfy):
    server, _, _ = comfy
    templates = server.get("/workflow_templates")
    expected = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
    assert sorted(templates.get(PACK_FOLDER_NAME, [])) == expected


@pytest.mark.parametrize("name", sorted(path.stem for path in (WORKFLOWS / "api").glob("*.json")))
def test_ui_workflow_matches_its_api_graph(name, object_info):
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    graph = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    expected = {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in graph.items()}
    assert ui_to_api_inputs(workflow, object_info) == expected


@pytest.mark.parametrize(
    "name, sample_node, super_resolution",
    [
        ("mmdiffusion_generate", "2", True),
        ("mmdiffusion_audio_to_video", "3", True),
        ("mmdiffusion_video_to_audio", "4", False),
    ],
)
def test_example_workflow_saves_an_mp4_with_sound(comfy, name, sample_node, super_resolution):
    server, model, folder = comfy
    steps = int(os.environ.get("MMDIFFUSION_E2E_STEPS", "2"))
    graph = api_graph(name, model, steps)
    batch = graph[sample_node]["inputs"].get("batch_size", 1)
    began = time.monotonic()
    prompt_id = server.queue(graph, client_id=str(uuid.uuid4()))
    entry = server.wait_for_history(prompt_id)
    assert entry["status"]["status_str"] == "success", f"{entry['status']}\n{server.log_tail()}"
    path = saved_video(server, entry)
    frames, height, width, audio_streams = read_video(path)
    print(f"\n{name}: {path.name}: {frames} frames {width}x{height}, {audio_streams} audio stream(s), "
          f"{time.monotonic() - began:.1f} s")
    assert audio_streams == 1
    assert height % 2 == 0 and width % 2 == 0
    expected = expected_video(folder, super_resolution)
    if expected is not None:
        num_frames, expected_height, expected_width = expected
        assert (frames, height, width) == (num_frames * batch, expected_height, expected_width)


def test_comfyui_can_free_the_model_and_a_later_run_loads_it_again(comfy):
    server, model, _ = comfy
    graph = api_graph("mmdiffusion_video_to_audio", model, steps=1)
    server.wait_for_history(server.queue(graph, str(uuid.uuid4())))
    loads = server.log_tail(None).count("Requested to load MMDiffusionModels")
    server.post("/free", {"unload_models": True, "free_memory": True})
    time.sleep(2)  # the idle prompt worker wakes up and unloads the models
    graph["4"]["inputs"]["seed"] = 1  # a new seed: the sampling node runs again, on the loader's cached output
    entry = server.wait_for_history(server.queue(graph, str(uuid.uuid4())))
    assert entry["status"]["status_str"] == "success", f"{entry['status']}\n{server.log_tail()}"
    assert server.log_tail(None).count("Requested to load MMDiffusionModels") == loads + 1


async def _interrupt_during_sampling(server: ComfyServer, graph: dict, node: str):
    client_id = str(uuid.uuid4())
    events = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as connection:
            prompt_id = server.queue(graph, client_id)
            interrupted_at = None
            deadline = time.monotonic() + RUN_TIMEOUT
            while time.monotonic() < deadline:
                message = await connection.receive(timeout=RUN_TIMEOUT)
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                data = event.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                events.append(event["type"])
                if event["type"] == "progress" and data.get("node") == node:
                    if interrupted_at is None and data["value"] >= 2:
                        interrupted_at = (data["value"], data["max"])
                        server.post("/interrupt")
                    elif interrupted_at is not None:
                        events.append(("progress after interrupt", data["value"]))
                if event["type"] in ("execution_interrupted", "execution_success", "execution_error"):
                    return prompt_id, interrupted_at, events, data
    pytest.fail(f"no end of prompt {prompt_id} within {RUN_TIMEOUT} s; events {events}")


def test_interrupt_stops_sampling(comfy):
    server, model, _ = comfy
    steps = 200
    graph = api_graph("mmdiffusion_generate", model, steps)
    graph["2"]["inputs"].update(super_resolution=False, scheduler="ddim")
    graph["4"]["inputs"]["filename_prefix"] = "video/interrupted"
    began = time.monotonic()
    prompt_id, interrupted_at, events, end = asyncio.run(_interrupt_during_sampling(server, graph, node="2"))
    assert interrupted_at is not None, f"no progress reported by the sampling node: {events}"
    assert events[-1] == "execution_interrupted", events
    assert end["node_id"] == "2", end  # stopped inside the sampling node, not between nodes
    late = [event[1] for event in events if isinstance(event, tuple)]
    # Stop is checked after every step: at most the step that was running when /interrupt arrived finishes.
    assert all(value <= interrupted_at[0] + 1 for value in late), (interrupted_at, late)
    entry = server.wait_for_history(prompt_id, timeout=60)
    assert entry["status"]["status_str"] == "error"
    assert any(message[0] == "execution_interrupted" for message in entry["status"]["messages"])
    assert not list((server.root / "output" / "video").glob("interrupted*"))
    print(f"\ninterrupted at step {interrupted_at[0]} of {interrupted_at[1]}; run ended "
          f"{time.monotonic() - began:.1f} s after queueing; steps after the interrupt: {late}")


# ------------------------------------------------------------------------------------------------------------
# The frontend: what users load


def declared_inputs(graph: dict, object_info: dict) -> dict:
    """class_type and the inputs the nodes declare (the frontend also sends its own widgets, e.g. audioUI)."""
    result = {}
    for key, node in graph.items():
        spec = object_info[node["class_type"]]["input"]
        names = set(spec.get("required", {})) | set(spec.get("optional", {}))
        result[key] = {
            "class_type": node["class_type"],
            "inputs": {name: value for name, value in node["inputs"].items() if name in names},
        }
    return result


async def _frontend_prompts(server: ComfyServer, chromium: str, profile: Path, screenshots: Path) -> dict:
    """{workflow name: the API graph ComfyUI's frontend makes of it}, from headless Chromium over CDP."""
    debugging_port = free_port()
    browser = subprocess.Popen(
        [
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
            "--remote-debugging-address=127.0.0.1", f"--remote-debugging-port={debugging_port}",
            f"--user-data-dir={profile}", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        targets = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{debugging_port}/json", timeout=5) as response:
                    targets = json.loads(response.read())
                break
            except (urllib.error.URLError, ConnectionError):
                await asyncio.sleep(0.5)
        assert targets, "Chromium's DevTools endpoint did not answer"
        page = next(target for target in targets if target["type"] == "page")
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as devtools:
                counter = 0

                async def call(method, **params):
                    nonlocal counter
                    counter += 1
                    await devtools.send_json({"id": counter, "method": method, "params": params})
                    while True:
                        message = json.loads((await devtools.receive(timeout=120)).data)
                        if message.get("id") == counter:
                            assert "error" not in message, message
                            return message["result"]

                async def evaluate(expression):
                    result = await call(
                        "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
                    )
                    assert "exceptionDetails" not in result, result["exceptionDetails"]
                    return result["result"].get("value")

                await call(
                    "Emulation.setDeviceMetricsOverride", width=1700, height=1000, deviceScaleFactor=1, mobile=False
                )
                await call("Page.navigate", url=server.url)
                for _ in range(180):
                    if await evaluate("!!(window.app && window.app.graph && window.app.graphToPrompt)"):
                        break
                    await asyncio.sleep(1)
                else:
                    pytest.fail("ComfyUI's frontend did not start in Chromium")
                prompts = {}
                for path in sorted(WORKFLOWS.glob("*.json")):
                    prompts[path.stem] = json.loads(await evaluate(
                        f"(async () => {{ await window.app.loadGraphData({path.read_text()}); "
                        "return JSON.stringify((await window.app.graphToPrompt()).output); })()"
                    ))
                    await evaluate("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())")
                    await asyncio.sleep(1)  # the dialog's closing animation
                    shot = await call("Page.captureScreenshot", format="png")
                    (screenshots / f"{path.stem}.png").write_bytes(base64.b64decode(shot["data"]))
                return prompts
    finally:
        browser.terminate()
        browser.wait(timeout=30)


def test_comfyui_frontend_turns_each_ui_workflow_into_its_api_graph(comfy, object_info, tmp_path):
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("google-chrome")
    if not chromium:
        pytest.skip("no Chromium to load the UI-format workflows into ComfyUI's frontend (set CHROMIUM)")
    server, _, _ = comfy
    prompts = asyncio.run(_frontend_prompts(server, chromium, tmp_path / "profile", tmp_path))
    for path in sorted((WORKFLOWS / "api").glob("*.json")):
        expected = json.loads(path.read_text())
        assert declared_inputs(prompts[path.stem], object_info) == declared_inputs(expected, object_info), path.stem
    print(f"\nthe frontend turned {sorted(prompts)} into their API graphs; screenshots in {tmp_path}")
